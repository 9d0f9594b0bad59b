"""Real batches: ``generate_image(num_images=B)`` gives image k exactly what ``seed + k`` gives alone, whether the
images are denoised one LM call each or together (``batch_images``), with or without batched CFG and the step
cache. bf16 results are bit-identical on this CPU; fp32 ones within float reordering (a GEMM over more rows may
take another kernel), as for batched CFG (test_batched_cfg.py)."""
import pytest
import torch
from PIL import Image

ARGS = dict(width=48, height=32, steps=5, cfg_text_scale=4.0)


def _assert_same(a, b, pipe):
    if pipe.compute_dtype == torch.bfloat16:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def one_at_a_time(speed_pipe):
    return [speed_pipe.generate_image("a red cube", seed=seed, **ARGS) for seed in (4, 5, 6)]


@pytest.mark.parametrize("batch_images", [False, True])
@pytest.mark.parametrize("batch_cfg", [False, True])
def test_batch_images_equal_one_at_a_time(speed_pipe, one_at_a_time, batch_images, batch_cfg):
    batch = speed_pipe.generate_image("a red cube", seed=4, num_images=3, batch_images=batch_images,
                                      batch_cfg=batch_cfg, **ARGS)
    assert len(batch.latents) == len(batch.images) == len(batch.pixels) == 3
    for alone, latent, pixels in zip(one_at_a_time, batch.latents, batch.pixels):
        _assert_same(alone.latents[0], latent, speed_pipe)
        _assert_same(alone.pixels[0], pixels, speed_pipe)
    if not batch_images and not batch_cfg:  # the reference path: exactly the one-at-a-time arithmetic
        assert all(torch.equal(a.latents[0], b) for a, b in zip(one_at_a_time, batch.latents))
    assert not torch.equal(batch.latents[0], batch.latents[1])  # each image has its own noise


def test_batch_with_step_cache_equals_one_at_a_time(speed_pipe):
    args = dict(ARGS, steps=9, step_cache="taylor")
    alone = [speed_pipe.generate_image("a red cube", seed=seed, **args) for seed in (7, 8)]
    batch = speed_pipe.generate_image("a red cube", seed=7, num_images=2, batch_images=True, **args)
    for one, latent in zip(alone, batch.latents):
        _assert_same(one.latents[0], latent, speed_pipe)


def test_batch_builds_the_prompt_context_once_and_makes_one_call_per_step(fp32_pipe, monkeypatch):
    from bagel_model.generation import batched_cfg, branch_velocities, runtime

    prefills, calls = [], []
    original_prefill, original_hidden = runtime.BagelRuntime.prefill_text, batched_cfg.branch_hidden
    monkeypatch.setattr(runtime.BagelRuntime, "prefill_text",
                        lambda self, ctx, ids: prefills.append(len(ids)) or original_prefill(self, ctx, ids))
    monkeypatch.setattr(branch_velocities, "branch_hidden",
                        lambda *a, **k: calls.append(len(a[1])) or original_hidden(*a, **k))
    fp32_pipe.generate_image("a red cube", seed=1, num_images=3, batch_images=True, batch_cfg=True,
                             **dict(ARGS, cfg_interval=(0.0, 1.0)))
    assert len(prefills) == 1  # the prompt, once for the three images
    assert calls == [3 * 2] * (ARGS["steps"] - 1)  # one LM call per step: 3 images x (gen, cfg_text)


def test_batch_with_input_images_or_sampled_plans_runs_image_by_image(fp32_pipe):
    red = Image.new("RGB", (32, 32), (200, 30, 30))
    inputs = [red, "a red cube"]
    batch = fp32_pipe.generate_image("", inputs=inputs, seed=3, num_images=2, **ARGS)
    alone = fp32_pipe.generate_image("", inputs=inputs, seed=4, **ARGS)
    assert torch.equal(batch.latents[1], alone.latents[0])  # its VAE posterior sample came from seed 4
    seeds = 2 ** 64 - 1
    wrapped = fp32_pipe.generate_image("a red cube", seed=seeds, num_images=2, **ARGS)
    assert torch.equal(wrapped.latents[1], fp32_pipe.generate_image("a red cube", seed=0, **ARGS).latents[0])


def test_batch_progress_and_previews(fp32_pipe):
    progress, previews = [], []
    result = fp32_pipe.generate_image("a red cube", seed=1, num_images=2, batch_images=True,
                                      callback=lambda *a: progress.append(a),
                                      preview=lambda step, total, x0: previews.append((step, total, x0)), **ARGS)
    evaluations = ARGS["steps"] - 1
    assert progress == [("denoise", k, evaluations) for k in range(1, evaluations + 1)]
    assert [(s, t) for s, t, _ in previews] == [(k, evaluations) for k in range(1, evaluations + 1)]
    assert previews[-1][2].shape == (2, 16, ARGS["height"] // 8, ARGS["width"] // 8)
    # The last step integrates to t = 0, so its predicted clean latent is the result.
    torch.testing.assert_close(previews[-1][2], torch.cat(result.latents), rtol=1e-5, atol=1e-5)
    inputs = [Image.new("RGB", (32, 32)), "a cube"]
    progress.clear()
    fp32_pipe.generate_image("", inputs=inputs, seed=1, num_images=2, callback=lambda *a: progress.append(a),
                             **ARGS)
    assert progress[-1] == ("denoise", 2 * evaluations, 2 * evaluations) and len(progress) == 2 * evaluations
