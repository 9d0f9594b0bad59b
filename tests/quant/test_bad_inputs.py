"""Broken folders and unusable precisions fail before any weight is read, naming the file and the fix."""
import shutil
import sys

import pytest
import torch

from bagel_model import BagelPipeline
from bagel_model.checkpoint import quantization
from bagel_model.errors import BagelCheckpointError, BagelInputError


@pytest.fixture()
def folder_copy(tiny_checkpoint, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, copy)
    return copy


@pytest.fixture()
def no_quantization_allowed(monkeypatch):
    calls = []
    real = quantization.make_quantized_linear

    def counting(name, *args, **kwargs):
        if name != "probe":
            calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(quantization, "make_quantized_linear", counting)
    return calls


@pytest.mark.parametrize("precision", ["bf16", "nf4"])
def test_truncated_weights(folder_copy, precision, no_quantization_allowed):
    weights = folder_copy / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(BagelCheckpointError, match="ema.safetensors is truncated.*download it again"):
        BagelPipeline.from_pretrained(folder_copy, precision=precision, device="cpu")
    assert no_quantization_allowed == []  # refused before the first tensor


def test_corrupt_header(folder_copy):
    (folder_copy / "ema.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}   ")
    with pytest.raises(BagelCheckpointError, match="ema.safetensors is not a readable safetensors file"):
        BagelPipeline.from_pretrained(folder_copy, precision="int8", device="cpu")


@pytest.mark.parametrize("name", ["ema.safetensors", "ae.safetensors", "llm_config.json"])
def test_missing_file(folder_copy, name, no_quantization_allowed):
    (folder_copy / name).unlink()
    with pytest.raises(BagelCheckpointError, match=name):
        BagelPipeline.from_pretrained(folder_copy, precision="nf4", device="cpu")
    assert no_quantization_allowed == []


def test_missing_bitsandbytes_fails_before_reading(tiny_checkpoint, monkeypatch, no_quantization_allowed):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(BagelInputError, match="pip install bitsandbytes"):
        BagelPipeline.from_pretrained(tiny_checkpoint, precision="nf4", device="cpu")
    assert no_quantization_allowed == []


def test_unknown_precision(tiny_checkpoint):
    with pytest.raises(BagelInputError, match="Unknown precision 'q4'.*bf16, fp16, fp32, nf4, int8"):
        BagelPipeline.from_pretrained(tiny_checkpoint, precision="q4", device="cpu")


def test_device_that_bitsandbytes_cannot_use(tiny_checkpoint, monkeypatch):
    def broken_matmul(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    _, nf4_cls, _ = quantization._linear_classes()
    monkeypatch.setattr(nf4_cls, "forward", lambda self, x: broken_matmul())
    with pytest.raises(BagelInputError, match="cannot run a 48x128 nf4 Linear on cpu.*pip install -U 'bitsandbytes>=0.50'"):
        BagelPipeline.from_pretrained(tiny_checkpoint, precision="nf4", device="cpu")


def test_memory_refusal_names_numbers_and_a_precision_that_fits(tiny_checkpoint):
    from bagel_model.checkpoint.folder import read_config
    from bagel_model.checkpoint.memory import BagelMemoryError, estimate_memory

    config = read_config(tiny_checkpoint)
    estimate = estimate_memory(config, "fp32", "t2i", 512, 512, device="cpu", compute_dtype=torch.float32)
    budget = (estimate.total_by_precision["nf4"] + estimate.total_bytes) // 2
    with pytest.raises(BagelMemoryError, match=r"Not enough memory on cpu: fp32.*GiB.*precision '(bf16|int8|nf4)'"):
        BagelPipeline.from_pretrained(tiny_checkpoint, precision="fp32", device="cpu", compute_dtype="fp32",
                                      available_memory=budget)
