"""The flow-matching denoise loop over the conditioning contexts, with guidance branches computed only when
their weight can change the result."""
from __future__ import annotations

import logging

import torch

from .branch_velocities import BranchVelocities
from ..model.kv_cache import Context
from .runtime import BagelRuntime, GenerationQuery, ProgressFn
from .sampler import SamplerSettings, combine_cfg, euler_step, schedule
from .step_cache import StepCacheSettings

log = logging.getLogger(__name__)


def _same_context(a: Context | None, b: Context) -> bool:
    return a is not None and a.cache is b.cache and a.length == b.length and a.rope == b.rope


def _branches_needed(gen: Context, cfg_text: Context | None, cfg_img: Context | None, text_scale: float,
                     img_scale: float) -> dict[str, Context]:
    """Branches whose weight can change this step's result; a branch equal to ``gen`` reuses its velocity."""
    needed = {"gen": gen}
    if text_scale > 1.0:
        if not _same_context(cfg_text, gen):
            needed["cfg_text"] = cfg_text
        if img_scale > 1.0 and not _same_context(cfg_img, gen):
            needed["cfg_img"] = cfg_img
    return needed


def denoise(runtime: BagelRuntime, settings: SamplerSettings, query: GenerationQuery, noise: torch.Tensor,
            gen: Context, cfg_text: Context | None, cfg_img: Context | None,
            progress: ProgressFn | None = None, *, batch_cfg: bool = False,
            step_cache: StepCacheSettings | None = None) -> torch.Tensor:
    """Euler integration from t = 1 to 0; returns the final packed latent (tokens, 64), float32.

    ``batch_cfg`` runs the CFG branches of a step as one LM call; ``step_cache`` extrapolates the decoder
    output on some steps (its state lives only inside this call)."""
    timesteps, dts = schedule(settings.steps, settings.timestep_shift)
    velocities = BranchVelocities(runtime, query, batch_cfg, step_cache)
    x = noise.to(runtime.device, torch.float32)
    total = len(timesteps)
    for index, (t, dt) in enumerate(zip(timesteps, dts)):
        text_scale, img_scale = settings.scales_at(t)
        out = velocities(_branches_needed(gen, cfg_text, cfg_img, text_scale, img_scale), x, t)
        v = out["gen"]
        v_text = out.get("cfg_text", v) if text_scale > 1.0 else None
        v_img = out.get("cfg_img", v) if text_scale > 1.0 and img_scale > 1.0 else None
        guided = combine_cfg(v, v_text, v_img, text_scale, img_scale, settings.cfg_renorm_min,
                             settings.cfg_renorm_type)
        x = euler_step(x, guided.to(x.device), dt.to(x.device))
        if progress is not None:
            progress("denoise", index + 1, total)
    if step_cache is not None:
        log.info("step cache: (full, total) calls per branch %s", velocities.full_call_counts())
    return x
