"""FP8 (``float8_e4m3fn``) weights with one fp32 scale per tensor, computed in the compute dtype.

Storage: ``weight`` holds ``round_fp8(w / scale_weight)`` with ``scale_weight = max|w| / 448`` (448 is the
largest finite e4m3fn value), so every weight uses the full fp8 range; ``bias`` stays in bf16. The tensor
names follow ComfyUI's "scaled fp8" checkpoints (``<layer>.weight`` in fp8 + a scalar ``<layer>.scale_weight``).

Compute: there is no fp8 matmul on CPUs or on most consumer GPUs, so the layer *casts at use*: each call copies
the fp8 weight to the input's device, converts it to the compute dtype and multiplies by the scale there (one
weight-sized temporary in the compute dtype, the same as the bf16 ``ops.Linear`` cast). Because the cast goes
to the input's device, the layer runs wherever its weight lives: a memory manager may keep it on the host and
only the fp8 bytes cross the bus. Plain torch: no extra package, works on any device torch supports.

Which Linears: the same policy as NF4/INT8 (``quantization.should_quantize``): the decoder Linears of both
experts and the SigLIP encoder Linears (92 % of the parameters); ``lm_head``, the connector, the time
embedder, ``vae2llm``/``llm2vae`` and the ViT patch Linear keep bf16 for the reasons in docs/quantization.md.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..model.ops import CastAtUse

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# Rows quantized at once: the fp32 temporaries stay ~4 M values (16 MB) whatever the weight's size.
_CHUNK_VALUES = 1 << 22


def fp8_scale(weight: torch.Tensor) -> torch.Tensor:
    """The fp32 scalar that maps ``max|weight|`` to the largest finite fp8 value (1 for an all-zero weight)."""
    rows = max(1, _CHUNK_VALUES // max(1, weight.shape[-1]))
    amax = torch.zeros((), dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], rows):
        amax = torch.maximum(amax, weight[start:start + rows].abs().amax().float())
    return torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fp8 weight, fp32 scale)`` of a 2-D weight, on the weight's device, quantized rows at a time."""
    scale = fp8_scale(weight)
    out = torch.empty(weight.shape, dtype=FP8_DTYPE, device=weight.device)
    rows = max(1, _CHUNK_VALUES // max(1, weight.shape[-1]))
    for start in range(0, weight.shape[0], rows):
        chunk = weight[start:start + rows].float() / scale
        out[start:start + rows] = chunk.clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return out, scale


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    """``weight * scale`` in ``dtype`` on ``device``: the fp8 bytes move, then one conversion (exact: every
    e4m3fn value is a bf16/fp16/fp32 value) and one in-place multiply by the scale rounded to ``dtype``, so
    there is a single weight-sized temporary."""
    values = weight.to(device=device).to(dtype)
    return values.mul_(scale.to(device=device, dtype=dtype))


class Fp8Linear(CastAtUse, nn.Module):
    """Linear with an fp8 weight and a per-tensor scale; the ``ops.Linear`` contract (input cast to
    ``compute_dtype``, output in it) and a cast at use to the input's device (``ops.CastAtUse``: a host
    application may route ``cast_weights`` through its own transfer code; the scale is applied after it)."""

    compute_dtype: torch.dtype = torch.float32

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device),
                                   requires_grad=False)
        self.scale_weight = nn.Parameter(torch.ones((), dtype=torch.float32, device=device), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=torch.bfloat16, device=device),
                                 requires_grad=False) if bias else None

    @contextmanager
    def scaled_weights(self, x: torch.Tensor):
        """Weight ``* scale_weight`` and bias in the compute dtype on ``x``'s device, valid inside the
        ``with`` block (the host's cast copies are released when it ends)."""
        dtype = self.compute_dtype
        with self.use_weights(x, dtype) as (weight, bias):
            scale = self.fetch("scale_weight", x.device, dtype)
            # The fp8 -> compute-dtype conversion made a new tensor: scale it in place (one temporary, not two).
            stored = self.stored("weight")
            yield (weight.mul_(scale) if weight.data_ptr() != stored.data_ptr() else weight * scale), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.scaled_weights(x) as (weight, bias):
            return nn.functional.linear(x.to(self.compute_dtype), weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, fp8=e4m3fn"


def fill_fp8_linear(module: Fp8Linear, weight: torch.Tensor, scale: torch.Tensor,
                    bias: torch.Tensor | None) -> Fp8Linear:
    """Assigns stored tensors (fp8 weight, fp32 scale, bias) to a layer, keeping their device."""
    module.weight = nn.Parameter(weight, requires_grad=False)
    module.scale_weight = nn.Parameter(scale.to(torch.float32).reshape(()), requires_grad=False)
    module.bias = None if bias is None else nn.Parameter(bias.to(torch.bfloat16), requires_grad=False)
    return module.eval()


def make_fp8_linear(weight: torch.Tensor, bias: torch.Tensor | None, compute_dtype: torch.dtype,
                    layer_class: type[Fp8Linear] = Fp8Linear) -> Fp8Linear:
    """Quantizes one Linear's (weight, bias) where ``weight`` lives and returns the fp8 layer.

    ``layer_class`` lets the caller pick a subclass (the ComfyUI nodes inject a castable one).
    """
    out_features, in_features = weight.shape
    module = layer_class(in_features, out_features, bias=bias is not None, device="meta")
    module.compute_dtype = compute_dtype
    values, scale = quantize_fp8(weight)
    return fill_fp8_linear(module, values, scale, bias)


def is_fp8_linear(module: nn.Module) -> bool:
    return isinstance(module, Fp8Linear)


def fp8_linear_tensors(module: Fp8Linear) -> dict[str, torch.Tensor]:
    """Stored form of one layer, keys relative to the module (``weight``, ``scale_weight``, ``bias``)."""
    tensors = {"weight": module.weight.data, "scale_weight": module.scale_weight.data}
    if module.bias is not None:
        tensors["bias"] = module.bias.data
    return tensors
