"""Small numeric building blocks shared by every BAGEL module.

The official inference runs under CUDA bf16 autocast: every Linear computes and returns bf16 while norms and
softmax run in fp32. We make those casts explicit, keyed on one *compute dtype*, so the same code gives the
official rounding in bf16 and plain fp32/fp16 arithmetic otherwise, on any device, without autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    """nn.Linear whose input and weight are cast to ``compute_dtype``; the output has ``compute_dtype``.

    ``compute_dtype`` is set on every Linear of a model by ``set_compute_dtype``; quantized replacements
    (bitsandbytes) honour the same contract.
    """

    compute_dtype: torch.dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), self.weight.to(dtype), bias)


def set_compute_dtype(module: nn.Module, dtype: torch.dtype) -> None:
    """Sets the compute dtype on every submodule that has one (Linear layers, attention, the LM)."""
    for sub in module.modules():
        if hasattr(sub, "compute_dtype"):
            sub.compute_dtype = dtype


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2 RMSNorm: normalise in fp32, round back to the input dtype, then scale (dtype promotes)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight.to(x.dtype), self.eps)


def reduces_in_fp32(x: torch.Tensor) -> bool:
    """Whether the official code's autocast runs LayerNorm / vector norms of ``x`` in fp32.

    CUDA autocast promotes them to fp32; CPU autocast keeps the input dtype. Mirroring both keeps our results
    closest to the official implementation on each device type (identical when computing in fp32).
    """
    return x.device.type != "cpu"


class LayerNorm(nn.LayerNorm):
    """SigLIP LayerNorm with the official autocast dtype: fp32 result on GPUs, input dtype on CPUs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if reduces_in_fp32(x) else x.dtype
        return F.layer_norm(x.to(dtype), self.normalized_shape, self.weight.to(dtype), self.bias.to(dtype),
                            self.eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")
