"""An out-of-memory error while quantizing, probing bitsandbytes or reading a pre-quantized folder stays a
torch.OutOfMemoryError: not "install another bitsandbytes" nor "the file is corrupt"."""
import pytest
import torch

from bagel_model import BagelPipeline
from bagel_model.checkpoint import prequantized as quantized_checkpoint, quantization


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (injected by the test)")


def test_oom_while_quantizing_a_linear_propagates(tiny_checkpoint, monkeypatch):
    real, calls = quantization._nf4_cpu, []

    def quantize_then_run_out(*args):
        calls.append(1)
        return _oom() if len(calls) == 3 else real(*args)  # call 1 is the 64x64 probe

    monkeypatch.setattr(quantization, "_nf4_cpu", quantize_then_run_out)
    with pytest.raises(torch.OutOfMemoryError, match="injected"):
        BagelPipeline.from_pretrained(tiny_checkpoint, precision="nf4", device="cpu", compute_dtype="fp32")
    monkeypatch.undo()
    assert BagelPipeline.from_pretrained(tiny_checkpoint, precision="nf4", device="cpu", compute_dtype="fp32")


def test_oom_in_the_bitsandbytes_probe_propagates(tiny_checkpoint, monkeypatch):
    _, nf4_cls, _ = quantization._linear_classes()
    monkeypatch.setattr(nf4_cls, "forward", _oom)
    with pytest.raises(torch.OutOfMemoryError, match="injected"):
        BagelPipeline.from_pretrained(tiny_checkpoint, precision="nf4", device="cpu")


def test_oom_while_reading_a_prequantized_folder_propagates(pipes, tmp_path, monkeypatch):
    folder = pipes["int8"].save_quantized(tmp_path / "BAGEL-tiny-int8")
    monkeypatch.setattr(quantized_checkpoint, "quantized_linear_from_tensors", _oom)
    with pytest.raises(torch.OutOfMemoryError, match="injected"):
        BagelPipeline.from_pretrained(folder, precision="int8", device="cpu", compute_dtype="fp32")
    monkeypatch.undo()
    assert BagelPipeline.from_pretrained(folder, precision="int8", device="cpu", compute_dtype="fp32")
