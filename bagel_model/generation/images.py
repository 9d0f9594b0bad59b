"""Image sizing, conversion and (un)patchify exactly as the official inference does it (spec §5)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import BagelInputError

MAX_PIXELS = 14 * 14 * 9 * 1024


def nearest_sizes(value, stride: int, low: int, high: int) -> str:
    """The supported side(s) nearest to ``value`` ("96 or 112", "1024"), for messages that refuse it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"a multiple of {stride} such as 512"
    below = min(max(int(number // stride) * stride, low), high)
    above = min(max(below + stride if below < number else below, low), high)
    return str(below) if below == above else f"{below} or {above}"


def check_image_size(width, height, stride: int, limit: int, grid: int) -> None:
    """Refuses a generated size the latent grid cannot hold: each side a multiple of ``stride`` (pixels per
    latent token) in ``stride..limit``; ``grid`` is the position table's side in tokens (for the message)."""
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value % stride or not stride <= value <= limit:
            raise BagelInputError(
                f"{name}={value} is not supported: use a multiple of {stride} between {stride} and {limit}, "
                f"e.g. {nearest_sizes(value, stride, stride, limit)} (the model's latent grid is {grid}x{grid} "
                f"tokens of {stride} px).")


@dataclass(frozen=True)
class ResizeRule:
    """``MaxLongEdgeMinShortEdgeResize``: cap the long side, raise the short side, snap to ``stride``."""

    max_size: int
    min_size: int
    stride: int
    max_pixels: int = MAX_PIXELS

    def _snap(self, value: float) -> int:
        return max(self.stride, int(round(value / self.stride) * self.stride))

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        scale = min(self.max_size / max(width, height), 1.0)
        scale = max(scale, self.min_size / min(width, height))
        new_w, new_h = self._snap(round(width * scale)), self._snap(round(height * scale))
        if new_w * new_h > self.max_pixels:
            # The official rule uses the *area* ratio as a linear factor; kept for identical sizes.
            factor = self.max_pixels / (new_w * new_h)
            new_w, new_h = self._snap(new_w * factor), self._snap(new_h * factor)
        if max(new_w, new_h) > self.max_size:
            factor = self.max_size / max(new_w, new_h)
            new_w, new_h = self._snap(new_w * factor), self._snap(new_h * factor)
        return new_w, new_h

    def __call__(self, image: Image.Image) -> Image.Image:
        size = self.target_size(*image.size)
        if size == image.size:
            return image
        return image.resize(size, Image.BICUBIC)


VAE_RULE = ResizeRule(1024, 512, 16)
VIT_RULE = ResizeRule(980, 224, 14)


def resize_rules(max_latent_size: int, vit_side: int, latent_stride: int = 16, patch: int = 14):
    """The official transforms when the position tables have the official size (64 latent / 70 ViT cells);
    for smaller test tables, the same rule capped at the table (max = side x stride, min = max / 2)."""
    vae = VAE_RULE if max_latent_size * latent_stride >= VAE_RULE.max_size else \
        ResizeRule(max_latent_size * latent_stride, max_latent_size * latent_stride // 2, latent_stride)
    vit = VIT_RULE if vit_side * patch >= VIT_RULE.max_size else \
        ResizeRule(vit_side * patch, vit_side * patch // 2, patch)
    return vae, vit


def to_rgb(image: Image.Image) -> Image.Image:
    """Images with alpha (or a transparency key) are composited onto white; others converted to RGB."""
    if image.mode == "RGBA" or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB → float32 (3, H, W) in [-1, 1]: byte/255, then (x − 0.5)/0.5."""
    array = np.asarray(image, dtype=np.uint8).astype(np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return (tensor - 0.5) / 0.5


def patchify_pixels(image: torch.Tensor, patch: int) -> torch.Tensor:
    """(3, H, W) → (H/p · W/p, p·p·3), each row ordered (row-in-patch, column-in-patch, channel)."""
    channels, height, width = image.shape
    h, w = height // patch, width // patch
    grid = image[:, : h * patch, : w * patch].reshape(channels, h, patch, w, patch)
    return grid.permute(1, 3, 2, 4, 0).reshape(h * w, patch * patch * channels)


def patchify_latent(latent: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """(C, 2h, 2w) → (h·w, 2·2·C), ordered (row-in-patch, column-in-patch, channel)."""
    channels, height, width = latent.shape
    h, w = height // patch, width // patch
    grid = latent[:, : h * patch, : w * patch].reshape(channels, h, patch, w, patch)
    return grid.permute(1, 3, 2, 4, 0).reshape(h * w, patch * patch * channels)


def unpatchify_latent(tokens: torch.Tensor, h: int, w: int, channels: int, patch: int = 2) -> torch.Tensor:
    """(h·w, p·p·C) → (1, C, p·h, p·w)."""
    grid = tokens.reshape(h, w, patch, patch, channels)
    return grid.permute(4, 0, 2, 1, 3).reshape(1, channels, h * patch, w * patch)


def to_unit_pixels(decoded: torch.Tensor) -> torch.Tensor:
    """Decoder output (1, 3, H, W) in [-1, 1] → float32 (H, W, 3) in [0, 1] on the CPU (no 8-bit step)."""
    return (decoded[0].float() * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu()


def to_pil(decoded: torch.Tensor) -> Image.Image:
    """Decoder output (1, 3, H, W) in [-1, 1] → 8-bit PIL image, truncating like the official code."""
    pixels = (decoded[0].float() * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0) * 255
    return Image.fromarray(pixels.to(torch.uint8).cpu().numpy())
