"""Step cache (TaylorSeer-style, spec §9): skip the decoder layers on some denoise steps and extrapolate them.

On a *full* call of a CFG branch every decoder layer runs and the output of the layer stack (before the final
norm) is remembered with its timestep. On a *cached* call no decoder layer runs: the output is the polynomial
through the last ``order + 1`` full calls, evaluated at the new timestep; the final norm and ``llm2vae`` still
run on it. Schedule per branch, counting that branch's calls: the first ``warmup`` calls are full, afterwards
one call in ``interval`` is full.

Why only the last layer: the official code caches every layer's output, but on a cached step every layer is
skipped, so only the last layer's extrapolation ever reaches ``llm2vae``. Keeping that one tensor per point
gives the same result with 1/num_layers of the memory. Extrapolating in t (not in step counts) stays exact
for polynomials when the shifted schedule spaces the steps unevenly.

All state lives in ``StepCache`` objects that ``denoise`` creates per call, so one generation can never change
the next one's result (the official implementation leaks this state across calls; spec §9, §12.23).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import BagelInputError

STEP_CACHE_MODES = ("taylor",)


@dataclass(frozen=True)
class StepCacheSettings:
    mode: str = "taylor"
    warmup: int = 5  # first calls of each branch that always run every layer
    interval: int = 3  # after the warm-up, one call in ``interval`` runs every layer
    order: int = 2  # degree of the extrapolating polynomial (uses the last order + 1 full calls)

    def validate(self) -> None:
        if self.mode not in STEP_CACHE_MODES:
            raise BagelInputError(f"step_cache mode {self.mode!r} is not supported; use one of {STEP_CACHE_MODES}.")
        if self.warmup < 1 or self.interval < 1 or not 0 <= self.order <= 6:
            raise BagelInputError(
                f"step cache needs warmup >= 1, interval >= 1 and 0 <= order <= 6; got warmup={self.warmup}, "
                f"interval={self.interval}, order={self.order}.")


def resolve_step_cache(value) -> StepCacheSettings | None:
    """``None``/``False``/``"off"`` → no cache; ``"taylor"`` → defaults; a dict or ``StepCacheSettings`` as given."""
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("off", "none", "")):
        return None
    if isinstance(value, str):
        settings = StepCacheSettings(mode=value.lower())
    elif isinstance(value, dict):
        settings = StepCacheSettings(**value)
    elif isinstance(value, StepCacheSettings):
        settings = value
    else:
        raise BagelInputError(f"step_cache must be None, 'taylor' or StepCacheSettings, got {value!r}.")
    settings.validate()
    return settings


class StepCache:
    """The full-call history of one CFG branch during one denoise call."""

    def __init__(self, settings: StepCacheSettings):
        self.settings = settings
        self.calls = 0
        self.full_calls = 0
        self._points: list[tuple[float, torch.Tensor]] = []

    def needs_full(self) -> bool:
        s = self.settings
        if self.calls < s.warmup or not self._points:
            return True
        return (self.calls - s.warmup + 1) % s.interval == 0

    def record(self, t: torch.Tensor, hidden: torch.Tensor) -> None:
        self._points.append((float(t), hidden))
        del self._points[:-(self.settings.order + 1)]
        self.calls += 1
        self.full_calls += 1

    def predict(self, t: torch.Tensor) -> torch.Tensor:
        """Lagrange form of the polynomial through the kept points, evaluated at ``t`` (accumulated in fp32)."""
        target = float(t)
        times = [p for p, _ in self._points]
        out = None
        for i, (t_i, hidden) in enumerate(self._points):
            weight = 1.0
            for j, t_j in enumerate(times):
                if j != i:
                    weight *= (target - t_j) / (t_i - t_j)
            term = hidden.float() * weight
            out = term if out is None else out + term
        self.calls += 1
        return out.to(self._points[-1][1].dtype)
