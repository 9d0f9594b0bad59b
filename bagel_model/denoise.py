"""The flow-matching denoise loop over the conditioning contexts, with guidance branches computed only when
their weight can change the result."""
from __future__ import annotations

import torch

from .model.kv_cache import Context
from .runtime import BagelRuntime, GenerationQuery, ProgressFn
from .sampler import SamplerSettings, combine_cfg, euler_step, schedule


def _same_context(a: Context | None, b: Context) -> bool:
    return a is not None and a.cache is b.cache and a.length == b.length and a.rope == b.rope


def denoise(runtime: BagelRuntime, settings: SamplerSettings, query: GenerationQuery, noise: torch.Tensor,
            gen: Context, cfg_text: Context | None, cfg_img: Context | None,
            progress: ProgressFn | None = None) -> torch.Tensor:
    """Euler integration from t = 1 to 0; returns the final packed latent (tokens, 64), float32."""
    timesteps, dts = schedule(settings.steps, settings.timestep_shift)
    x = noise.to(runtime.device, torch.float32)
    total = len(timesteps)
    for index, (t, dt) in enumerate(zip(timesteps, dts)):
        text_scale, img_scale = settings.scales_at(t)
        v = runtime.velocity(gen, query, x, t)
        v_text = v_img = None
        if text_scale > 1.0:
            v_text = v if _same_context(cfg_text, gen) else runtime.velocity(cfg_text, query, x, t)
            if img_scale > 1.0:
                v_img = v if _same_context(cfg_img, gen) else runtime.velocity(cfg_img, query, x, t)
        guided = combine_cfg(v, v_text, v_img, text_scale, img_scale, settings.cfg_renorm_min,
                             settings.cfg_renorm_type)
        x = euler_step(x, guided.to(x.device), dt.to(x.device))
        if progress is not None:
            progress("denoise", index + 1, total)
    return x
