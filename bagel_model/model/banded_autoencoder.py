"""Low-memory autoencoder decode: the full-resolution stages run in bands of rows.

A plain FLUX decode at 1024² keeps several full-resolution feature maps alive at once (the 256→128 channel
ResNet block at 1024² holds its input, GroupNorm output, sigmoid and product: ≈4 GB in fp32), the largest
transient of an NF4 text-to-image run at 1024². Here every 3×3 convolution is computed band by band from the
rows it needs (one halo row each side), and GroupNorm → swish is applied to those rows only, using statistics
computed once over the whole map. So a ResNet block holds its input, the conv1 output and its own output, plus
one band of temporaries — never the normalised/activated maps. The output of each ×2 upsample (the largest
map: 256 channels at full resolution before the last stage) is not stored at all: the next block reads its
rows straight from the upsample conv, computing them twice (once for the GroupNorm statistics, once for
conv1 and the shortcut) — about one extra 3×3 conv per stage for a much lower peak.

Same arithmetic as the plain modules except two reorderings: GroupNorm statistics come from ``var_mean`` and
are applied as ``(x − mean)·rstd·γ + β`` (PyTorch's fused kernel rounds slightly differently; for an upsample
output they are summed band by band in float64), and a convolution over a band may pick another kernel than
over the whole map, and the mid-block attention runs its queries in chunks. Results equal the plain pass to float
rounding (measured max abs difference 2.6e-6 on decoded values in [-1, 1]; tested).

Measured with the full-size FLUX decoder on a CPU (bench/bench_autoencoder.py): peak +4122 MiB plain vs +1690
MiB banded at 1024², 73 s vs 103 s (512²: +1101 vs +629 MiB). The encoder is not banded: banding its ResNet
blocks alone measured no lower peak (2650 vs 2557 MiB at 1024²), in a run where its mid-block attention was not
yet chunked; worth measuring again before using it for edits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import AttnBlock, AutoEncoder, ResnetBlock, Upsample, swish

RowSource = Callable[[int, int], torch.Tensor]  # rows [a, z) of a map, shape (B, C, z - a, W)
Stats = tuple[torch.Tensor, torch.Tensor]  # GroupNorm mean and 1/std per (batch, group), shaped (B, G, 1, 1, 1)

BAND_BYTES = 32 * 2 ** 20  # target size of one band temporary
QUERY_CHUNK = 1024  # mid-block attention queries per call: 1024 × 16384 keys × 4 B = 64 MiB of scores at 1024²


def band_rows(channels: int, width: int, element_size: int, band_bytes: int = BAND_BYTES) -> int:
    return max(1, band_bytes // max(1, channels * width * element_size))


@dataclass
class RowMap:
    """A feature map known by its shape and a way to get any band of its rows: a stored tensor, or rows
    computed on demand (the output of an upsample conv)."""

    rows: RowSource
    shape: tuple[int, int, int, int]
    dtype: torch.dtype
    device: torch.device
    stored: torch.Tensor | None = None

    @classmethod
    def of(cls, x: torch.Tensor) -> "RowMap":
        return cls(lambda a, z: x[:, :, a:z], tuple(x.shape), x.dtype, x.device, x)

    def new_empty(self, channels: int) -> torch.Tensor:
        b, _, height, width = self.shape
        return torch.empty(b, channels, height, width, dtype=self.dtype, device=self.device)

    def stats(self, norm: nn.GroupNorm, band: int) -> Stats:
        b, groups = self.shape[0], norm.num_groups
        if self.stored is not None:
            grouped = self.stored.reshape(b, groups, -1).float()
            var, mean = torch.var_mean(grouped, dim=-1, unbiased=False)
        else:  # one pass over computed bands; float64 sums keep E[x²] − E[x]² exact enough
            total = torch.zeros(b, groups, dtype=torch.float64, device=self.device)
            squares = torch.zeros_like(total)
            for r0 in range(0, self.shape[2], band):
                part = self.rows(r0, min(self.shape[2], r0 + band)).double().reshape(b, groups, -1)
                total += part.sum(-1)
                squares += (part * part).sum(-1)
            count = self.shape[1] // groups * self.shape[2] * self.shape[3]
            mean64 = total / count
            var, mean = (squares / count - mean64 * mean64).float(), mean64.float()
        rstd = torch.rsqrt(var + norm.eps)
        return mean.reshape(b, groups, 1, 1, 1), rstd.reshape(b, groups, 1, 1, 1)


def normalize_swish(part: torch.Tensor, norm: nn.GroupNorm, stats: Stats) -> torch.Tensor:
    """``swish(norm(rows))`` for a band of rows, with whole-map statistics."""
    mean, rstd = stats
    b, c, rows, w = part.shape
    grouped = part.float().reshape(b, norm.num_groups, c // norm.num_groups, rows, w)
    normed = ((grouped - mean) * rstd).reshape(b, c, rows, w).to(part.dtype)
    with norm.use_weights(part) as (weight, bias):  # a few hundred floats: cheap to fetch per band when streamed
        return swish(normed * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1))


def halo(r0: int, r1: int, height: int) -> tuple[int, int]:
    """Input rows [a, z) a 3×3 conv needs for output rows [r0, r1) (clipped to the map)."""
    return max(0, r0 - 1), min(height, r1 + 1)


ConvWeights = tuple[torch.Tensor, torch.Tensor]  # a conv's (weight, bias) on the compute device


def conv_rows(rows: torch.Tensor, weights: ConvWeights, r0: int, r1: int, a: int, z: int) -> torch.Tensor:
    """Output rows [r0, r1) of a 3×3, stride-1, padding-1 conv from its input rows [a, z) = halo(r0, r1);
    rows outside the map are the conv's zero padding."""
    padded = F.pad(rows, (0, 0, a - (r0 - 1), (r1 + 1) - z))
    return F.conv2d(padded, *weights, padding=(0, 1))


def conv_band(source: RowSource, height: int, weights: ConvWeights, r0: int, r1: int) -> torch.Tensor:
    a, z = halo(r0, r1, height)
    return conv_rows(source(a, z), weights, r0, r1, a, z)


def conv3x3_rows(source: RowSource, height: int, conv: nn.Conv2d, out: torch.Tensor, band: int,
                 accumulate: bool = False) -> torch.Tensor:
    """``out = conv(input)`` (or ``out += …``) band by band; the weights are fetched once for all bands."""
    with conv.use_weights(out) as weights:
        for r0 in range(0, height, band):
            r1 = min(height, r0 + band)
            if accumulate:
                out[:, :, r0:r1] += conv_band(source, height, weights, r0, r1)
            else:
                out[:, :, r0:r1] = conv_band(source, height, weights, r0, r1)
    return out


def resnet_block(block: ResnetBlock, x: RowMap | torch.Tensor, band_bytes: int = BAND_BYTES) -> torch.Tensor:
    """``shortcut(x) + conv2(swish(norm2(conv1(swish(norm1(x))))))``; x's rows are read once per band
    (with a halo row each side) for conv1 and the shortcut together."""
    x = x if isinstance(x, RowMap) else RowMap.of(x)
    _, channels, height, width = x.shape
    out_channels = block.conv1.out_channels
    band = band_rows(max(channels, out_channels), width, x.dtype.itemsize, band_bytes)
    stats = x.stats(block.norm1, band)
    h, out = x.new_empty(out_channels), x.new_empty(out_channels)
    shortcut = getattr(block, "nin_shortcut", None)
    with block.conv1.use_weights(h) as conv1:
        for r0 in range(0, height, band):
            r1 = min(height, r0 + band)
            a, z = halo(r0, r1, height)
            rows = x.rows(a, z)
            h[:, :, r0:r1] = conv_rows(normalize_swish(rows, block.norm1, stats), conv1, r0, r1, a, z)
            own = rows[:, :, r0 - a:r1 - a]
            out[:, :, r0:r1] = shortcut(own) if shortcut is not None else own
            del rows, own
    stats2 = RowMap.of(h).stats(block.norm2, band)
    # plain order is shortcut + h2: addition commutes, so accumulating into the shortcut is the same value
    return conv3x3_rows(lambda a, z: normalize_swish(h[:, :, a:z], block.norm2, stats2), height, block.conv2,
                        out, band, accumulate=True)


def upsampled(module: Upsample, x: torch.Tensor, band_bytes: int = BAND_BYTES) -> RowMap:
    """The output of nearest ×2 + 3×3 conv as rows computed on demand (never stored whole)."""
    b, c, height, width = x.shape
    band = band_rows(c, 2 * width, x.element_size(), band_bytes)

    def doubled(a: int, z: int) -> torch.Tensor:  # rows [a, z) of the ×2 nearest-upsampled input
        first = a // 2
        return F.interpolate(x[:, :, first:(z + 1) // 2], scale_factor=2.0, mode="nearest")[
            :, :, a - 2 * first:z - 2 * first]

    # The rows are computed after this function returns, so the weights outlive any ``with`` block: the
    # plain cast (ComfyUI's legacy form) keeps them valid for as long as the RowMap lives.
    weights = module.conv.cast_weights(x)

    def rows(a: int, z: int) -> torch.Tensor:
        return torch.cat([conv_band(doubled, 2 * height, weights, r0, min(z, r0 + band))
                          for r0 in range(a, z, band)], dim=2)

    return RowMap(rows, (b, module.conv.out_channels, 2 * height, 2 * width), x.dtype, x.device)


def attention_block(block: AttnBlock, x: torch.Tensor, query_chunk: int = QUERY_CHUNK) -> torch.Tensor:
    """``block(x)`` with the queries in chunks: where SDPA falls back to its math kernel (measured on the CPU
    for this single 512-wide head) the full 16384² score matrix of a 1024² decode would take 2 GiB. Each
    query's softmax only sees its own row of scores, so chunking queries changes no arithmetic."""
    h = block.norm(x)
    b, c, height, width = h.shape
    q, k, v = (proj(h).reshape(b, 1, c, height * width).transpose(2, 3) for proj in (block.q, block.k, block.v))
    del h
    out = torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + query_chunk], k, v)
                     for i in range(0, q.shape[2], query_chunk)], dim=2)
    return x + block.proj_out(out.transpose(2, 3).reshape(b, c, height, width))


def norm_swish_conv(norm: nn.GroupNorm, conv: nn.Conv2d, x: torch.Tensor, band_bytes: int = BAND_BYTES):
    """``conv(swish(norm(x)))`` for the output head (``norm_out`` → ``conv_out``)."""
    b, c, height, width = x.shape
    band = band_rows(c, width, x.element_size(), band_bytes)
    stats = RowMap.of(x).stats(norm, band)
    out = x.new_empty(b, conv.out_channels, height, width)
    return conv3x3_rows(lambda a, z: normalize_swish(x[:, :, a:z], norm, stats), height, conv, out, band)


@torch.no_grad()
def decode(ae: AutoEncoder, z: torch.Tensor, band_bytes: int = BAND_BYTES) -> torch.Tensor:
    """Same as ``ae.decode(z)`` with bounded temporaries."""
    decoder, mid = ae.decoder, ae.decoder.mid
    h: RowMap | torch.Tensor = decoder.conv_in(z / ae.config.scale_factor + ae.config.shift_factor)
    h = resnet_block(mid.block_2, attention_block(mid.attn_1, resnet_block(mid.block_1, h, band_bytes)), band_bytes)
    for stage in reversed(decoder.up):
        for block in stage.block:
            h = resnet_block(block, h, band_bytes)
        if hasattr(stage, "upsample"):
            h = upsampled(stage.upsample, h, band_bytes)
    if isinstance(h, RowMap):  # a decoder whose last stage upsamples (not FLUX's layout)
        h = h.rows(0, h.shape[2])
    return norm_swish_conv(decoder.norm_out, decoder.conv_out, h, band_bytes)
