"""BAGEL inside ComfyUI's own sampling, against the real ComfyUI code in this process (tiny random checkpoint):
SamplerCustomAdvanced with BAGEL's noise, guider and schedule equals Text to Image; stock CFGGuider and
DualCFGGuider equal BAGEL's formulas; every context is prefilled once per run; all branches of a step run in
one model call.

Tolerances: ComfyUI's Euler step goes through ``denoised = x − σ·v`` and ``d = (x − denoised)/σ``, which is v only
up to float32 rounding, and the guider recovers velocities the same way; over the steps this leaves differences
of float32 rounding size (measured below 1e-5 on the latents), nowhere near a visible change.
"""
import pytest
import torch

from sampling_support import (GUIDER, UndRows, bagel_guider, empty_latent, encode, max_diff, run_node,
                              sample_custom as sample_with, stock)
from sampling_support import loaded, ours  # noqa: F401 (fixtures)

WIDTH, HEIGHT, SEED, STEPS = 64, 48, 7, 5
LATENT_TOLERANCE = 2e-4
PIXEL_TOLERANCE = 2e-4


def sample_custom(ours, model, guider):
    return sample_with(ours, guider, SEED, STEPS, empty_latent(WIDTH, HEIGHT))


def test_loader_outputs_model_and_clip_on_the_same_weights(loaded):
    handle, vae, model, clip = loaded
    assert model.model.diffusion_model is handle.pipeline.model.bagel
    keys = model.model.state_dict().keys()
    assert "diffusion_model.language_model.model.layers.0.self_attn.q_proj.weight" in keys
    assert "diffusion_model.language_model.model.layers.0.self_attn.q_proj_moe_gen.weight" in keys
    assert model.cached_patcher_init is not None
    assert model.model.latent_format.scale_factor == handle.pipeline.config.ae.scale_factor


def test_sampler_custom_advanced_equals_text_to_image(comfy_nodes, ours, loaded):
    handle, vae, model, clip = loaded
    settings = dict(GUIDER, steps=STEPS, timestep_shift=3.0)
    images, reference = ours["BagelMoTTextToImage"]().generate(handle, "a red cube", WIDTH, HEIGHT, seed=SEED,
                                                               batch_size=1, **settings)
    guider = bagel_guider(ours, model, encode(clip, "a red cube"), encode(clip, ""))
    latent = sample_custom(ours, model, guider)
    assert max_diff(latent["samples"], reference["samples"]) < LATENT_TOLERANCE
    decoded = run_node(comfy_nodes.VAEDecode, vae=vae, samples=latent)[0]
    assert max_diff(decoded, images) < PIXEL_TOLERANCE


def test_prefix_is_prefilled_once_per_run(ours, loaded):
    """Und-expert rows of a run = the two prompts' tokens once + 2 marker rows per branch per step; a prefix
    computed per step would add the prompt tokens at every step."""
    handle, vae, model, clip = loaded
    positive, negative = encode(clip, "a red cube on a table"), encode(clip, "")
    tokens = handle.pipeline.tokenizer.encode("a red cube on a table")
    guider = bagel_guider(ours, model, positive, negative, cfg_interval_start=0.0)
    counter = UndRows(handle.pipeline.model.bagel)
    try:
        sample_custom(ours, model, guider)
    finally:
        counter.close()
    steps = STEPS - 1
    prefill = [rows for rows in counter.calls if rows not in (2, 4)]
    assert len(prefill) == 1 and prefill[0] >= len(tokens)  # one prefill of the prompt (the negative is empty)
    assert counter.calls.count(4) == steps  # one LM call per step with both branches' marker rows
    assert counter.rows == prefill[0] + 4 * steps


def test_core_cfg_guider_equals_bagel_guider_without_image_guidance(ours, loaded):
    handle, vae, model, clip = loaded
    positive, negative = encode(clip, "a blue ball"), encode(clip, "")
    ours_latent = sample_custom(ours, model, bagel_guider(ours, model, positive, negative, cfg_text_scale=3.0,
                                                          cfg_interval_start=0.0, cfg_renorm_min=1.0))
    core = run_node(stock("CFGGuider"), model=model, positive=positive, negative=negative, cfg=3.0)[0]
    assert max_diff(sample_custom(ours, model, core)["samples"], ours_latent["samples"]) < LATENT_TOLERANCE


def test_ksampler_runs_with_stock_cfg(comfy_nodes, loaded):
    handle, vae, model, clip = loaded
    latent = comfy_nodes.KSampler().sample(model, 3, 2, 4.0, "euler", "simple", encode(clip, "a cat"),
                                           encode(clip, ""), empty_latent(WIDTH, HEIGHT, 2))[0]
    assert latent["samples"].shape == (2, 16, HEIGHT // 8, WIDTH // 8)
    assert torch.isfinite(latent["samples"]).all()


EDIT = dict(cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval_start=0.0, cfg_interval_end=1.0,
            cfg_renorm_min=0.0, cfg_renorm_type="text_channel")


@pytest.fixture(scope="module")
def picture():
    generator = torch.Generator().manual_seed(3)
    return torch.rand((1, 40, 56, 3), generator=generator)


def edit_conds(ours, clip, picture, instruction="make it blue"):
    images = ours["BagelMoTContextImages"]
    positive = run_node(images, conditioning=encode(clip, instruction), image=picture)[0]
    without_text = run_node(images, conditioning=encode(clip, ""), image=picture)[0]
    return positive, without_text, encode(clip, instruction)


def core_edit_latent(handle, picture, instruction, settings):
    """The core's own edit flow on the same contexts and BAGEL-MoT Noise's noise: the reference."""
    from PIL import Image

    from bagel_model.generation.conditioning import ConditioningBuilder
    from bagel_model.generation.denoise import denoise
    from bagel_model.generation.sampler import SamplerSettings

    pipeline = handle.pipeline
    image = Image.fromarray((picture[0].numpy() * 255).clip(0, 255).astype("uint8"))
    builder = ConditioningBuilder(pipeline.runtime, pipeline.tokenizer)
    cond = builder.build([image, instruction], None, use_vae=True,
                         generator=torch.Generator("cpu").manual_seed(SEED))
    cfg_img = builder.image_cfg_context(cond)
    query = pipeline.runtime.generation_query(HEIGHT, WIDTH)
    noise = torch.randn((query.num_tokens, pipeline.config.patch_latent_dim),
                        generator=torch.Generator("cpu").manual_seed(SEED))
    packed = denoise(pipeline.runtime, settings, query, noise, cond.gen, cond.cfg_text, cfg_img)
    from bagel_model.generation.latent_velocity import unpack_latents

    return unpack_latents(packed, HEIGHT // 8, WIDTH // 8, 16, 2)


def test_bagel_guider_edit_equals_the_core_edit(ours, loaded, picture):
    from bagel_model.generation.sampler import SamplerSettings

    handle, vae, model, clip = loaded
    positive, without_text, _ = edit_conds(ours, clip, picture)
    guider = bagel_guider(ours, model, positive, without_text, **EDIT)
    latent = sample_custom(ours, model, guider)
    settings = SamplerSettings(steps=STEPS, cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0),
                               cfg_renorm_min=0.0, cfg_renorm_type="text_channel")
    reference = core_edit_latent(handle, picture, "make it blue", settings)
    assert max_diff(model.model.process_latent_in(latent["samples"]), reference) < LATENT_TOLERANCE


def test_dual_cfg_guider_nested_edit_is_bagels_formula_without_renorm(ours, loaded, picture):
    handle, vae, model, clip = loaded
    positive, without_text, without_images = edit_conds(ours, clip, picture)
    dual = run_node(stock("DualCFGGuider"), model=model, cond1=positive, cond2=without_text,
                    negative=without_images, cfg_conds=4.0, cfg_cond2_negative=2.0, style="nested")[0]
    ours_guider = bagel_guider(ours, model, positive, without_text, without_images=without_images,
                               **dict(EDIT, cfg_renorm_min=1.0, cfg_renorm_type="global"))
    expected = sample_custom(ours, model, ours_guider)["samples"]
    counter = UndRows(handle.pipeline.model.bagel)
    try:
        got = sample_custom(ours, model, dual)["samples"]
    finally:
        counter.close()
    assert max_diff(got, expected) < LATENT_TOLERANCE
    # Contexts of three lengths, still one LM call per step: the marker rows of all three branches together.
    assert counter.calls[-(STEPS - 1):] == [6] * (STEPS - 1) and counter.calls.count(6) == STEPS - 1
