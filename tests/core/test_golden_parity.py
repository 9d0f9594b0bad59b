"""Parity with the official implementation's outputs for ../shared/golden/tiny (see its README).

Bounds from the golden README: greedy token ids identical, final latent relative L2 <= 0.03, image PSNR >= 40 dB.
On failure the message names the first denoise step whose guided velocity departs from the reference.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bagel_model import BagelPipeline
from bagel_model.generation.batched_cfg import velocities
from bagel_model.generation.sampler import SamplerSettings, combine_cfg, schedule


@pytest.fixture(scope="module")
def reference(golden):
    return json.loads((golden / "reference" / "reference.json").read_text())["modes"]


@pytest.fixture(scope="module")
def golden_pipe(golden):
    # The reference ran bf16 weights with bf16 matmuls; match that whatever this CPU prefers.
    return BagelPipeline.from_pretrained(golden / "checkpoint", device="cpu", compute_dtype="bf16")


def _sampler_kwargs(settings):
    return dict(steps=settings["num_timesteps"], cfg_text_scale=settings["cfg_text_scale"],
                cfg_img_scale=settings["cfg_img_scale"], cfg_interval=tuple(settings["cfg_interval"]),
                timestep_shift=settings["timestep_shift"], cfg_renorm_min=settings["cfg_renorm_min"],
                cfg_renorm_type=settings["cfg_renorm_type"], seed=settings["seed"])


def _psnr(ours: Image.Image, path) -> float:
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def _first_divergent_step(pipe, golden, mode, settings, items, size):
    """Replays the reference states step by step and returns (step, relative error) of the worst velocity."""
    tensors = load_file(golden / "reference" / f"{mode}.safetensors")
    gen = torch.Generator().manual_seed(settings["seed"])
    cond = pipe.builder.build(items, None, True, gen)
    sampler = SamplerSettings(**{k: v for k, v in _sampler_kwargs(settings).items() if k != "seed"})
    cfg_img = pipe.builder.image_cfg_context(cond) if sampler.cfg_img_scale > 1 else None
    query = pipe.runtime.generation_query(size[1], size[0])
    errors = []
    for i, t in enumerate(schedule(sampler.steps, sampler.timestep_shift)[0]):
        x = tensors[f"step{i}_x_t"]
        ts, im = sampler.scales_at(t)
        v = velocities(pipe.runtime, [cond.gen], query, x, t)[0]
        vt = velocities(pipe.runtime, [cond.cfg_text], query, x, t)[0] if ts > 1 else None
        vi = velocities(pipe.runtime, [cfg_img], query, x, t)[0] if (ts > 1 and im > 1) else None
        out = combine_cfg(v, vt, vi, ts, im, sampler.cfg_renorm_min, sampler.cfg_renorm_type).float()
        ref = tensors[f"step{i}_v_t"]
        errors.append(float((out - ref).norm() / ref.norm()))
    return errors


def _check_image_mode(pipe, golden, mode, result, settings, items, size):
    tensors = load_file(golden / "reference" / f"{mode}.safetensors")
    ref_latent = tensors["latent_nchw"]
    rel = float((result.latents[0] - ref_latent).norm() / ref_latent.norm())
    psnr = _psnr(result.images[0], golden / "reference" / f"{mode}.png")
    if rel > 0.03 or psnr < 40:
        errors = _first_divergent_step(pipe, golden, mode, settings, items, size)
        pytest.fail(f"{mode}: latent rel L2 {rel:.4f}, PSNR {psnr:.1f} dB; per-step velocity rel errors {errors}")


def test_understanding_tokens_identical(golden_pipe, golden, reference):
    ref = reference["und"]
    settings = ref["settings"]
    image = Image.open(golden / "reference" / "und_input.png")
    result = golden_pipe.understand([image], settings["prompt"], max_new_tokens=settings["max_think_token_n"] - 1)
    assert [golden_pipe.special.im_start, *result.token_ids] == ref["generated_token_ids"][0]
    assert result.text == ref["text"]


def test_text_to_image_matches(golden_pipe, golden, reference):
    settings = reference["t2i"]["settings"]
    height, width = settings["image_shapes"]
    result = golden_pipe.generate_image(settings["prompt"], width=width, height=height, **_sampler_kwargs(settings))
    _check_image_mode(golden_pipe, golden, "t2i", result, settings, [settings["prompt"]], (width, height))


def test_think_text_to_image_matches(golden_pipe, golden, reference):
    ref = reference["think"]
    settings = ref["settings"]
    height, width = settings["image_shapes"]
    result = golden_pipe.generate_image(settings["prompt"], width=width, height=height, think=True,
                                        max_think_tokens=settings["max_think_token_n"] - 1,
                                        **_sampler_kwargs(settings))
    assert [golden_pipe.special.im_start, *result.token_ids] == ref["generated_token_ids"][0]
    assert result.thinking == ref["text"]
    tensors = load_file(golden / "reference" / "think.safetensors")
    rel = float((result.latents[0] - tensors["latent_nchw"]).norm() / tensors["latent_nchw"].norm())
    assert rel <= 0.03 and _psnr(result.images[0], golden / "reference" / "think.png") >= 40


def test_edit_matches(golden_pipe, golden, reference):
    settings = reference["edit"]["settings"]
    image = Image.open(golden / "reference" / "edit_input.png")
    result = golden_pipe.edit_image([image], settings["prompt"], **_sampler_kwargs(settings))
    _check_image_mode(golden_pipe, golden, "edit", result, settings, [image, settings["prompt"]], result.images[0].size)


def test_context_log_positions_match(golden_pipe, golden, reference):
    """kv length and RoPE position after each prefill, as logged by the official code."""
    ref = reference["edit"]
    image = Image.open(golden / "reference" / "edit_input.png")
    cond = golden_pipe.builder.build([image, ref["settings"]["prompt"]], None, True, torch.Generator())
    gen_log = [entry for entry in ref["context_log"] if entry["kv_len_before"] != 0 or entry["kind"] == "vae"]
    assert (cond.gen.length, cond.gen.rope) == (gen_log[-1]["kv_len_after"], gen_log[-1]["rope_after"])
    img_only = golden_pipe.builder.image_cfg_context(cond)
    assert (img_only.length, img_only.rope) == (ref["context_log"][-1]["kv_len_after"],
                                                ref["context_log"][-1]["rope_after"])
