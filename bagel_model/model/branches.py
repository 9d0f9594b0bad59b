"""Layout of a batched block: several generation queries ("branches") in one LM call.

A branch is one (context, latent tokens) pair. The CFG branches of a denoise step share every query token
(same x_t, t and latent position ids) and differ only in their context (KV cache, length) and the RoPE position
of the block; the images of a batch share the contexts and differ in their latent tokens (own x_t).
Projections, norms and MLPs are row-wise, so the branches can run as one stacked (B·N, H) matrix; only
attention must see each branch's own cached keys, so it runs per branch on that branch's rows put back in
sequence order (one concatenation per branch for each of q, k, v: k and v are appended to the cached keys in
the same copy).

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
from .qwen2_mot import GEN, UND, Segment, Streams


@dataclass
class BranchLayout:
    contexts: list[Context]
    num_latents: int

    @classmethod
    def build(cls, contexts: list[Context], num_latents: int, device=None) -> "BranchLayout":
        return cls(list(contexts), num_latents)

    @property
    def count(self) -> int:
        return len(self.contexts)

    def segments(self, num_latents: int) -> list[Segment]:
        markers = 2 * self.count
        return [Segment(0, markers, UND), Segment(markers, markers + self.count * num_latents, GEN)]

    def streams(self, start: torch.Tensor, end: torch.Tensor, latents: list[torch.Tensor]) -> Streams:
        """The query rows split by expert (``Block.split`` of the batched layout): the marker embeddings of every
        branch (und), then each branch's latent tokens (gen; ``latents[i]`` for branch i, the same tensor for
        branches that share a query). One branch's latents are used as they are, without a copy."""
        markers = torch.cat([start, end] * self.count)
        return {UND: markers, GEN: latents[0] if len(latents) == 1 else torch.cat(list(latents))}

    def per_row(self, per_branch: list[torch.Tensor], num_latents: int) -> torch.Tensor:
        """Rows of a per-branch value (e.g. RoPE cos of shape (1, d)) expanded to the batched layout."""
        markers = [value for value in per_branch for _ in range(2)]
        latents = [value.expand(num_latents, -1) for value in per_branch]
        return torch.cat(markers + latents)

    def _in_order(self, rows: Streams, b: int, past: torch.Tensor | None = None) -> torch.Tensor:
        """Branch b's rows as [past…, start, latents…, end] (one copy)."""
        n = self.num_latents
        parts = [rows[UND][2 * b:2 * b + 1], rows[GEN][b * n:(b + 1) * n], rows[UND][2 * b + 1:2 * b + 2]]
        return torch.cat(parts if past is None else [past.to(parts[0].dtype)] + parts)

    def attend(self, q: Streams, k: Streams, v: Streams, layer: int) -> Streams:
        """Non-causal attention of each branch's rows, in sequence order [start, latents, end], to its cached
        keys followed by its own new keys; one copy per branch builds each of q, k and v in that order (the
        keys' copy is the one appending them to the cached keys, which attention needs anyway)."""
        outs = []
        for b, ctx in enumerate(self.contexts):
            outs.append(attend(self._in_order(q, b), self._in_order(k, b, ctx.cache.keys(layer, ctx.length)),
                               self._in_order(v, b, ctx.cache.values(layer, ctx.length)), causal=False))
        if len(outs) == 1:
            return {UND: torch.cat([outs[0][:1], outs[0][-1:]]), GEN: outs[0][1:-1]}
        return {UND: torch.cat([row for out in outs for row in (out[:1], out[-1:])]),
                GEN: torch.cat([out[1:-1] for out in outs])}
