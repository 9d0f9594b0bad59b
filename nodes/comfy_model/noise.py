"""BAGEL's initial noise in ComfyUI's latent layout, for ComfyUI's NOISE input (SamplerCustomAdvanced).

Text to Image draws its starting point as packed tokens, (h·w, 64) float32 from a CPU generator seeded with the seed
(bagel-spec §6, "random draws"); the tokens are 2×2 patches of the 16-channel FLUX latent. ComfyUI's samplers hold
the same latent unpacked, (B, 16, H/8, W/8). This draws exactly those tokens and unpacks them with the core's own
`unpatchify_latent`, the layout Text to Image's `latent` output has, so the numbers are the same, only placed where
ComfyUI keeps them.
"""
from __future__ import annotations

import torch

from bagel_model.errors import BagelInputError
from bagel_model.generation.image_batch import SEED_MODULUS
from bagel_model.generation.images import unpatchify_latent

LATENT_CHANNELS = 16  # the FLUX autoencoder's z channels (ComfyUI's latent_formats.Flux)
PATCH = 2  # BAGEL packs 2×2 latent pixels into one token


def bagel_noise_tokens(seed: int, tokens: int, channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """The packed noise Text to Image starts from for ``seed``: (tokens, 4·channels) float32 on the CPU."""
    generator = torch.Generator("cpu").manual_seed(seed % SEED_MODULUS)
    return torch.randn((tokens, PATCH * PATCH * channels), generator=generator, dtype=torch.float32)


def bagel_noise_latent(seed: int, height: int, width: int, channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """That noise unpacked to ComfyUI's layout: (1, channels, height, width); height and width are latent pixels."""
    grid_h, grid_w = height // PATCH, width // PATCH
    tokens = bagel_noise_tokens(seed, grid_h * grid_w, channels)
    return unpatchify_latent(tokens, grid_h, grid_w, channels, PATCH)


def check_latent_shape(samples) -> None:
    """Raises BagelInputError unless ``samples`` is a FLUX latent batch BAGEL can pack into 2×2 tokens."""
    if not isinstance(samples, torch.Tensor) or samples.dim() != 4:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise BagelInputError(
            f"BAGEL-MoT Noise needs an image latent (batch, {LATENT_CHANNELS}, height/8, width/8), got {shape}. "
            "Use EmptySD3LatentImage, or VAE Encode with the BAGEL-MoT Model Loader's vae.")
    batch, channels, height, width = samples.shape
    if channels != LATENT_CHANNELS:
        raise BagelInputError(
            f"BAGEL-MoT Noise: the latent has {channels} channels; BAGEL's FLUX latents have {LATENT_CHANNELS}. "
            "Use EmptySD3LatentImage (not Empty Latent Image of an SD model), or VAE Encode with the loader's vae.")
    if height % PATCH or width % PATCH or height == 0 or width == 0:
        raise BagelInputError(
            f"BAGEL-MoT Noise: the latent is {height}x{width}; BAGEL packs 2x2 latent pixels, so both sides must be "
            f"even and non-zero (image sides a multiple of {8 * PATCH} pixels).")


def batch_seeds(seed: int, batch: int, batch_index=None) -> list[int]:
    """Image k of a batch uses seed + k, as on Text to Image; a latent cut from a larger batch (``batch_index``,
    e.g. from Latent From Batch) keeps the seeds of its place in that batch."""
    indices = range(batch) if batch_index is None else list(batch_index)
    if len(indices) != batch:
        raise BagelInputError(
            f"BAGEL-MoT Noise: the latent has {batch} images but its batch_index lists {len(indices)}.")
    return [(seed + int(index)) % SEED_MODULUS for index in indices]


class BagelNoise:
    """ComfyUI's NOISE contract (comfy_extras/nodes_custom_sampler.py): a ``seed`` attribute and
    ``generate_noise(latent)`` returning noise of the latent's shape on the CPU."""

    def __init__(self, seed: int):
        self.seed = seed

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        check_latent_shape(samples)
        batch, channels, height, width = samples.shape
        seeds = batch_seeds(self.seed, batch, input_latent.get("batch_index"))
        return torch.cat([bagel_noise_latent(seed, height, width, channels) for seed in seeds])
