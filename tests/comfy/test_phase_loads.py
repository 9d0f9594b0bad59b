"""Each phase of a node call asks ComfyUI (``load_models_gpu``) only for the weight groups it computes with:
understanding and think without an input image never ask for the gen expert or the autoencoder; denoising asks
for the gen expert alone; image decoding for the autoencoder alone (bagel_model/checkpoint/residency.py)."""
import pytest

from test_node_contract import FAST, image_batch


@pytest.fixture(scope="module")
def nodes(comfy_nodes, tiny_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    return {name: cls for name, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("BagelMoT")}


@pytest.fixture(scope="module")
def model(nodes, tiny_checkpoint):
    return nodes["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "bf16", False)[0]


@pytest.fixture
def requests(model, monkeypatch):
    """The groups of every ``load_models_gpu`` call, in order (ComfyUI's own loading still runs)."""
    import comfy.model_management as mm

    recorded = []
    group_of = {id(patcher): name for name, patcher in model.patchers.items()}
    real = mm.load_models_gpu

    def record(models, *args, **kwargs):
        recorded.append(tuple(group_of[id(m)] for m in models))
        return real(models, *args, **kwargs)
    monkeypatch.setattr(mm, "load_models_gpu", record)
    return recorded


def _groups(requests) -> set:
    return {group for request in requests for group in request}


def test_understand_asks_only_for_the_und_expert_vit_and_lm_head(nodes, model, requests):
    nodes["BagelMoTUnderstand"]().understand(model, image_batch(1), "What is this?", 4, False, 0.3, 0, False)
    assert requests and _groups(requests) <= {"und", "vit", "text_io"}, requests
    assert ("und", "vit") in requests and ("und", "text_io") in requests


def test_understand_without_image_asks_only_for_text_weights(nodes, model, requests):
    nodes["BagelMoTUnderstand"]().understand(model, None, "What is a cat?", 4, False, 0.3, 0, False)
    assert requests and _groups(requests) <= {"und", "text_io"}, requests


def test_think_without_image_asks_only_for_text_weights(nodes, model, requests):
    nodes["BagelMoTThink"]().think(model, "draw a cat", 4, False, 0.3, 0)
    assert requests and _groups(requests) <= {"und", "text_io"}, requests


def test_think_with_an_image_asks_for_gen_and_vae_only_to_encode_it(nodes, model, requests):
    # The plan of an edit is written from the official edit context, which holds the image's VAE tokens.
    nodes["BagelMoTThink"]().think(model, "make it blue", 4, False, 0.3, 0, image=image_batch(1))
    assert ("gen", "vae") in requests and _groups(requests) <= {"und", "vit", "gen", "vae", "text_io"}
    assert all(request == ("gen", "vae") for request in requests if {"gen", "vae"} & set(request))


def test_text_to_image_denoises_with_gen_and_decodes_with_vae(nodes, model, requests):
    nodes["BagelMoTTextToImage"]().generate(model, "a red cube", 64, 48, seed=3, batch_size=1,
                                            **dict(FAST, steps=2))
    assert requests[-2:] == [("gen",), ("vae",)], requests  # denoise, then decode
    assert _groups(requests[:-2]) <= {"und", "text_io"}, requests  # prompt prefill: text only


def test_edit_encodes_then_denoises_with_gen_and_decodes_with_vae(nodes, model, requests):
    edit_args = dict(FAST, steps=2, cfg_img_scale=2.0, cfg_interval_start=0.0, cfg_renorm_type="text_channel")
    nodes["BagelMoTEdit"]().edit(model, image_batch(1), "make it blue", "custom", 64, 32, seed=5, **edit_args)
    assert requests[-2:] == [("gen",), ("vae",)], requests
    prefill = requests[:-2]
    assert ("gen", "vae") in prefill and ("und", "vit") in prefill and ("und", "text_io") in prefill
    # The token table is asked for with text prefill only: image blocks and denoising reuse the marker rows.
    assert all("text_io" not in groups or groups == ("und", "text_io") for groups in requests), requests
