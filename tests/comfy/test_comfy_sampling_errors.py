"""Bad input to BAGEL's MODEL, CLIP and guider: a clear error naming the input and the fix, before any step."""
import math

import pytest
import torch

from sampling_support import GUIDER, empty_latent, encode, run_node, stock
from sampling_support import loaded, ours  # noqa: F401 (fixtures)


class _Scaler(torch.nn.Module):
    """Another model's network: it computes with its text embeddings."""

    dtype = torch.float32

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **kwargs):
        return x * context.mean()


@pytest.fixture(scope="module")
def other_model():
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models_base

    config = comfy.supported_models_base.BASE({"disable_unet_model_creation": True})
    config.latent_format = comfy.latent_formats.Flux()
    base = comfy.model_base.BaseModel(config, comfy.model_base.ModelType.FLOW)
    base.diffusion_model = _Scaler()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(base, load_device=cpu, offload_device=cpu)


def sample(model, guider, latent, steps=3):
    sigmas = run_node(stock("BasicScheduler"), model=model, scheduler="simple", steps=steps, denoise=1.0)[0]
    return run_node(stock("SamplerCustomAdvanced"), noise=run_node(stock("RandomNoise"), noise_seed=1)[0],
                    guider=guider, sampler=run_node(stock("KSamplerSelect"), sampler_name="euler")[0],
                    sigmas=sigmas, latent_image=latent)[0]


def test_bagel_conditioning_on_another_model_says_so(loaded, other_model):
    clip = loaded[3]
    guider = run_node(stock("CFGGuider"), model=other_model, positive=encode(clip, "a cat"),
                      negative=encode(clip, ""), cfg=4.0)[0]
    with pytest.raises(ValueError, match="only BAGEL's MODEL can use it"):
        sample(other_model, guider, empty_latent(32, 32))


def test_another_models_conditioning_on_bagel_says_so(ours, loaded):
    model, clip = loaded[2], loaded[3]
    foreign = [[torch.zeros((1, 77, 768)), {"pooled_output": torch.zeros((1, 768))}]]
    with pytest.raises(ValueError, match="not made for BAGEL"):
        run_node(ours["BagelMoTGuider"], model=model, positive=encode(clip, "a cat"), negative=foreign, **GUIDER)
    guider = run_node(stock("CFGGuider"), model=model, positive=foreign, negative=encode(clip, ""), cfg=4.0)[0]
    with pytest.raises(ValueError, match="not made for BAGEL"):
        sample(model, guider, empty_latent(32, 32))


@pytest.mark.parametrize("latent, message", [
    ({"samples": torch.ones((1, 4, 4, 4))}, "16-channel FLUX latents"),  # an all-zero one ComfyUI adapts
    ({"samples": torch.zeros((1, 16, 5, 4))}, "scale or crop the image to a multiple of 16"),
    ({"samples": torch.zeros((1, 16, 2, 130))}, "larger than the model's"),
])
def test_latent_of_the_wrong_size_says_which_sizes_work(ours, loaded, latent, message):
    model, clip = loaded[2], loaded[3]
    guider = run_node(ours["BagelMoTGuider"], model=model, positive=encode(clip, "a cat"), negative=encode(clip, ""),
                      **GUIDER)[0]
    with pytest.raises(Exception, match=message):
        sample(model, guider, latent)


@pytest.mark.parametrize("name", ["cfg_text_scale", "cfg_img_scale", "cfg_renorm_min"])
def test_nan_scale_is_refused(ours, loaded, name):
    model, clip = loaded[2], loaded[3]
    with pytest.raises(ValueError, match=f"{name}=NaN is not a finite number"):  # the input guard, first
        run_node(ours["BagelMoTGuider"], model=model, positive=encode(clip, "a cat"), negative=encode(clip, ""),
                 **dict(GUIDER, **{name: math.nan}))


def test_reversed_cfg_interval_is_refused(ours, loaded):
    model, clip = loaded[2], loaded[3]
    with pytest.raises(ValueError, match="cfg_interval"):
        run_node(ours["BagelMoTGuider"], model=model, positive=encode(clip, "a cat"), negative=encode(clip, ""),
                 **dict(GUIDER, cfg_interval_start=0.9, cfg_interval_end=0.2))


def test_hook_lora_on_a_conditioning_is_refused(ours, loaded):
    import comfy.hooks
    import node_helpers

    model, clip = loaded[2], loaded[3]
    rows, columns = model.model.diffusion_model.llm2vae.weight.shape
    lora = {"diffusion_model.llm2vae.lora_up.weight": torch.zeros((rows, 1)),
            "diffusion_model.llm2vae.lora_down.weight": torch.zeros((1, columns))}
    hooks = comfy.hooks.create_hook_lora(lora, strength_model=1.0, strength_clip=0.0)
    positive = node_helpers.conditioning_set_values(encode(clip, "a cat"), {"hooks": hooks})
    guider = run_node(ours["BagelMoTGuider"], model=model, positive=positive, negative=encode(clip, ""), **GUIDER)[0]
    with pytest.raises(ValueError, match="LoraLoaderModelOnly"):
        sample(model, guider, empty_latent(32, 32))


@pytest.mark.parametrize("mask", [torch.ones((1, 64, 64)), torch.ones((1, 2, 4))])
def test_mask_of_another_shape_is_refused_before_any_step(ours, loaded, mask):
    model, clip = loaded[2], loaded[3]
    mask[..., 0] = 0.0  # not constant: stretching it would move the painted area
    guider = run_node(ours["BagelMoTGuider"], model=model, positive=encode(clip, "a cat"), negative=encode(clip, ""),
                      **GUIDER)[0]
    latent = dict(empty_latent(48, 32), noise_mask=mask)
    with pytest.raises(ValueError, match=r"inpainting mask is \d+x\d+ pixels but the latent is 6x4"):
        sample(model, guider, latent)


@pytest.mark.parametrize("mask", [
    torch.cat([torch.zeros((1, 32, 24)), torch.ones((1, 32, 24))], dim=-1),  # the image's size, 48x32
    torch.cat([torch.zeros((1, 4, 3)), torch.ones((1, 4, 3))], dim=-1),  # the latent's size
    torch.zeros((1, 64, 64)),  # Load Image's mask of an image without alpha: constant
])
def test_mask_of_the_latents_shape_samples(ours, loaded, mask):
    model, clip = loaded[2], loaded[3]
    guider = run_node(ours["BagelMoTGuider"], model=model, positive=encode(clip, "a cat"), negative=encode(clip, ""),
                      **GUIDER)[0]
    out = sample(model, guider, dict(empty_latent(48, 32), noise_mask=mask), steps=2)
    assert out["samples"].shape == (1, 16, 4, 6) and torch.isfinite(out["samples"]).all()


def test_mask_of_another_shape_under_stock_cfg_guider(ours, loaded):
    """0.3.64 hands OUTER_SAMPLE the LATENT's own mask, so the MODEL refuses it under every guider; 0.33 resizes
    it inside CFGGuider.sample before any model hook (there the BAGEL guider checks it, test above)."""
    import comfy.samplers

    if "denoise_mask" not in comfy.samplers.CFGGuider.outer_sample.__code__.co_varnames or \
            "prepare_mask" in comfy.samplers.CFGGuider.sample.__code__.co_names:
        pytest.skip("this ComfyUI resizes the mask in CFGGuider.sample, before the MODEL's hooks")
    model, clip = loaded[2], loaded[3]
    guider = run_node(stock("CFGGuider"), model=model, positive=encode(clip, "a cat"), negative=encode(clip, ""),
                      cfg=4.0)[0]
    mask = torch.ones((1, 64, 64))
    mask[..., 0] = 0.0
    with pytest.raises(ValueError, match="inpainting mask is 64x64 pixels"):
        sample(model, guider, dict(empty_latent(48, 32), noise_mask=mask))
