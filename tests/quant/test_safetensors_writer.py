import pytest
import torch
from safetensors import safe_open

from bagel_model.checkpoint.safetensors_header import read_header
from bagel_model.checkpoint.safetensors_writer import write_safetensors


def test_round_trip_every_dtype(tmp_path):
    tensors = [("a.bf16", torch.randn(3, 5).to(torch.bfloat16)), ("b.u8", torch.arange(7, dtype=torch.uint8)),
               ("c.i8", torch.tensor([[-3, 4]], dtype=torch.int8)), ("d.f32", torch.randn(4)),
               ("e.scalar", torch.tensor(3, dtype=torch.uint8)), ("f.f16", torch.randn(2, 2).half())]
    path = tmp_path / "x.safetensors"
    size = write_safetensors(path, tensors, metadata={"k": "v"})
    assert size == path.stat().st_size
    read_header(path)  # our own truncation check accepts it
    with safe_open(str(path), framework="pt") as reader:
        assert reader.metadata() == {"k": "v"}
        for name, tensor in tensors:
            assert torch.equal(reader.get_tensor(name), tensor), name
    assert not list(tmp_path.glob("*.partial"))


def test_failure_leaves_no_file(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="dtype"):
        write_safetensors(path, [("ok", torch.zeros(2)), ("bad", torch.zeros(2, dtype=torch.complex64))])
    assert not path.exists() and not list(tmp_path.iterdir())
