"""Layout of a batched block: several generation queries ("branches") in one LM call.

A branch is one (context, latent tokens) pair. The CFG branches of a denoise step share every query token
(same x_t, t and latent position ids) and differ only in their context (KV cache, length) and the RoPE position
of the block; the images of a batch share the contexts and differ in their latent tokens (own x_t).
Projections, norms and MLPs are row-wise, so the branches can run as one stacked (B·N, H) matrix; only
attention must see each branch's own cached keys, so it runs per branch on that branch's rows gathered back
into sequence order.

Row layout (chosen so the big gen-expert GEMMs cover all branches in one call):
``[start_0, end_0, start_1, end_1, …, latents_0, latents_1, …]``: the marker rows of every branch form one
und-expert segment and all latent rows one gen-expert segment, so each expert's weights are read once per LM
call (one copy of a streamed expert per call, not one per marker row).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import attend
from .kv_cache import Context
from .qwen2_mot import GEN, UND, Segment


@dataclass
class BranchLayout:
    contexts: list[Context]
    orders: list[torch.Tensor]  # per branch: indexes of its rows in sequence order [start, latents…, end]

    @classmethod
    def build(cls, contexts: list[Context], num_latents: int, device) -> "BranchLayout":
        count = len(contexts)
        orders = []
        for b in range(count):
            latents = 2 * count + b * num_latents + torch.arange(num_latents, device=device)
            marker = torch.tensor([2 * b, 2 * b + 1], device=device)
            orders.append(torch.cat([marker[:1], latents, marker[1:]]))
        return cls(list(contexts), orders)

    @property
    def count(self) -> int:
        return len(self.contexts)

    def segments(self, num_latents: int) -> list[Segment]:
        markers = 2 * self.count
        return [Segment(0, markers, UND), Segment(markers, markers + self.count * num_latents, GEN)]

    def stack(self, start: torch.Tensor, end: torch.Tensor, latents: list[torch.Tensor]) -> torch.Tensor:
        """The query rows in the batched layout: the marker embeddings of every branch, then each branch's
        latent tokens (``latents[i]`` for branch i; the same tensor for branches that share a query)."""
        return torch.cat([start, end] * self.count + list(latents))

    def per_row(self, per_branch: list[torch.Tensor], num_latents: int) -> torch.Tensor:
        """Rows of a per-branch value (e.g. RoPE cos of shape (1, d)) expanded to the batched layout."""
        markers = [value for value in per_branch for _ in range(2)]
        latents = [value.expand(num_latents, -1) for value in per_branch]
        return torch.cat(markers + latents)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        """Non-causal attention of each branch's rows to its cached keys followed by its own new keys."""
        out = q.new_empty(q.shape[0], q.shape[1] * q.shape[2])
        for ctx, rows in zip(self.contexts, self.orders):
            k_new, v_new = k[rows], v[rows]
            past_k = ctx.cache.keys(layer, ctx.length)
            past_v = ctx.cache.values(layer, ctx.length)
            if past_k is not None:
                k_new = torch.cat([past_k.to(k_new.dtype), k_new])
                v_new = torch.cat([past_v.to(v_new.dtype), v_new])
            out[rows] = attend(q[rows], k_new, v_new, causal=False)
        return out
