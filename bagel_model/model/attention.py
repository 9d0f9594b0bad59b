"""Attention over a context's cached keys plus a new block, via scaled_dot_product_attention.

Causal blocks use flash-attn's bottom-right alignment: new token j sees every cached key and new keys 0..j.
(SDPA's own ``is_causal`` is top-left aligned and would hide cached keys, so the mask is built here.)

SDPA picks its kernel by device, dtype, mask and head layout; its math fallback (e.g. GQA with a mask, fp32 or
fp16 on cards without flash attention) materialises the full (heads, queries, keys) score matrix, 2.7 GB in
fp32 for a 4.9 k-token ViT prefill. So queries are processed in blocks whose score matrix stays under
``SCORE_BLOCK_BYTES`` whatever kernel runs: each query row's result does not depend on the other rows, so the
blocks give the unblocked result (tested), and the memory estimate counts one block (checkpoint/memory.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bottom_right_causal_mask(num_queries: int, num_keys: int, device) -> torch.Tensor:
    """Boolean (num_queries, num_keys) mask, True where attention is allowed."""
    offset = num_keys - num_queries
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(diagonal=offset)


SCORE_BLOCK_BYTES = 64 * 2 ** 20  # fp32 scores of one query block, the most a math-kernel fallback holds


def query_block(heads: int, num_keys: int) -> int:
    """Queries per block so that one block's fp32 score matrix stays under ``SCORE_BLOCK_BYTES``."""
    return max(1, SCORE_BLOCK_BYTES // (4 * heads * max(1, num_keys)))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """q: (Nq, heads, d); k, v: (Nk, kv_heads, d) with Nk >= Nq (cached keys first). Returns (Nq, heads·d).

    Grouped-query attention: each group of heads/kv_heads query heads shares one key/value head.
    """
    num_q, heads, head_dim = q.shape
    num_k, kv_heads, _ = k.shape
    mask = None
    if causal and num_q > 1:
        mask = bottom_right_causal_mask(num_q, num_k, q.device)
    kh = k.transpose(0, 1).unsqueeze(0)
    vh = v.transpose(0, 1).unsqueeze(0)
    block = query_block(heads, num_k)
    out = q.new_empty(num_q, heads * head_dim)
    for start in range(0, num_q, block):
        rows = slice(start, min(num_q, start + block))
        qh = q[rows].transpose(0, 1).unsqueeze(0)
        block_mask = None if mask is None else mask[rows]
        if kv_heads == heads:
            part = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=block_mask)
        else:
            part = _grouped_query_attention(qh, kh, vh, block_mask, heads // kv_heads)
        out[rows] = part[0].transpose(0, 1).reshape(-1, heads * head_dim)
    return out


def _grouped_query_attention(q, k, v, mask, group: int) -> torch.Tensor:
    """SDPA's native GQA avoids copying each cached key/value head ``group`` times (torch >= 2.5);
    older torch gets the explicit repeat, which gives the same values."""
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    except TypeError:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
