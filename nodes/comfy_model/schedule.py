"""BAGEL's flow-matching schedule as ComfyUI SIGMAS.

BAGEL's t is ComfyUI's sigma (x_t = (1 − t)·x_0 + t·ε, velocity ε − x_0), so its shifted times are the sigmas, and
ComfyUI's Euler step x + v·(σ_next − σ) is BAGEL's x − v·(t_i − t_{i+1}). ComfyUI wants the list with its final 0:
``steps`` timesteps (the meaning `steps` has on Text to Image) make steps − 1 Euler steps, as in BAGEL.
"""
from __future__ import annotations

import torch

from bagel_model.generation.sampler import SamplerSettings, schedule


def bagel_sigmas(steps: int, timestep_shift: float) -> torch.Tensor:
    """(steps,) float32 on the CPU: the core's shifted times t_0 = 1 … t_{steps−2}, then 0 (its t_{steps−1})."""
    SamplerSettings(steps=steps, timestep_shift=timestep_shift).validate()
    times, _ = schedule(steps, timestep_shift)
    # The core's last time is shift·0 / (1 + (shift − 1)·0) = 0 exactly, so appending 0 is its own value.
    return torch.cat([times, torch.zeros(1, dtype=times.dtype)])
