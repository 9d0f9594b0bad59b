"""Step cache: its state lives inside one call, it skips decoder layers on cached steps, and it stays close to
the uncached result."""
import pytest
import torch

from bagel_model import cli
from bagel_model.errors import BagelInputError
from bagel_model.generation.sampler import SamplerSettings, schedule
from bagel_model.generation.step_cache import StepCache, StepCacheSettings, resolve_step_cache

ARGS = dict(width=64, height=64, steps=20, seed=5)


def _expected_full_calls(calls: int, warmup: int, interval: int) -> int:
    """Full calls of one branch: the warm-up, then every interval-th call (written out, not the code's formula)."""
    full, since_full = 0, 0
    for call in range(calls):
        if call < warmup or since_full == interval - 1:
            full, since_full = full + 1, 0
        else:
            since_full += 1
    return full


def test_cached_call_does_not_change_the_next_uncached_call(fp32_pipe):
    alone = fp32_pipe.generate_image("a blue bird", **ARGS)
    fp32_pipe.generate_image("a blue bird", step_cache="taylor", **ARGS)
    fp32_pipe.edit_image([alone.images[0]], "make it red", steps=12, step_cache="taylor", seed=1)
    after = fp32_pipe.generate_image("a blue bird", **ARGS)
    assert torch.equal(alone.latents[0], after.latents[0])


def test_cached_result_is_close_to_uncached(speed_pipe):
    # Measured on the tiny preset (64x64, 20 timesteps, defaults warmup 5 / interval 3 / order 2): relative L2
    # of the final latent 0.023 (fp32) / 0.025 (bf16); order 0 (plain reuse) 0.045; freezing the output after
    # the warm-up (interval 20, order 0) 0.25, which this bound rejects.
    base = speed_pipe.generate_image("a blue bird", **ARGS).latents[0]
    cached = speed_pipe.generate_image("a blue bird", step_cache="taylor", **ARGS).latents[0]
    rel = float((cached - base).norm() / base.norm())
    assert 0 < rel < 0.05


@pytest.mark.parametrize("batch_cfg", [False, True])
def test_cached_steps_skip_the_decoder_layers(fp32_pipe, batch_cfg):
    calls = []
    hook = fp32_pipe.model.bagel.lm.layers[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        fp32_pipe.generate_image("a blue bird", batch_cfg=False, **ARGS)
        uncached = len(calls)
        calls.clear()
        fp32_pipe.generate_image("a blue bird", step_cache="taylor", batch_cfg=batch_cfg, **ARGS)
        cached = len(calls)
    finally:
        hook.remove()
    times = schedule(ARGS["steps"], 3.0)[0]
    text_calls = sum(SamplerSettings().scales_at(t)[0] > 1 for t in times)
    prefills = 1  # the prompt prefill of gen (cfg_text is empty, no image context)
    assert uncached == prefills + len(times) + text_calls
    gen_full, text_full = _expected_full_calls(len(times), 5, 3), _expected_full_calls(text_calls, 5, 3)
    # Batched: a full step of both branches is one layer call; the branches share their schedule while both run.
    expected = prefills + (gen_full if batch_cfg else gen_full + text_full)
    assert cached == expected < uncached


def test_polynomial_features_are_extrapolated_exactly():
    cache = StepCache(StepCacheSettings(order=2))
    feature = lambda t: torch.tensor([1.0, -2.0]) + t * torch.tensor([0.5, 3.0]) - t * t * torch.tensor([2.0, 1.0])
    for t in (1.0, 0.93, 0.81):  # uneven spacing, like the shifted schedule
        cache.record(torch.tensor(t), feature(t))
    torch.testing.assert_close(cache.predict(torch.tensor(0.6)), feature(0.6), rtol=1e-5, atol=1e-5)


def test_settings_are_validated_and_resolved():
    assert resolve_step_cache(None) is None and resolve_step_cache("off") is None
    assert resolve_step_cache("taylor") == StepCacheSettings()
    assert resolve_step_cache({"interval": 2}).interval == 2
    for bad in ("teacache", {"interval": 0}, {"order": 7}, {"warmup": 0}):
        with pytest.raises(BagelInputError):
            resolve_step_cache(bad)


def test_cli_step_cache_flags_match_the_api(fp32_pipe, speed_checkpoint, tmp_path):
    from safetensors.torch import load_file

    argv = ["generate", "--model", str(speed_checkpoint), "--compute-dtype", "fp32", "--device", "cpu",
            "--prompt", "a blue bird", "--width", "64", "--height", "64", "--steps", "12", "--seed", "5",
            "--step-cache", "taylor", "--step-cache-warmup", "3", "--step-cache-interval", "2",
            "--step-cache-order", "1", "--batch-cfg", "off", "--out", str(tmp_path / "x.png"),
            "--save-latent", str(tmp_path / "x.safetensors")]
    assert cli.main(argv) == 0
    api = fp32_pipe.generate_image("a blue bird", width=64, height=64, steps=12, seed=5, batch_cfg=False,
                                   step_cache=StepCacheSettings(warmup=3, interval=2, order=1))
    assert torch.equal(load_file(tmp_path / "x.safetensors")["latent"], api.latents[0])
