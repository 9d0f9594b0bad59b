"""Batches of generated images: per-image seeds, when one conditioning can serve every image, and progress
reporting when the images run one after another."""
from __future__ import annotations

from PIL import Image

from .runtime import ProgressFn

SEED_MODULUS = 2 ** 64  # torch generators take seeds in 0..2**64-1; seed + k wraps around like ComfyUI's widget


def image_seeds(seed: int, count: int) -> list[int]:
    """Image k of a batch uses ``seed + k`` (wrapped into 0..2**64-1); image 0 uses ``seed`` as given."""
    return [seed] + [(seed + k) % SEED_MODULUS for k in range(1, count)]


def shares_context(items: list, samples_plan: bool) -> bool:
    """True when the conditioning contexts are the same for every seed, so they can be built once: no input
    image (its VAE encoding samples the posterior from the seed's generator) and no sampled think plan."""
    return not samples_plan and not any(isinstance(item, Image.Image) for item in items)


def job_progress(callback: ProgressFn | None, job: int, jobs: int) -> ProgressFn | None:
    """Maps the progress of job ``job`` (one image of ``jobs`` run one after another) onto the whole batch."""
    if callback is None:
        return None

    def report(stage: str, step: int, total: int) -> None:
        callback(stage, job * total + step, jobs * total)

    return report
