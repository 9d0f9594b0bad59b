"""The velocities one denoise step needs, for every (image, CFG branch) pair: computed one pair at a time or
batched into fewer LM calls, and with the step cache either computed or extrapolated. One instance serves one
denoise call (it owns the step cache state, which therefore never outlives that call)."""
from __future__ import annotations

import torch

from .batched_cfg import branch_hidden, velocities_from_hidden
from ..model.kv_cache import Context
from .runtime import BagelRuntime, GenerationQuery
from .step_cache import StepCache, StepCacheSettings

Key = tuple[int, str]  # (image index in the batch, branch name)


class BranchVelocities:
    def __init__(self, runtime: BagelRuntime, query: GenerationQuery, batch_cfg: bool,
                 step_cache: StepCacheSettings | None, batch_images: bool = False):
        self.runtime = runtime
        self.query = query
        self.batch_cfg = batch_cfg  # the CFG branches of an image share one LM call
        self.batch_images = batch_images  # the images of the batch share one LM call per branch
        self.step_cache = step_cache
        self.caches: dict[Key, StepCache] = {}

    def __call__(self, contexts: dict[str, Context], x: torch.Tensor, t: torch.Tensor) -> dict[str, list]:
        """``contexts``: branch name → context, in the order the sequential path evaluates them; ``x``:
        (B, tokens, 64), one latent per image. Returns branch name → the velocity of each image."""
        keys = [(b, name) for b in range(x.shape[0]) for name in contexts]
        if self.step_cache is None:
            out = self._velocities(keys, self._compute(keys, contexts, x, t))
        else:
            out = self._cached(keys, contexts, x, t)
        return {name: [out[(b, name)] for b in range(x.shape[0])] for name in contexts}

    def _groups(self, keys: list[Key]) -> list[list[Key]]:
        """The pairs that run together in one LM call."""
        if self.batch_cfg and self.batch_images:
            return [keys] if keys else []
        if not self.batch_cfg and not self.batch_images:
            return [[key] for key in keys]
        shared = 0 if self.batch_cfg else 1  # batch_cfg: one call per image; batch_images: one per branch
        groups: dict = {}
        for key in keys:
            groups.setdefault(key[shared], []).append(key)
        return list(groups.values())

    def _compute(self, keys: list[Key], contexts: dict[str, Context], x: torch.Tensor,
                 t: torch.Tensor) -> list[torch.Tensor]:
        """Pre-norm latent hidden states of full calls for ``keys``, in that order."""
        hidden: dict[Key, torch.Tensor] = {}
        for group in self._groups(keys):
            results = branch_hidden(self.runtime, [contexts[name] for _, name in group], self.query, x, t,
                                    images=[b for b, _ in group])
            hidden.update(zip(group, results))
        return [hidden[key] for key in keys]

    def _cached(self, keys: list[Key], contexts: dict[str, Context], x: torch.Tensor,
                t: torch.Tensor) -> dict[Key, torch.Tensor]:
        caches = {key: self.caches.setdefault(key, StepCache(self.step_cache)) for key in keys}
        full = [key for key in keys if caches[key].needs_full()]
        computed = dict(zip(full, self._compute(full, contexts, x, t)))
        hidden = []
        for key in keys:
            if key in computed:
                caches[key].record(t, computed[key])
                hidden.append(computed[key])
            else:
                hidden.append(caches[key].predict(t))
        return self._velocities(keys, hidden)

    def _velocities(self, keys: list[Key], hidden: list[torch.Tensor]) -> dict[Key, torch.Tensor]:
        """Final norm + ``llm2vae`` over the pre-norm states: one call per image, as when it is generated alone,
        or one call for the whole batch when its images share LM calls anyway."""
        rows = dict(zip(keys, hidden))
        images = [keys] if self.batch_images else [[k for k in keys if k[0] == b] for b in dict.fromkeys(
            b for b, _ in keys)]
        out = {}
        for group in images:
            out.update(zip(group, velocities_from_hidden(self.runtime, [rows[key] for key in group])))
        return out

    def full_call_counts(self) -> dict[str, tuple[int, int]]:
        """Branch name → (full calls, all calls) of the step cache so far (image 0 of a batch)."""
        return {name: (cache.full_calls, cache.calls) for (b, name), cache in self.caches.items() if b == 0}
