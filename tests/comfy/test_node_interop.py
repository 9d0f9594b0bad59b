"""ComfyUI interop of the pack's nodes, against the real ComfyUI code in this process: LATENT and VAE outputs
that core VAE Decode turns into our IMAGE, live previews through ComfyUI's previewers, several images in one
question, and batches that equal one-at-a-time generation."""
import numpy as np
import pytest
import torch

FAST = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.4, cfg_interval_end=1.0,
            timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")
EDIT_FAST = dict(FAST, cfg_img_scale=2.0, cfg_interval_start=0.0, cfg_renorm_type="text_channel")
CORE = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval=(0.4, 1.0), timestep_shift=3.0,
            cfg_renorm_min=0.0, cfg_renorm_type="global")
# Core VAE Decode runs ComfyUI's own decoder modules (fp32 on the CPU) on the same weights: the same image up to
# float reordering inside its convolutions and attention. Measured max abs difference on 0..1 pixels (AMD EPYC,
# torch 2.14.1): 7.7e-7 with the tiny autoencoder, 1.0e-6 with the full-size FLUX one, tiled or not.
DECODE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ours(comfy_nodes):
    return {name: cls for name, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("BagelMoT")}


@pytest.fixture(scope="module")
def loaded(comfy_nodes, ours, tiny_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    return ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "bf16", False)[:2]


@pytest.fixture(scope="module")
def flux_ae_checkpoint(tmp_path_factory, tiny_checkpoint):
    """The tiny LM with a full-size (random) FLUX autoencoder: the layout of the real ae.safetensors."""
    import shutil

    from safetensors.torch import save_file

    from bagel_model.config import AEConfig
    from bagel_model.model.autoencoder import AutoEncoder

    folder = tmp_path_factory.mktemp("flux-ae") / "BAGEL-tiny-flux-ae"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "ae_config.json").unlink()  # the real checkpoint has none: FLUX defaults
    generator = torch.Generator().manual_seed(1)
    ae = AutoEncoder(AEConfig())
    state = {}
    for name, tensor in ae.state_dict().items():
        if tensor.ndim == 1:
            state[name] = (torch.ones_like(tensor) if name.endswith("weight") else torch.zeros_like(tensor)) \
                + 0.02 * torch.randn(tensor.shape, generator=generator)
        else:
            state[name] = torch.randn(tensor.shape, generator=generator) / np.sqrt(tensor[0].numel())
    save_file(state, str(folder / "ae.safetensors"))
    return folder


def decode(comfy_nodes, vae, latent, tiled=False):
    if tiled:
        return comfy_nodes.VAEDecodeTiled().decode(vae, latent, tile_size=512, overlap=64, temporal_size=64,
                                                   temporal_overlap=8)[0]
    return comfy_nodes.VAEDecode().decode(vae, latent)[0]


def max_diff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).detach().abs().max())


def test_new_outputs_come_last_and_old_inputs_keep_their_places(ours):
    loader, t2i, edit = ours["BagelMoTModelLoader"], ours["BagelMoTTextToImage"], ours["BagelMoTEdit"]
    assert loader.RETURN_TYPES == ("BAGEL_MOT_MODEL", "VAE", "MODEL", "CLIP")
    assert loader.RETURN_NAMES == ("bagel_model", "vae", "model", "clip")
    assert t2i.RETURN_TYPES == ("IMAGE", "LATENT") and edit.RETURN_TYPES == ("IMAGE", "LATENT")
    understand = ours["BagelMoTUnderstand"].INPUT_TYPES()
    assert list(understand["required"]) == ["bagel_model", "question", "max_new_tokens", "do_sample",
                                            "temperature", "seed", "think"]
    assert list(understand["optional"]) == ["image", "reference_images", "image_mode"]
    assert understand["optional"]["image_mode"][1]["default"] == "each image"
    think = ours["BagelMoTThink"].INPUT_TYPES()
    assert list(think["optional"]) == ["image", "reference_images", "image_mode"]
    assert think["optional"]["image_mode"][1]["default"] == "single image"


def test_image_is_float_and_equals_core_vae_decode_of_latent(comfy_nodes, ours, loaded):
    model, vae = loaded
    images, latent = ours["BagelMoTTextToImage"]().generate(model, "a red cube", 64, 48, seed=9, batch_size=2,
                                                            **FAST)
    assert latent["samples"].shape == (2, 16, 6, 8) and latent["samples"].dtype == torch.float32
    direct = model.pipeline.generate_image("a red cube", width=64, height=48, seed=9, **CORE)
    eight_bit = torch.from_numpy(np.asarray(direct.images[0], dtype=np.float32) / 255.0)
    assert not torch.equal(images[0], eight_bit) and max_diff(images[0], eight_bit) <= 1 / 255
    scale, shift = model.pipeline.config.ae.scale_factor, model.pipeline.config.ae.shift_factor
    torch.testing.assert_close(latent["samples"][:1], direct.latents[0] / scale + shift)
    assert max_diff(decode(comfy_nodes, vae, latent), images) <= DECODE_TOLERANCE
    assert max_diff(decode(comfy_nodes, vae, latent, tiled=True), images) <= DECODE_TOLERANCE


def test_edit_latent_decodes_to_the_edited_image(comfy_nodes, ours, loaded):
    model, vae = loaded
    source = torch.rand((1, 32, 48, 3), generator=torch.Generator().manual_seed(2))
    images, latent = ours["BagelMoTEdit"]().edit(model, source, "make it blue", "native", 16, 16, seed=5,
                                                 **EDIT_FAST)
    assert latent["samples"].shape[2:] == (images.shape[1] // 8, images.shape[2] // 8)
    assert max_diff(decode(comfy_nodes, vae, latent), images) <= DECODE_TOLERANCE
    matched, _ = ours["BagelMoTEdit"]().edit(model, source, "make it blue", "match_input", 16, 16, seed=5,
                                             **EDIT_FAST)
    assert matched.shape == source.shape and matched.dtype == torch.float32


def test_flux_ae_safetensors_through_core_vae_loader_gives_our_image(comfy_nodes, ours, flux_ae_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(flux_ae_checkpoint.parent))
    folder_paths.add_model_folder_path("vae", str(flux_ae_checkpoint), is_default=True)  # its ae.safetensors first
    model, own_vae = ours["BagelMoTModelLoader"]().load(flux_ae_checkpoint.name, "bf16", False)[:2]
    images, latent = ours["BagelMoTTextToImage"]().generate(model, "a red cube", 48, 32, seed=1, batch_size=1,
                                                            **FAST)
    core_vae = comfy_nodes.VAELoader().load_vae("ae.safetensors")[0]
    from_loader = decode(comfy_nodes, core_vae, latent)
    assert max_diff(from_loader, images) <= DECODE_TOLERANCE
    assert max_diff(decode(comfy_nodes, core_vae, latent, tiled=True), images) <= DECODE_TOLERANCE
    assert torch.equal(decode(comfy_nodes, own_vae, latent), from_loader)  # the loader's vae is that VAE


@pytest.mark.parametrize("method", ["latent2rgb", "auto", "none"])
def test_previews_follow_the_server_preview_method(ours, loaded, monkeypatch, progress_updates, method):
    from comfy.cli_args import LatentPreviewMethod, args

    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod(method))
    seen = {}
    original = loaded[0].pipeline.generate_image

    def spy(*a, **k):
        seen["preview"] = k["preview"]
        return original(*a, **k)

    monkeypatch.setattr(loaded[0].pipeline, "generate_image", spy)
    updates = progress_updates
    ours["BagelMoTTextToImage"]().generate(loaded[0], "a cat", 64, 32, seed=1, batch_size=1, **FAST)
    previews = [preview for _, _, preview in updates if preview is not None]
    if method == "none":
        assert not previews and seen["preview"] is None  # the core is not even asked for latents
        assert len(updates) == FAST["steps"] - 1  # the bar still moves on every step
        return
    assert len(previews) == len(updates) == FAST["steps"] - 1  # one preview per denoise step
    kind, picture, max_size = previews[-1]
    assert kind == "JPEG" and picture.size == (64 // 8, 32 // 8)  # latent2rgb: one pixel per latent cell


def test_taesd_previews_use_the_flux_tiny_autoencoder(ours, loaded, monkeypatch, progress_updates, tmp_path):
    import folder_paths
    from comfy.cli_args import LatentPreviewMethod, args
    from comfy.taesd.taesd import Decoder
    from safetensors.torch import save_file

    approx = tmp_path / "vae_approx"
    approx.mkdir()
    decoder = Decoder(latent_channels=16)  # random weights in taef1's layout
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(approx / "taef1_decoder.safetensors"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "vae_approx",
                        ([str(approx)], folder_paths.supported_pt_extensions))
    monkeypatch.setattr(args, "preview_method", LatentPreviewMethod.TAESD)
    updates = progress_updates
    ours["BagelMoTTextToImage"]().generate(loaded[0], "a cat", 64, 32, seed=1, batch_size=1, **FAST)
    previews = [preview for _, _, preview in updates if preview is not None]
    assert len(previews) == FAST["steps"] - 1
    assert previews[-1][1].size == (64, 32)  # taef1 decodes to full resolution


def test_batch_equals_one_image_at_a_time_per_seed(ours, loaded):
    model = loaded[0]
    images, latent = ours["BagelMoTTextToImage"]().generate(model, "a boat", 32, 32, seed=11, batch_size=3, **FAST)
    for k in range(3):
        alone = model.pipeline.generate_image("a boat", width=32, height=32, seed=11 + k, **CORE)
        assert torch.equal(images[k], alone.pixels[0])


def _spy_understand(monkeypatch, pipeline):
    calls = []
    original = pipeline.understand

    def spy(*a, **k):
        calls.append(k["inputs"])
        return original(*a, **k)

    monkeypatch.setattr(pipeline, "understand", spy)
    return calls, original


def test_understand_modes_and_text_only(ours, loaded, monkeypatch):
    model = loaded[0]
    node = ours["BagelMoTUnderstand"]()
    calls, understand = _spy_understand(monkeypatch, model.pipeline)
    pair = torch.rand((2, 32, 48, 3), generator=torch.Generator().manual_seed(3))
    reference = torch.rand((1, 32, 32, 3), generator=torch.Generator().manual_seed(4))
    args = dict(question="Compare them.", max_new_tokens=4, do_sample=False, temperature=0.3, seed=0, think=False)

    text_only = node.understand(model, **args)["result"][0]
    each = node.understand(model, **args, image=pair, reference_images=reference)["result"][0]
    together = node.understand(model, **args, image=pair, reference_images=reference, image_mode="all together")
    numbered = node.understand(model, **args, image=pair, image_mode="all together, numbered")
    assert len(text_only) == 1 and len(each) == 2
    assert len(together["result"][0]) == 1 and together["ui"]["text"] == together["result"][0]
    assert len(numbered["result"][0]) == 1
    kinds = [[type(item).__name__ if not isinstance(item, str) else item for item in call] for call in calls]
    assert kinds[0] == ["Compare them."]
    assert kinds[1] == kinds[2] == ["Image", "Image", "Compare them."]  # the reference, then one image
    assert kinds[3] == ["Image", "Image", "Image", "Compare them."]
    assert kinds[4] == ["Image 1:", "Image", "Image 2:", "Image", "Compare them."]
    # "each image" for one image is exactly today's question
    one = node.understand(model, **args, image=pair[:1])["result"][0]
    assert one == [understand([calls[-1][0]], "Compare them.", max_new_tokens=4).answer]


def test_think_with_several_images(ours, loaded):
    model = loaded[0]
    node = ours["BagelMoTThink"]()
    pair = torch.rand((2, 32, 32, 3), generator=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="batch of 2.*all together"):
        node.think(model, "Merge these.", 4, False, 0.3, 0, image=pair)
    together = node.think(model, "Merge these.", 4, False, 0.3, 0, image=pair, image_mode="all together")
    numbered = node.think(model, "Merge these.", 4, False, 0.3, 0, image=pair, image_mode="all together, numbered")
    for plan in (together, numbered):
        assert isinstance(plan["result"][0], str) and plan["ui"]["text"] == [plan["result"][0]]
