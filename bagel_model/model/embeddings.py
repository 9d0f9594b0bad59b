"""Position and timestep embeddings: 2-D sin-cos tables, grid position ids, the timestep MLP, 1-D RoPE.

The stored position tables are ``ops.PositionTable`` layers; the timestep features and RoPE cos/sin are computed
per call on the input's device (no buffers that a memory manager would have to move)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .ops import TorchOps


def sincos_1d(width: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE/DiT 1-D table: sin features first, then cos, frequencies 10000^(-k/(width/2)) (float64)."""
    omega = torch.arange(width // 2, dtype=torch.float64) / (width / 2.0)
    omega = 1.0 / 10000 ** omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d_table(width: int, side: int) -> torch.Tensor:
    """Row ``i*side + j`` = concat(E(j), E(i)): the first half encodes the column, the second the row.

    Computed in float64 and returned as float32, like the stored checkpoint tables.
    """
    if width % 4:
        raise ValueError(f"sin-cos table width must be a multiple of 4, got {width}")
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    table = torch.cat([sincos_1d(width // 2, cols), sincos_1d(width // 2, rows)], dim=1)
    return table.to(torch.float32)


def grid_position_ids(grid_h: int, grid_w: int, side: int, device=None) -> torch.Tensor:
    """Flattened ids ``i*side + j`` of a row-major grid, addressing a table of ``side`` x ``side`` cells."""
    rows = torch.arange(grid_h, device=device)[:, None] * side
    return (rows + torch.arange(grid_w, device=device)[None, :]).reshape(-1)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] (not scaled by 1000) → 256 cos/sin features (cos first) → Linear → SiLU → Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256, operations=TorchOps):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(operations.Linear(frequency_dim, hidden_size), nn.SiLU(),
                                 operations.Linear(hidden_size, hidden_size))

    def features(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float().reshape(-1, 1) * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(t))


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """transformers' default RoPE frequencies, computed in float32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta ** exponents)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """cos/sin of shape (N, head_dim) for integer positions, computed in fp32 and rounded to ``dtype``."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (N, heads, d); cos/sin: (N, d). Evaluated in x's dtype (each product rounded, as the official code)."""
    cos = cos[:, None, :].to(x.dtype)
    sin = sin[:, None, :].to(x.dtype)
    return x * cos + rotate_half(x) * sin
