"""BAGEL's velocity for a batch of latent images in the host's layout, each against its own context.

A host sampler (ComfyUI's) holds latents as (B, C, H, W) in BAGEL's scaled latent space and asks for the
velocity of every row at one timestep; rows may belong to different CFG branches (different contexts, of
different lengths) or to different images. All rows go through the one batched-branch step
(``batched_cfg.branch_hidden`` + ``velocities_from_hidden``): one LM call whatever the number of rows.
"""
from __future__ import annotations

import torch

from ..errors import BagelInputError
from ..model.kv_cache import Context, KVCache
from .batched_cfg import branch_hidden, velocities_from_hidden
from .images import patchify_latent, unpatchify_latent
from .runtime import BagelRuntime


def check_latent_size(config, height: int, width: int) -> None:
    """A latent BAGEL can denoise: a whole number of 2×2 patches, within the latent position table."""
    patch, limit, down = config.latent_patch_size, config.max_latent_size, config.ae.downsample
    if height % patch or width % patch or height < patch or width < patch:
        raise BagelInputError(
            f"A BAGEL latent must be a whole number of {patch}x{patch} patches; got {width}x{height} latent "
            f"pixels (image {width * down}x{height * down}). Use an image size that is a multiple of "
            f"{config.latent_downsample}.")
    if height // patch > limit or width // patch > limit:
        side = limit * config.latent_downsample
        raise BagelInputError(f"A BAGEL latent of {width}x{height} is larger than the model's {side}x{side} "
                              "pixel limit; use a smaller image size.")


def pack_latents(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) → (B, H/p·W/p, p·p·C), BAGEL's token layout."""
    return torch.stack([patchify_latent(latent, patch) for latent in latents])


def unpack_latents(tokens: torch.Tensor, height: int, width: int, channels: int, patch: int) -> torch.Tensor:
    """(B, tokens, p·p·C) → (B, C, H, W)."""
    return torch.cat([unpatchify_latent(row, height // patch, width // patch, channels, patch) for row in tokens])


def context_on(context: Context, device: torch.device) -> Context:
    """``context`` with its K/V on ``device``: itself when they are there already, else a copy of its tokens
    (a host that runs rows on several devices prefills a context once, on one of them)."""
    cache = context.cache
    stored = [cache.keys(layer, context.length) for layer in range(cache.num_layers)]
    if all(keys is None or keys.device == torch.device(device) for keys in stored):
        return context
    copy = KVCache(cache.num_layers)
    for layer in range(cache.num_layers):
        values = cache.values(layer, context.length)
        copy.write(layer, 0, stored[layer].to(device), values.to(device))
    copy.length = context.length
    return Context(copy, context.length, context.rope)


@torch.no_grad()
def latent_velocities(runtime: BagelRuntime, contexts: list[Context], latents: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """Velocity (B, C, H, W) in the compute dtype of row b of ``latents`` against ``contexts[b]`` at
    BAGEL time ``t`` (a scalar, 1 = noise), all rows in one LM call."""
    config = runtime.config
    rows, channels, height, width = latents.shape
    if len(contexts) != rows:
        raise ValueError(f"{rows} latent rows but {len(contexts)} contexts")
    check_latent_size(config, height, width)
    patch = config.latent_patch_size
    down = config.ae.downsample
    query = runtime.generation_query(height * down, width * down)
    packed = pack_latents(latents.float(), patch)
    t = t.reshape(()).to(torch.float32)
    hidden = branch_hidden(runtime, contexts, query, packed, t, images=list(range(rows)))
    velocity = torch.stack(velocities_from_hidden(runtime, hidden))
    return unpack_latents(velocity, height, width, channels, patch)
