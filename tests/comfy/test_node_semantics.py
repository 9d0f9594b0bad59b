"""Node behaviour that ComfyUI's own conventions decide: blank plans, device and dtype policy, re-execution."""
import numpy as np
import pytest
import torch

FAST = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.4, cfg_interval_end=1.0,
            timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")


@pytest.fixture(scope="module")
def ours(comfy_nodes, tiny_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    return comfy_nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def model(ours, tiny_checkpoint):
    return ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "bf16", False)[0]


def _as_float(picture):
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)


def test_blank_plan_from_think_is_used_like_the_core_uses_it(ours, model):
    node = ours["BagelMoTTextToImage"]()
    core = dict(width=32, height=32, steps=3, seed=3)
    for plan in ("\n", " \x1c"):
        via_node = node.generate(model, "a house", 32, 32, seed=3, batch_size=1, thinking=plan, **FAST)[0]
        direct = model.pipeline.generate_image("a house", thinking=plan, **core)
        assert torch.equal(via_node[0], _as_float(direct.images[0]))
    empty_box = node.generate(model, "a house", 32, 32, seed=3, batch_size=1, thinking="", **FAST)[0]
    assert torch.equal(empty_box[0], _as_float(model.pipeline.generate_image("a house", **core).images[0]))
