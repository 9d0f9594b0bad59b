"""bitsandbytes NF4/INT8 Linears: real 4-/8-bit storage, the ops.Linear dtype contract, exact serialisation."""
import sys

import pytest
import torch

from bagel_model.checkpoint import quantization as q
from bagel_model.errors import BagelInputError
from bagel_model.checkpoint.prequantized import quantized_linear_from_tensors, quantized_linear_tensors

from quant_helpers import require_bitsandbytes  # noqa: E402

require_bitsandbytes()


def _weights(out_f=96, in_f=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(out_f, in_f, generator=gen) * 0.05).to(torch.bfloat16)
    b = (torch.randn(out_f, generator=gen) * 0.05).to(torch.bfloat16)
    return w, b


@pytest.mark.parametrize("precision,bits", [("nf4", 4), ("int8", 8)])
def test_weight_really_holds_low_bit_data(precision, bits):
    w, b = _weights()
    module = q.make_quantized_linear("x", w, b, precision, "cpu", torch.float32)
    data = module.weight.data
    assert data.dtype == (torch.uint8 if precision == "nf4" else torch.int8)
    assert data.numel() * 8 == w.numel() * bits  # 4 bits (two values per byte) or 8 bits per weight
    if precision == "nf4":
        assert module.absmax.numel() == w.numel() // q.NF4_BLOCKSIZE
    else:
        assert module.SCB.shape == (w.shape[0],)


@pytest.mark.parametrize("precision", ["nf4", "int8"])
@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compute_dtype_contract_and_accuracy(precision, compute_dtype):
    w, b = _weights()
    module = q.make_quantized_linear("x", w, b, precision, "cpu", compute_dtype)
    x = torch.randn(7, 128, generator=torch.Generator().manual_seed(1))
    out = module(x.to(torch.bfloat16))  # input dtype differs from compute dtype on purpose
    assert out.dtype == compute_dtype
    ref = torch.nn.functional.linear(x.to(torch.bfloat16).float(), w.float(), b.float())
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    # Measured on this data: nf4 ~0.09, int8 ~0.005 relative error (bounds leave ~2x headroom).
    assert rel < (0.2 if precision == "nf4" else 0.02), rel
    assert module.bias.dtype == torch.bfloat16  # never converted in place by the forward


def test_set_compute_dtype_reaches_quantized_linears():
    from bagel_model.model.ops import set_compute_dtype

    w, b = _weights()
    container = torch.nn.ModuleDict({p: q.make_quantized_linear("x", w, b, p, "cpu", torch.float32)
                                     for p in ("nf4", "int8")})
    set_compute_dtype(container, torch.bfloat16)
    for module in container.values():
        assert module(torch.randn(2, 128)).dtype == torch.bfloat16


@pytest.mark.parametrize("precision", ["nf4", "int8"])
def test_serialised_linear_is_bit_identical(precision):
    w, b = _weights(64, 256, seed=3)
    original = q.make_quantized_linear("x", w, b, precision, "cpu", torch.float32)
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(2))
    before = original(x)  # a forward first: INT8 moves its scales into the matmul state
    tensors = {k: v.clone() for k, v in quantized_linear_tensors(original).items()}
    rebuilt = quantized_linear_from_tensors("x", tensors, torch.device("cpu"), torch.float32)
    assert type(rebuilt) is type(original)
    assert torch.equal(rebuilt.weight.data, original.weight.data)
    assert torch.equal(rebuilt(x), before)


def test_missing_bitsandbytes_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` raise ImportError
    with pytest.raises(BagelInputError, match="pip install bitsandbytes"):
        q.import_bitsandbytes("nf4")


def test_too_old_bitsandbytes_is_refused(monkeypatch):
    import bitsandbytes

    for old in ("0.42.0", "0.48.2", "0.49.2"):  # 0.48/0.49: NF4 weights read transposed on the CPU
        monkeypatch.setattr(bitsandbytes, "__version__", old)
        with pytest.raises(BagelInputError, match=">= 0.50"):
            q.import_bitsandbytes("int8")


def test_policy_choices():
    assert q.should_quantize("language_model.model.layers.0.self_attn.q_proj", "nf4")
    assert q.should_quantize("language_model.model.layers.27.mlp_moe_gen.down_proj", "int8")
    assert q.should_quantize("vit_model.vision_model.encoder.layers.3.mlp.fc1", "nf4")
    for kept in ("language_model.lm_head", "connector.fc1", "time_embedder.mlp.0", "vae2llm", "llm2vae",
                 "vit_model.vision_model.embeddings.patch_embedding"):
        assert not q.should_quantize(kept, "nf4")
        assert q.should_quantize(kept, "nf4", policy="all-linear")
    assert not q.should_quantize("language_model.model.layers.0.self_attn.q_proj", "bf16")
    with pytest.raises(BagelInputError, match="Unknown precision"):
        q.check_precision("int4")


def test_probe_runs_on_cpu():
    for precision in q.BITSANDBYTES_PRECISIONS:
        q.probe_device(precision, "cpu", torch.float32)
    assert q.PROBE_SHAPE[0] != q.PROBE_SHAPE[1]  # a square probe hides a transposed weight


def _transposed_matmul_4bit(real, square_only: bool):
    """bitsandbytes 0.48/0.49's CPU NF4 behaviour: the dequantized weight is used in (in, out) orientation, which
    raises a shape error on a non-square layer; ``square_only`` fakes a build that survives that (garbage values
    of the right shape) to check the numeric check too."""
    import bitsandbytes

    def matmul_4bit(x, packed, bias=None, quant_state=None):
        weight = bitsandbytes.functional.dequantize_4bit(packed, quant_state).to(x.dtype)
        out_features, in_features = weight.shape
        wrong = weight.reshape(in_features, out_features)
        if square_only:
            return (x @ wrong[:, :out_features].roll(1, dims=0))
        return x @ wrong.T
    return matmul_4bit


@pytest.mark.parametrize("square_only", [False, True])
def test_probe_refuses_a_build_with_transposed_nf4_weights(monkeypatch, square_only):
    import bitsandbytes

    monkeypatch.setattr(bitsandbytes, "matmul_4bit", _transposed_matmul_4bit(bitsandbytes.matmul_4bit, square_only))
    with pytest.raises(BagelInputError, match="bitsandbytes .*(cannot run|wrong nf4).*>=0.50"):
        q.probe_device("nf4", "cpu", torch.float32)
    q.probe_device("int8", "cpu", torch.float32)  # INT8 untouched: still accepted
