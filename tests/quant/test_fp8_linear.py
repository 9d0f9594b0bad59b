"""FP8 Linears: real 1-byte storage with a per-tensor scale, the ops.Linear dtype contract, a cast at use to
the input's device, chunked quantization equal to one-shot, exact serialisation."""
import pytest
import torch

from bagel_model.checkpoint import fp8
from bagel_model.model.ops import set_compute_dtype
from bagel_model.checkpoint.prequantized import quantized_linear_from_tensors, quantized_linear_tensors


def _weights(out_f=96, in_f=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(out_f, in_f, generator=gen) * 0.05).to(torch.bfloat16)
    b = (torch.randn(out_f, generator=gen) * 0.05).to(torch.bfloat16)
    return w, b


def test_storage_is_one_byte_per_value_with_a_scale_mapping_the_max_to_448():
    w, b = _weights()
    module = fp8.make_fp8_linear(w, b, torch.float32)
    assert module.weight.dtype == torch.float8_e4m3fn and module.weight.shape == w.shape
    assert module.scale_weight.dtype == torch.float32 and module.scale_weight.shape == ()
    assert module.bias.dtype == torch.bfloat16
    assert module.weight.float().abs().max().item() == fp8.FP8_MAX  # the full fp8 range is used
    assert torch.allclose(module.scale_weight, w.float().abs().max() / 448)


def test_dequantized_weight_is_within_fp8_rounding():
    w, _ = _weights()
    values, scale = fp8.quantize_fp8(w)
    restored = fp8.dequantize_fp8(values, scale, torch.float32, torch.device("cpu"))
    # e4m3 keeps 3 mantissa bits: relative rounding error <= 2^-4 for normal values (|x| >= 2^-6 * scale);
    # subnormals have an absolute error <= 2^-10 * scale.
    error = (restored - w.float()).abs()
    assert (error <= torch.maximum(w.float().abs() / 16, scale * 2 ** -10) + 1e-12).all()


def test_all_zero_weight_has_scale_one():
    values, scale = fp8.quantize_fp8(torch.zeros(4, 8, dtype=torch.bfloat16))
    assert scale.item() == 1.0 and values.float().abs().max().item() == 0


def test_chunked_quantization_equals_one_shot(monkeypatch):
    w, _ = _weights(257, 64)
    whole_values, whole_scale = fp8.quantize_fp8(w)
    monkeypatch.setattr(fp8, "_CHUNK_VALUES", 64 * 5)  # 5 rows at a time, last chunk partial
    values, scale = fp8.quantize_fp8(w)
    assert torch.equal(scale, whole_scale)
    assert torch.equal(values.view(torch.uint8), whole_values.view(torch.uint8))


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compute_dtype_contract_and_accuracy(compute_dtype):
    w, b = _weights()
    module = fp8.make_fp8_linear(w, b, torch.float32)
    set_compute_dtype(torch.nn.ModuleList([module]), compute_dtype)
    x = torch.randn(7, 128, generator=torch.Generator().manual_seed(1))
    out = module(x.to(torch.bfloat16))  # input dtype differs from compute dtype on purpose
    assert out.dtype == compute_dtype
    expected = torch.nn.functional.linear(
        x.to(torch.bfloat16).to(compute_dtype),
        fp8.dequantize_fp8(module.weight, module.scale_weight, compute_dtype, torch.device("cpu")),
        b.to(compute_dtype))
    assert torch.equal(out, expected)  # exactly the documented cast-at-use computation
    ref = torch.nn.functional.linear(x.to(torch.bfloat16).float(), w.float(), b.float())
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 0.05, rel  # measured ~0.02 on this data (fp8 rounding of the weight)


def test_cast_follows_the_input_device():
    w, b = _weights()
    module = fp8.make_fp8_linear(w, b, torch.float32)
    x = torch.randn(3, 128)
    with module.scaled_weights(x) as (weight, bias):
        pass
    assert weight.device == x.device and weight.dtype == torch.float32 and bias.dtype == torch.float32
    assert module.weight.dtype == torch.float8_e4m3fn  # the stored weight is never converted in place


def test_serialised_layer_is_bit_identical():
    w, b = _weights(64, 256, seed=3)
    original = fp8.make_fp8_linear(w, b, torch.float32)
    tensors = {k: v.clone() for k, v in quantized_linear_tensors(original).items()}
    assert set(tensors) == {"weight", "scale_weight", "bias"}
    rebuilt = quantized_linear_from_tensors("x", tensors, torch.device("cpu"), torch.float32)
    assert type(rebuilt) is type(original)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    assert torch.equal(rebuilt(x), original(x))
