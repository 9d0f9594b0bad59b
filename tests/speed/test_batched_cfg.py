"""Batched CFG runs all branches of a step in one LM call; every result must equal the one-branch-at-a-time path.

In bf16 (the parity dtype) the results are bit-identical on this CPU, so those checks are exact. In fp32 a GEMM
over very few rows may take another kernel and reorder sums: the marker rows of all branches go through one
und-expert call (6 rows batched for edit, 2 per call one branch at a time), which on this CPU (2-core AMD EPYC,
AVX512-BF16) gives fp32 velocities within 1.5e-7 relative (7.2e-7 max abs) and 4-step edit latents within
1.2e-6 relative of the one-at-a-time path; fp32 results are compared within float-reordering tolerance.
"""
import pytest
import torch
from PIL import Image

from bagel_model.generation.batched_cfg import velocities

RED = Image.new("RGB", (64, 48), (200, 30, 30))


def _assert_same(a, b, pipe, tolerance=1e-5):
    if pipe.compute_dtype == torch.bfloat16:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


# A whole generation compounds one step's float reordering over its steps: on a 2-core AVX2 EPYC (no AVX512) one
# latent element of 88 064 differed by 1.03e-5 after the edit's steps; a real change of arithmetic moves them by
# orders of magnitude more.
MULTI_STEP_TOLERANCE = 5e-5


def _edit_contexts(pipe):
    cond = pipe.builder.build([RED, "make it blue"], None, True, torch.Generator().manual_seed(3))
    return [cond.gen, cond.cfg_text, pipe.builder.image_cfg_context(cond)]


def test_batched_velocities_equal_sequential_for_three_different_contexts(speed_pipe):
    contexts = _edit_contexts(speed_pipe)
    assert len({(c.length, c.rope) for c in contexts}) == 3  # three different KV lengths and RoPE positions
    query = speed_pipe.runtime.generation_query(48, 64)
    x = torch.randn(query.num_tokens, speed_pipe.config.patch_latent_dim, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(0.63)
    sequential = [velocities(speed_pipe.runtime, [ctx], query, x, t)[0] for ctx in contexts]
    batched = velocities(speed_pipe.runtime, contexts, query, x, t)
    for one, many in zip(sequential, batched):
        _assert_same(one, many, speed_pipe)
    assert not torch.equal(batched[0], batched[1])  # each branch really saw its own context


def test_generate_and_edit_results_equal_with_and_without_batching(speed_pipe):
    args = dict(width=48, height=32, steps=5, seed=4, cfg_img_scale=1.5)  # cfg_img == gen here: reused branch
    on = speed_pipe.generate_image("a red cube", batch_cfg=True, **args)
    off = speed_pipe.generate_image("a red cube", batch_cfg=False, **args)
    _assert_same(on.latents[0], off.latents[0], speed_pipe, MULTI_STEP_TOLERANCE)
    edit_on = speed_pipe.edit_image([RED], "make it blue", steps=4, seed=2, batch_cfg=True)
    edit_off = speed_pipe.edit_image([RED], "make it blue", steps=4, seed=2, batch_cfg=False)
    _assert_same(edit_on.latents[0], edit_off.latents[0], speed_pipe, MULTI_STEP_TOLERANCE)


def test_batched_call_leaves_contexts_unchanged(fp32_pipe):
    contexts = _edit_contexts(fp32_pipe)
    before = [(c.length, c.rope, c.cache.length, c.cache.keys(0, c.length).clone()) for c in contexts]
    query = fp32_pipe.runtime.generation_query(32, 32)
    velocities(fp32_pipe.runtime, contexts, query, torch.randn(query.num_tokens, 64), torch.tensor(0.5))
    for ctx, (length, rope, cache_length, keys) in zip(contexts, before):
        assert (ctx.length, ctx.rope, ctx.cache.length) == (length, rope, cache_length)
        assert torch.equal(ctx.cache.keys(0, ctx.length), keys)


@pytest.fixture
def batch_choices(monkeypatch) -> list:
    """The batch_cfg value each denoise call received, in order."""
    from bagel_model.generation import branch_velocities

    seen = []
    original = branch_velocities.BranchVelocities.__init__

    def spy(self, runtime, query, batch_cfg, step_cache, **kwargs):
        seen.append(batch_cfg)
        original(self, runtime, query, batch_cfg, step_cache, **kwargs)

    monkeypatch.setattr(branch_velocities.BranchVelocities, "__init__", spy)
    return seen


def test_batch_cfg_auto_is_on_for_cuda_and_off_for_cpu(batch_choices, speed_pipe):
    from bagel_model import devices
    from bagel_model.config import BagelConfig
    from bagel_model.checkpoint.memory import estimate_memory

    assert devices.resolve_batch_cfg(None, "cuda:0") is True
    assert devices.resolve_batch_cfg(None, "cpu") is False
    assert devices.resolve_batch_cfg(True, "cpu") is True and devices.resolve_batch_cfg(False, "cuda") is False
    speed_pipe.generate_image("a red cube", width=32, height=32, steps=2)
    speed_pipe.generate_image("a red cube", width=32, height=32, steps=2, batch_cfg=True)
    assert batch_choices == [False, True]  # the pipeline runs on the CPU here
    # The memory estimate follows the same default: batched branches multiply the decoder activations.
    config = BagelConfig()
    gpu = estimate_memory(config, "nf4", "t2i", 1024, 1024, device="cuda", compute_dtype=torch.bfloat16)
    gpu_sequential = estimate_memory(config, "nf4", "t2i", 1024, 1024, device="cuda",
                                     compute_dtype=torch.bfloat16, batch_cfg=False)
    cpu = estimate_memory(config, "nf4", "t2i", 1024, 1024, device="cpu", compute_dtype=torch.bfloat16)
    assert gpu.details["peaks"]["lm_layer"] > gpu_sequential.details["peaks"]["lm_layer"]
    assert cpu.details["peaks"]["lm_layer"] == gpu_sequential.details["peaks"]["lm_layer"]


def test_batch_cfg_fits_compares_stacked_activations_with_free_memory():
    from bagel_model.config import BagelConfig
    from bagel_model.checkpoint.memory import batch_cfg_fits

    config = BagelConfig()  # real dims: 1024² edit, ~6.7k-token context: ~1.03 GiB per branch and layer
    args = (config, "cuda", 4098, 6700)
    free = int(2.5 * 2 ** 30)
    assert batch_cfg_fits(*args, branches=1, compute_dtype=torch.bfloat16, free_bytes=0)
    assert batch_cfg_fits(*args, branches=2, compute_dtype=torch.bfloat16, free_bytes=free)
    assert not batch_cfg_fits(*args, branches=3, compute_dtype=torch.bfloat16, free_bytes=free)
    assert batch_cfg_fits(*args, branches=3, compute_dtype=torch.bfloat16, free_bytes=4 * free)


def test_automatic_batching_falls_back_when_memory_is_short(monkeypatch, batch_choices, speed_pipe):
    """On a GPU 'auto' batches, unless the stacked call would not fit now; an explicit True always batches."""
    from bagel_model import pipeline

    monkeypatch.setattr(pipeline, "resolve_batch_cfg", lambda requested, device: True if requested is None
                        else bool(requested))  # as on CUDA
    fits = []
    monkeypatch.setattr(pipeline, "batch_cfg_fits", lambda *args, **kwargs: fits[-1])
    for room in (True, False):
        fits.append(room)
        speed_pipe.edit_image([RED], "make it blue", steps=2, seed=2)
    speed_pipe.edit_image([RED], "make it blue", steps=2, seed=2, batch_cfg=True)
    assert batch_choices == [True, False, True]
