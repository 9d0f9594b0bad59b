"""Attention over a context's cached keys plus a new block, via scaled_dot_product_attention.

Causal blocks use flash-attn's bottom-right alignment: new token j sees every cached key and new keys 0..j.
(SDPA's own ``is_causal`` is top-left aligned and would hide cached keys, so the mask is built here.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bottom_right_causal_mask(num_queries: int, num_keys: int, device) -> torch.Tensor:
    """Boolean (num_queries, num_keys) mask, True where attention is allowed."""
    offset = num_keys - num_queries
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(diagonal=offset)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """q: (Nq, heads, d); k, v: (Nk, kv_heads, d) with Nk >= Nq (cached keys first). Returns (Nq, heads·d).

    Grouped-query attention: each group of heads/kv_heads query heads shares one key/value head.
    """
    num_q, heads, head_dim = q.shape
    num_k, kv_heads, _ = k.shape
    mask = None
    if causal and num_q > 1:
        mask = bottom_right_causal_mask(num_q, num_k, q.device)
    qh = q.transpose(0, 1).unsqueeze(0)
    kh = k.transpose(0, 1).unsqueeze(0)
    vh = v.transpose(0, 1).unsqueeze(0)
    if kv_heads == heads:
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    else:
        out = _grouped_query_attention(qh, kh, vh, mask, heads // kv_heads)
    return out[0].transpose(0, 1).reshape(num_q, heads * head_dim)


def _grouped_query_attention(q, k, v, mask, group: int) -> torch.Tensor:
    """SDPA's native GQA avoids copying each cached key/value head ``group`` times (torch >= 2.5);
    older torch gets the explicit repeat, which gives the same values."""
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    except TypeError:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
