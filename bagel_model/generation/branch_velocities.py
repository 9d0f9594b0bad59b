"""The velocities of the CFG branches one denoise step needs, computed one branch at a time or batched, and
with the step cache either computed or extrapolated. One instance serves one denoise call (it owns the step
cache state, which therefore never outlives that call)."""
from __future__ import annotations

import torch

from .batched_cfg import branch_hidden, velocities_from_hidden
from ..model.kv_cache import Context
from .runtime import BagelRuntime, GenerationQuery
from .step_cache import StepCache, StepCacheSettings


class BranchVelocities:
    def __init__(self, runtime: BagelRuntime, query: GenerationQuery, batch_cfg: bool,
                 step_cache: StepCacheSettings | None):
        self.runtime = runtime
        self.query = query
        self.batch_cfg = batch_cfg
        self.step_cache = step_cache
        self.caches: dict[str, StepCache] = {}

    def __call__(self, contexts: dict[str, Context], x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """``contexts``: branch name → context, in the order the sequential path evaluates them."""
        if self.step_cache is None:
            return dict(zip(contexts, self._hidden_to_velocity(self._compute(list(contexts.values()), x, t))))
        return self._cached(contexts, x, t)

    def _compute(self, contexts: list[Context], x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Pre-norm latent hidden states of full calls: one stacked LM call, or one call per branch."""
        if not contexts:
            return []
        if self.batch_cfg:
            return branch_hidden(self.runtime, contexts, self.query, x, t)
        return [branch_hidden(self.runtime, [ctx], self.query, x, t)[0] for ctx in contexts]

    def _hidden_to_velocity(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        return velocities_from_hidden(self.runtime, hidden)

    def _cached(self, contexts: dict[str, Context], x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        caches = {name: self.caches.setdefault(name, StepCache(self.step_cache)) for name in contexts}
        full = [name for name in contexts if caches[name].needs_full()]
        computed = dict(zip(full, self._compute([contexts[name] for name in full], x, t)))
        hidden = []
        for name in contexts:
            if name in computed:
                caches[name].record(t, computed[name])
                hidden.append(computed[name])
            else:
                hidden.append(caches[name].predict(t))
        return dict(zip(contexts, self._hidden_to_velocity(hidden)))

    def full_call_counts(self) -> dict[str, tuple[int, int]]:
        """Branch name → (full calls, all calls) of the step cache so far."""
        return {name: (cache.full_calls, cache.calls) for name, cache in self.caches.items()}
