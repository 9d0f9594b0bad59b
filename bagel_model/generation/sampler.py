"""Flow-matching schedule and classifier-free-guidance combination with the official dtypes (spec §6.4)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import BagelInputError
from ..model.ops import reduces_in_fp32

RENORM_TYPES = ("global", "channel", "text_channel")


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 50  # the official num_timesteps: steps - 1 model evaluations
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    timestep_shift: float = 3.0
    cfg_renorm_min: float = 0.0
    cfg_renorm_type: str = "global"

    def validate(self) -> None:
        if self.steps < 2:
            raise BagelInputError(f"steps must be at least 2 (steps - 1 model evaluations), got {self.steps}.")
        if self.cfg_renorm_type not in RENORM_TYPES:
            raise BagelInputError(
                f"cfg_renorm_type {self.cfg_renorm_type!r} is not supported; use one of {RENORM_TYPES}.")
        if self.timestep_shift <= 0:
            raise BagelInputError(f"timestep_shift must be > 0, got {self.timestep_shift}.")
        lo, hi = self.cfg_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise BagelInputError(f"cfg_interval must satisfy 0 <= start <= end <= 1, got {self.cfg_interval}.")

    def scales_at(self, t: torch.Tensor) -> tuple[float, float]:
        """Scales in force at shifted time ``t``: CFG applies for ``lo < t <= hi`` (compared in float32)."""
        lo, hi = (torch.tensor(b, dtype=torch.float32) for b in self.cfg_interval)
        if bool(lo < t) and bool(t <= hi):
            return self.cfg_text_scale, self.cfg_img_scale
        return 1.0, 1.0


# The official defaults of each task, defined here only: the API signatures, the CLI and the nodes use them.
GENERATE_DEFAULTS = SamplerSettings()
EDIT_DEFAULTS = SamplerSettings(cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), cfg_renorm_type="text_channel")


def schedule(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted times t_0..t_{N-2} and their step sizes dt_i = t_i − t_{i+1} (float32)."""
    t = torch.linspace(1, 0, steps)
    t = shift * t / (1 + (shift - 1) * t)
    return t[:-1], t[:-1] - t[1:]


def _mix(base: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """``base + scale·(target − base)``, each op rounded in the operands' dtype like the official code."""
    return base + scale * (target - base)


def _norm(x: torch.Tensor, dim=None) -> torch.Tensor:
    """Vector norm in the official autocast dtype (fp32 on GPUs; the input dtype on CPUs)."""
    x = x.float() if reduces_in_fp32(x) else x
    if dim is None:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=dim, keepdim=True)


def combine_cfg(v: torch.Tensor, v_text: torch.Tensor | None, v_img: torch.Tensor | None,
                text_scale: float, img_scale: float, renorm_min: float, renorm_type: str) -> torch.Tensor:
    """Guided velocity from the conditional ``v`` and the text-/image-dropped branches.

    Without text CFG (scale ≤ 1) ``v`` is returned as is, even when the image scale is > 1 (official rule).
    """
    if text_scale <= 1.0:
        return v
    if renorm_type == "text_channel":
        guided = _mix(v_text, v, text_scale)
        k = torch.clamp(_norm(v, -1) / (_norm(guided, -1) + 1e-8), min=renorm_min, max=1.0)
        guided = guided * k  # fp32 from here on when the norms are fp32
        return _mix(v_img, guided, img_scale) if img_scale > 1.0 else guided
    guided = _mix(v_text, v, text_scale)
    if img_scale > 1.0:
        guided = _mix(v_img, guided, img_scale)
    if renorm_type == "global":
        k = torch.clamp(_norm(v) / (_norm(guided) + 1e-8), min=renorm_min, max=1.0)
        return guided * k.to(guided.dtype)  # stays in the compute dtype, with a rounded scale
    k = torch.clamp(_norm(v, -1) / (_norm(guided, -1) + 1e-8), min=renorm_min, max=1.0)
    return guided * k  # "channel": fp32 when the norms are fp32


def euler_step(x: torch.Tensor, v: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """``x − v·dt`` with x fp32; the product keeps v's dtype (rounded once), as the official CPU loop does."""
    step = (v.float() * dt.float()).to(v.dtype)
    return x - step.to(x.dtype)
