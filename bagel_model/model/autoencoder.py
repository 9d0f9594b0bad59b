"""FLUX autoencoder (encoder with a sampled diagonal-Gaussian posterior, decoder), FLUX key names; every layer
comes from the ``operations`` namespace (``ops.TorchOps`` by default)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AEConfig
from .ops import TorchOps


def _norm(channels: int, operations) -> nn.GroupNorm:
    return operations.GroupNorm(32, channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with residual."""

    def __init__(self, channels: int, operations=TorchOps):
        super().__init__()
        self.norm = _norm(channels, operations)
        self.q = operations.Conv2d(channels, channels, 1)
        self.k = operations.Conv2d(channels, channels, 1)
        self.v = operations.Conv2d(channels, channels, 1)
        self.proj_out = operations.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (proj(h).reshape(b, 1, c, hh * ww).transpose(2, 3) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(2, 3).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, operations=TorchOps):
        super().__init__()
        self.norm1 = _norm(in_channels, operations)
        self.conv1 = operations.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, operations)
        self.conv2 = operations.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = operations.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class Downsample(nn.Module):
    def __init__(self, channels: int, operations=TorchOps):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric: right and bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int, operations=TorchOps):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int, operations=TorchOps):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, operations)
        self.attn_1 = AttnBlock(channels, operations)
        self.block_2 = ResnetBlock(channels, channels, operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: AEConfig, operations=TorchOps):
        super().__init__()
        self.conv_in = operations.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1, *cfg.ch_mult)
        self.down = nn.ModuleList()
        channels = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            channels_in, channels = cfg.ch * in_mult[level], cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(channels_in, channels, operations))
                channels_in = channels
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(channels, operations)
            self.down.append(stage)
        self.mid = MidBlock(channels, operations)
        self.norm_out = _norm(channels, operations)
        self.conv_out = operations.Conv2d(channels, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: AEConfig, operations=TorchOps):
        super().__init__()
        channels = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = operations.Conv2d(cfg.z_channels, channels, 3, padding=1)
        self.mid = MidBlock(channels, operations)
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.ch_mult))):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            out_channels = cfg.ch * cfg.ch_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(channels, out_channels, operations))
                channels = out_channels
            if level != 0:
                stage.upsample = Upsample(channels, operations)
            self.up.insert(0, stage)  # stored by level index, run from the deepest level
        self.norm_out = _norm(channels, operations)
        self.conv_out = operations.Conv2d(channels, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class AutoEncoder(nn.Module):
    def __init__(self, cfg: AEConfig, operations=TorchOps):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg, operations)
        self.decoder = Decoder(cfg, operations)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Samples the posterior (mean + std·ε, ε drawn on the CPU from ``generator`` in float32, as the
        official CPU-resident autoencoder does), then scales: ``scale·(z − shift)``."""
        moments = self.encoder(x)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32, device="cpu")
        z = mean + torch.exp(0.5 * logvar) * noise.to(mean.device, mean.dtype)
        return self.config.scale_factor * (z - self.config.shift_factor)

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        """BAGEL's scaled latent → the decoder network's input (the raw latent ComfyUI's LATENT holds)."""
        return z / self.config.scale_factor + self.config.shift_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.unscale(z))
