"""precision="auto": the documented rule picks as stated for injected device sizes, a pre-quantized folder
keeps its own precision, and the core loader resolves auto from the memory it is given."""
import logging

import pytest

from bagel_model import BagelPipeline
from bagel_model.checkpoint.auto_precision import (MAX_STREAMED_FRACTION, DeviceMemory, choose_precision,
                                        evaluate_precision)
from bagel_model.checkpoint.folder import read_config
from bagel_model.config import BagelConfig
from bagel_model.checkpoint.memory import GiB, estimate_memory

REAL = BagelConfig()
RESERVE = int(1.2 * GiB)  # about ComfyUI's minimum inference memory + reserve on Linux


def _card(gib: float, streaming: bool = True, host: int | None = None) -> DeviceMemory:
    # What torch reports as total memory is ~0.4 GiB below the nominal size of the card.
    return DeviceMemory(int((gib - 0.4) * GiB), RESERVE, streaming, host)


@pytest.mark.parametrize("card,expected,verdict", [
    (80, "bf16", "fits"),  # A100/H100 80 GB
    (32, "bf16", "fits"),  # RTX 5090: 27.5 GiB of weights + 1.9 GiB working set + reserve
    (24, "bf16", "streams"),  # RTX 3090/4090: about 7 GiB streamed per step (26 %)
    (16, "fp8_e4m3fn", "streams"),  # bf16 would stream 56 %; fp8 streams ~3 GiB
    (12, "fp8_e4m3fn", "streams"),  # fp8 streams ~5.5 GiB (37 %)
])
def test_picks_for_common_cards(card, expected, verdict):
    choice = choose_precision(REAL, _card(card))
    assert choice.precision == expected, choice.reason
    picked = next(o for o in choice.options if o.precision == expected)
    assert picked.verdict == verdict and choice.streams == (verdict == "streams")
    assert [o.precision for o in choice.options] == ["bf16", "fp8_e4m3fn", "int8", "nf4"]


def test_nothing_acceptable_falls_back_to_the_smallest():
    choice = choose_precision(REAL, _card(8))
    assert choice.precision == "nf4" and "smallest" in choice.reason
    assert not any(o.acceptable for o in choice.options)
    assert choice.streams and "over the limit" in choice.reason  # slow, but the only way it runs
    no_bnb_streaming = choose_precision(REAL, _card(8), streamable={"bf16", "fp8_e4m3fn"})
    assert no_bnb_streaming.precision == "nf4" and not no_bnb_streaming.streams


def test_without_streaming_only_what_fits_entirely():
    choice = choose_precision(REAL, _card(24, streaming=False))
    assert choice.precision == "fp8_e4m3fn" and "fit entirely" in choice.reason
    assert choice.options[0].verdict.startswith("does not fit (no streaming")


def test_host_memory_bounds_the_streamed_part():
    choice = choose_precision(REAL, _card(24, host=4 * GiB))
    assert choice.precision == "fp8_e4m3fn"
    assert "host" in choice.options[0].verdict


def test_precisions_that_cannot_stream_are_skipped():
    # int8 is not in the streamable set here: at 12 GB it neither fits nor streams.
    option = evaluate_precision(REAL, "int8", _card(12), device="cuda", compute_dtype=None,
                                streamable={"bf16", "fp8_e4m3fn"})
    assert option.verdict == "does not fit and its layers cannot be streamed here"


def test_candidates_without_bitsandbytes():
    choice = choose_precision(REAL, _card(8), candidates=("bf16", "fp8_e4m3fn"))
    assert choice.precision == "fp8_e4m3fn" and "smallest" in choice.reason and choice.streams


def test_the_half_resident_boundary():
    estimate = estimate_memory(REAL, "bf16", "t2i", 1024, 1024)
    working = estimate.kv_cache_bytes + estimate.activation_bytes
    half = estimate.weights_bytes - int(MAX_STREAMED_FRACTION * estimate.weights_bytes)
    at_limit = DeviceMemory(half + working + RESERVE, RESERVE, streaming=True)
    assert choose_precision(REAL, at_limit, candidates=("bf16",)).options[0].verdict == "streams"
    below = DeviceMemory(half + working + RESERVE - 1024 ** 2, RESERVE, streaming=True)
    assert choose_precision(REAL, below, candidates=("bf16", "fp8_e4m3fn")).precision == "fp8_e4m3fn"


def test_prequantized_folder_wins():
    choice = choose_precision(REAL, _card(80), prequantized="nf4")
    assert choice.precision == "nf4" and "pre-quantized" in choice.reason


def test_core_loader_resolves_auto_from_the_budget(tiny_checkpoint, caplog):
    config = read_config(tiny_checkpoint)
    fp8 = estimate_memory(config, "fp8_e4m3fn", "t2i", 1024, 1024, device="cpu")
    bf16 = estimate_memory(config, "bf16", "t2i", 1024, 1024, device="cpu")
    assert fp8.total_bytes < bf16.total_bytes
    with caplog.at_level(logging.INFO, logger="bagel_model.checkpoint.auto_precision"):
        roomy = BagelPipeline.from_pretrained(tiny_checkpoint, precision="auto", device="cpu",
                                              compute_dtype="fp32", available_memory=bf16.total_bytes)
        tight = BagelPipeline.from_pretrained(tiny_checkpoint, precision="auto", device="cpu",
                                              compute_dtype="fp32", available_memory=bf16.total_bytes - 1)
    assert roomy.precision == "bf16" and tight.precision == "fp8_e4m3fn"
    assert "precision auto" in caplog.text and "fit entirely" in caplog.text


def test_core_loader_keeps_a_prequantized_folder(pipes, tmp_path):
    out = pipes["fp8_e4m3fn"].save_quantized(tmp_path / "pre-fp8")
    loaded = BagelPipeline.from_pretrained(out, precision="auto", device="cpu", compute_dtype="fp32")
    assert loaded.precision == "fp8_e4m3fn"
