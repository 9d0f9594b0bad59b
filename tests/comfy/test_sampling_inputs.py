"""BAGEL-MoT Noise and BAGEL-MoT Schedule against the BAGEL core inside real ComfyUI: the noise is the one Text to
Image draws for a seed (caught where the core hands it to its denoise loop), in ComfyUI's latent layout, and the
sigmas are the core's schedule, step for step."""
import pytest
import torch

from bagel_model.errors import BagelInputError
from bagel_model.generation.images import patchify_latent, unpatchify_latent
from bagel_model.generation.sampler import schedule
from sampling_support import empty_latent

WIDTH, HEIGHT = 64, 32  # not square, so a swapped height and width would show


@pytest.fixture(scope="module")
def ours(comfy_nodes):
    return comfy_nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def bagel_model(ours, tiny_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    return ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "bf16", False)[0]


def text_to_image_noise(ours, bagel_model, monkeypatch, seed, batch_size):
    """The packed noise (B, tokens, 64) the core's denoise loop receives when Text to Image runs."""
    import bagel_model.pipeline as pipeline_module

    caught = []
    original = pipeline_module.denoise

    def catching_denoise(runtime, settings, query, noise, *args, **kwargs):
        caught.append((noise.clone(), query.grid_h, query.grid_w))
        return original(runtime, settings, query, noise, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "denoise", catching_denoise)
    ours["BagelMoTTextToImage"]().generate(
        bagel_model, "a red cube", WIDTH, HEIGHT, seed, batch_size, steps=2, cfg_text_scale=4.0, cfg_img_scale=1.0,
        cfg_interval_start=0.4, cfg_interval_end=1.0, timestep_shift=3.0, cfg_renorm_min=0.0,
        cfg_renorm_type="global")
    noises = torch.cat([noise if noise.dim() == 3 else noise[None] for noise, _, _ in caught])
    return noises, caught[0][1], caught[0][2]


@pytest.mark.parametrize("seed", [0, 2 ** 64 - 1])  # the last seed wraps to 0 for the batch's second image
def test_noise_is_text_to_image_noise_in_comfy_layout(ours, bagel_model, monkeypatch, seed):
    packed, grid_h, grid_w = text_to_image_noise(ours, bagel_model, monkeypatch, seed, batch_size=2)
    latent = empty_latent(WIDTH, HEIGHT, 2)
    noise_object = ours["BagelMoTNoise"]().get_noise(seed)[0]
    noise = noise_object.generate_noise(latent)
    assert noise_object.seed == seed  # SamplerCustomAdvanced passes it on to the sampler
    assert noise.shape == latent["samples"].shape == (2, 16, HEIGHT // 8, WIDTH // 8)
    assert noise.dtype == torch.float32 and noise.device.type == "cpu"
    for k in range(2):
        # What BAGEL's model sees (2x2 packed tokens) and where ComfyUI keeps it (FLUX layout) are both exact.
        assert torch.equal(patchify_latent(noise[k]), packed[k])
        assert torch.equal(noise[k:k + 1], unpatchify_latent(packed[k], grid_h, grid_w, 16))


def test_noise_of_a_latent_cut_from_a_batch_keeps_its_seed(ours, comfy_nodes):
    latent = empty_latent(WIDTH, HEIGHT, 3)
    second = comfy_nodes.LatentFromBatch().frombatch(latent, 1, 1)[0]  # stock node: sets batch_index [1]
    noise = ours["BagelMoTNoise"]().get_noise(5)[0]
    assert torch.equal(noise.generate_noise(second), noise.generate_noise(latent)[1:2])
    assert torch.equal(noise.generate_noise(second), ours["BagelMoTNoise"]().get_noise(6)[0].generate_noise(
        empty_latent(WIDTH, HEIGHT, 1)))


def test_noise_refuses_latents_bagel_cannot_pack(ours):
    noise = ours["BagelMoTNoise"]().get_noise(0)[0]
    with pytest.raises(BagelInputError, match="4 channels.*EmptySD3LatentImage"):
        noise.generate_noise({"samples": torch.ones(1, 4, 8, 8)})
    with pytest.raises(BagelInputError, match="9x8.*even"):
        noise.generate_noise({"samples": torch.zeros(1, 16, 9, 8)})
    with pytest.raises(BagelInputError, match=r"\(1, 16, 1, 8, 8\)"):
        noise.generate_noise({"samples": torch.zeros(1, 16, 1, 8, 8)})


@pytest.mark.parametrize("steps,shift", [(50, 3.0), (2, 1.0), (7, 0.1), (30, 12.5)])
def test_sigmas_are_the_core_schedule(ours, steps, shift):
    import comfy.model_sampling

    sigmas = ours["BagelMoTSigmas"]().get_sigmas(steps, shift)[0]
    times, dts = schedule(steps, shift)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps,) and sigmas[-1] == 0
    assert torch.equal(sigmas[:-1], times)
    # ComfyUI's Euler moves by sigma_next - sigma; BAGEL's by -(t_i - t_{i+1}): the same float32 numbers.
    assert torch.equal(sigmas[:-1] - sigmas[1:], dts)
    # and it is core ComfyUI's own flow shift of BAGEL's linear times (comfy.model_sampling.time_snr_shift).
    assert torch.equal(sigmas, comfy.model_sampling.time_snr_shift(shift, torch.linspace(1, 0, steps)))


def test_sigmas_steps_as_on_text_to_image(ours):
    sigmas_spec = ours["BagelMoTSigmas"].INPUT_TYPES()["required"]
    t2i_spec = ours["BagelMoTTextToImage"].INPUT_TYPES()["required"]
    assert list(sigmas_spec) == ["steps", "timestep_shift"]
    for name in sigmas_spec:
        assert sigmas_spec[name] == t2i_spec[name]
    assert ours["BagelMoTNoise"].INPUT_TYPES()["required"]["seed"] == t2i_spec["seed"]
    with pytest.raises(BagelInputError, match="steps must be at least 2"):
        ours["BagelMoTSigmas"]().get_sigmas(1, 3.0)
    with pytest.raises(BagelInputError, match="timestep_shift must be > 0"):
        ours["BagelMoTSigmas"]().get_sigmas(10, 0.0)
