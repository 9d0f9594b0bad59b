"""The flow-matching denoise loop over the conditioning contexts, with guidance branches computed only when
their weight can change the result."""
from __future__ import annotations

import logging

import torch

from .branch_velocities import BranchVelocities
from ..model.kv_cache import Context
from .runtime import BagelRuntime, GenerationQuery, PackedPreviewFn, ProgressFn
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
            step_cache: StepCacheSettings | None = None, batch_images: bool = False,
            preview: PackedPreviewFn | None = None) -> torch.Tensor:
    """Euler integration from t = 1 to 0; returns the final packed latents (B, tokens, 64), float32.

    ``noise``: (tokens, 64) for one image or (B, tokens, 64) for a batch denoised in lockstep against the same
    contexts; each image gets exactly the result it would get alone. ``batch_cfg`` runs the CFG branches of a
    step as one LM call, ``batch_images`` the images of the batch; ``step_cache`` extrapolates the decoder
    output on some steps (its state lives only inside this call). ``preview(step, total, x0)`` receives the
    predicted clean latents (B, tokens, 64) after each step; nothing is computed for it when it is None."""
    timesteps, dts = schedule(settings.steps, settings.timestep_shift)
    velocities = BranchVelocities(runtime, query, batch_cfg, step_cache, batch_images=batch_images)
    x = noise.to(runtime.device, torch.float32)
    if x.dim() == 2:
        x = x[None]
    total = len(timesteps)
    for index, (t, dt) in enumerate(zip(timesteps, dts)):
        text_scale, img_scale = settings.scales_at(t)
        out = velocities(_branches_needed(gen, cfg_text, cfg_img, text_scale, img_scale), x, t)
        guided = [_guided(out, b, text_scale, img_scale, settings).to(x.device) for b in range(x.shape[0])]
        if preview is not None:
            # x_t = (1 − t)·x_0 + t·ε and v = ε − x_0, so x_0 = x_t − t·v.
            preview(index + 1, total, torch.stack([x[b] - t.to(x.device) * v.float() for b, v in enumerate(guided)]))
        x = torch.stack([euler_step(x[b], v, dt.to(x.device)) for b, v in enumerate(guided)])
        if progress is not None:
            progress("denoise", index + 1, total)
    if step_cache is not None:
        log.info("step cache: (full, total) calls per branch %s", velocities.full_call_counts())
    return x


def _guided(out: dict[str, list], b: int, text_scale: float, img_scale: float,
            settings: SamplerSettings) -> torch.Tensor:
    """Image b's guided velocity (its renorm sees only its own tokens, as when it is generated alone)."""
    v = out["gen"][b]
    v_text = out["cfg_text"][b] if text_scale > 1.0 and "cfg_text" in out else (v if text_scale > 1.0 else None)
    v_img = None
    if text_scale > 1.0 and img_scale > 1.0:
        v_img = out["cfg_img"][b] if "cfg_img" in out else v
    return combine_cfg(v, v_text, v_img, text_scale, img_scale, settings.cfg_renorm_min, settings.cfg_renorm_type)
