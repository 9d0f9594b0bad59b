"""The one velocity path: the CFG branches of one denoise step in a single LM call (see ``model/branches.py``);
one branch at a time is the same call with one context. The images of a batch (same contexts, own latents) can
join the same call.

The branches share the query tokens, so the latent embedding, marker embeddings, every projection/MLP GEMM
and ``llm2vae`` run once over the stacked rows instead of once per branch; attention still runs per branch
against that branch's own context. Row-wise kernels give each row the same arithmetic whatever the number of
rows, so on the CPUs we measured the result equals the one-branch-at-a-time path bit for bit (tested), and in
general it equals it up to floating-point reordering inside the GEMM kernels.
"""
from __future__ import annotations

import torch

from ..model.branches import BranchLayout
from ..model.kv_cache import Context
from ..model.qwen2_mot import GEN, Block
from .runtime import BagelRuntime, GenerationQuery


@torch.no_grad()
def branch_hidden(runtime: BagelRuntime, contexts: list[Context], query: GenerationQuery, x_t: torch.Tensor,
                  t: torch.Tensor, images: list[int] | None = None) -> list[torch.Tensor]:
    """Last decoder layer's output (before the final norm) for the latent rows of each branch.

    ``x_t``: (tokens, 64) shared by every branch, or (B, tokens, 64) for a batch of images with ``images[i]``
    the image branch i denoises (default: image 0 for all). Each image's latents are embedded once, on their
    own, so every row gets the same arithmetic as in a one-image call."""
    model, device = runtime.model, runtime.device
    if x_t.dim() == 2:
        x_t = x_t[None]
    images = [0] * len(contexts) if images is None else list(images)
    embedded = {b: model.embed_latents(x_t[b].to(device), t.to(device), query.position_ids, runtime.dtype)
                for b in dict.fromkeys(images)}
    start, end = runtime.marker_embeddings()
    n = query.num_tokens
    layout = BranchLayout.build(contexts, n, device)
    rope = [runtime.rope_at(ctx.rope) for ctx in contexts]
    cos = layout.per_row([c for c, _ in rope], n)
    sin = layout.per_row([s for _, s in rope], n)
    block = Block(layout.segments(n), cos, sin, causal=False, fp32_qk=True, branches=layout)
    rows = layout.streams(start, end, [embedded[b] for b in images])
    hidden = model.lm.run_layer_streams(rows, block, None, update=False)
    return list(hidden[GEN].split(n))


@torch.no_grad()
def velocities_from_hidden(runtime: BagelRuntime, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
    """Final gen-expert norm and ``llm2vae`` for each branch's latent rows, in one call over all branches."""
    if not hidden:
        return []
    model = runtime.model
    stacked = torch.cat(hidden) if len(hidden) > 1 else hidden[0]
    v = model.llm2vae(model.lm.norm_moe_gen(stacked))
    return list(v.split(hidden[0].shape[0]))


def velocities(runtime: BagelRuntime, contexts: list[Context], query: GenerationQuery, x_t: torch.Tensor,
               t: torch.Tensor) -> list[torch.Tensor]:
    """Velocity (compute dtype) of the latent tokens against each context, all in one LM call."""
    return velocities_from_hidden(runtime, branch_hidden(runtime, contexts, query, x_t, t))
