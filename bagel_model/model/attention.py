"""Attention over a context's cached keys plus a new block, via scaled_dot_product_attention.

Causal blocks use flash-attn's bottom-right alignment: new token j sees every cached key and new keys 0..j.
(SDPA's own ``is_causal`` is top-left aligned and would hide cached keys, so the mask is built here.)

SDPA picks its kernel by device, dtype, mask and head layout; its math fallback (e.g. GQA with a mask, fp32 or
fp16 on cards without flash attention) materialises the full (heads, queries, keys) score matrix, 2.7 GB in
fp32 for a 4.9 k-token ViT prefill. So when SDPA would run that kernel (``torch._fused_sdp_choice``; also when
the choice cannot be asked), queries are processed in blocks whose score matrix stays under
``SCORE_BLOCK_BYTES``: each query row's result does not depend on the other rows, so the blocks give the
unblocked result (tested), and the memory estimate counts one block (checkpoint/memory.py). The flash and
memory-efficient kernels (CPU flash attention, CUDA) never hold the score matrix and tile the queries in their
own way, so they get the whole block in one call: no per-block launches and output copies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from torch.nn.attention import SDPBackend
    _TILED_KERNELS = {int(SDPBackend.FLASH_ATTENTION), int(SDPBackend.EFFICIENT_ATTENTION),
                      int(SDPBackend.CUDNN_ATTENTION)}
except (ImportError, AttributeError):  # torch without the backend enum: always block
    _TILED_KERNELS = set()


def bottom_right_causal_mask(num_queries: int, num_keys: int, device) -> torch.Tensor:
    """Boolean (num_queries, num_keys) mask, True where attention is allowed."""
    offset = num_keys - num_queries
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(diagonal=offset)


SCORE_BLOCK_BYTES = 64 * 2 ** 20  # fp32 scores of one query block, the most a math-kernel fallback holds


def query_block(heads: int, num_keys: int) -> int:
    """Queries per block so that one block's fp32 score matrix stays under ``SCORE_BLOCK_BYTES``."""
    return max(1, SCORE_BLOCK_BYTES // (4 * heads * max(1, num_keys)))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """q: (Nq, heads, d); k, v: (Nk, kv_heads, d) with Nk >= Nq (cached keys first). Returns (Nq, heads·d).

    Grouped-query attention: each group of heads/kv_heads query heads shares one key/value head. ``mask``: the
    causal mask when the caller built it once for several layers (``bottom_right_causal_mask``)."""
    num_q, heads, head_dim = q.shape
    num_k, kv_heads, _ = k.shape
    if not causal or num_q == 1:
        mask = None
    elif mask is None:
        mask = bottom_right_causal_mask(num_q, num_k, q.device)
    kh = k.transpose(0, 1).unsqueeze(0)
    vh = v.transpose(0, 1).unsqueeze(0)
    qh = q.transpose(0, 1).unsqueeze(0)
    block = query_block(heads, num_k)
    if block >= num_q or _scores_stay_tiled(qh, kh, vh, mask):
        return _sdpa(qh, kh, vh, mask, heads // kv_heads)[0].transpose(0, 1).reshape(num_q, heads * head_dim)
    out = q.new_empty(num_q, heads * head_dim)
    for start in range(0, num_q, block):
        rows = slice(start, min(num_q, start + block))
        part = _sdpa(qh[:, :, rows], kh, vh, None if mask is None else mask[rows], heads // kv_heads)
        out[rows] = part[0].transpose(0, 1).reshape(-1, heads * head_dim)
    return out


def _scores_stay_tiled(q, k, v, mask) -> bool:
    """Whether SDPA runs a kernel that never materialises the score matrix for these inputs."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None or not _TILED_KERNELS:
        return False
    try:
        return choose(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1]) in _TILED_KERNELS
    except (TypeError, RuntimeError):  # older signature or unsupported inputs: block to be safe
        return False


def _sdpa(q, k, v, mask, group: int) -> torch.Tensor:
    if group == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return _grouped_query_attention(q, k, v, mask, group)


def _grouped_query_attention(q, k, v, mask, group: int) -> torch.Tensor:
    """SDPA's native GQA avoids copying each cached key/value head ``group`` times (torch >= 2.5);
    older torch gets the explicit repeat, which gives the same values."""
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    except TypeError:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
