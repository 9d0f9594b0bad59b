"""Qwen2 Mixture-of-Transformers decoder: two full expert weight sets per layer, one joint attention.

Every token is routed to the understanding expert ("und": original Qwen2 names) or the generation expert
("gen": ``*_moe_gen`` names). A call gives its tokens as segments ``(start, end, expert)``; latent tokens use
the gen expert, text/ViT tokens and the image marker tokens the und expert. Module attribute names equal the
checkpoint keys (``language_model.model.layers.{i}.self_attn.q_proj_moe_gen.weight`` ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LLMConfig
from .attention import attend
from .embeddings import apply_rope
from .kv_cache import Context
from .ops import TorchOps

UND, GEN = "und", "gen"


class BranchAttention(Protocol):
    """Attention of several CFG branches stacked in one block, each to its own context (the layout is
    ``branches.BranchLayout``, which builds on this module; the decoder only needs this one method)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        ...


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    expert: str


@dataclass
class Block:
    """What one LM call processes and how: the routing, the positions' cos/sin, causality, cache update."""

    segments: list[Segment]
    cos: torch.Tensor
    sin: torch.Tensor
    causal: bool
    fp32_qk: bool  # gen-mode calls normalise Q/K and apply RoPE in fp32 (official numerics, spec §3.3)
    # Several CFG branches of one denoise query stacked on the token axis; each attends to its own context.
    branches: BranchAttention | None = None


def per_expert(x: torch.Tensor, segments: list[Segment], und, gen) -> torch.Tensor:
    """Applies ``und`` or ``gen`` to the rows of each segment and returns the rows in their original order.

    All rows of one expert go through one call (gathered, then scattered back), so a block reads each expert's
    weights once whatever its layout: the image markers around a VAE block, or the markers of every CFG branch
    of a batched denoise call, share one und-expert call (a streamed expert is copied once per LM call)."""
    if len(segments) == 1:
        return (und if segments[0].expert == UND else gen)(x)
    out = None
    for expert, fn in ((UND, und), (GEN, gen)):
        mine = [s for s in segments if s.expert == expert]
        if not mine:
            continue
        rows = x[mine[0].start:mine[0].end] if len(mine) == 1 else torch.cat([x[s.start:s.end] for s in mine])
        result = fn(rows)
        if out is None:
            out = result.new_empty((x.shape[0], *result.shape[1:]))
        offset = 0
        for s in mine:
            out[s.start:s.end] = result[offset:offset + s.end - s.start]
            offset += s.end - s.start
    return out


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, operations=TorchOps):
        super().__init__()
        self.gate_proj = operations.Linear(hidden, intermediate, bias=False)
        self.up_proj = operations.Linear(hidden, intermediate, bias=False)
        self.down_proj = operations.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoTAttention(nn.Module):
    def __init__(self, config: LLMConfig, operations=TorchOps):
        super().__init__()
        hidden, head_dim = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, \
            config.num_key_value_heads, head_dim
        q_out, kv_out = self.num_heads * head_dim, self.num_kv_heads * head_dim
        for suffix in ("", "_moe_gen"):
            setattr(self, f"q_proj{suffix}", operations.Linear(hidden, q_out, bias=True))
            setattr(self, f"k_proj{suffix}", operations.Linear(hidden, kv_out, bias=True))
            setattr(self, f"v_proj{suffix}", operations.Linear(hidden, kv_out, bias=True))
            setattr(self, f"o_proj{suffix}", operations.Linear(q_out, hidden, bias=False))
            setattr(self, f"q_norm{suffix}", operations.RMSNorm(head_dim, config.rms_norm_eps))
            setattr(self, f"k_norm{suffix}", operations.RMSNorm(head_dim, config.rms_norm_eps))

    def _norm_rope(self, x: torch.Tensor, which: str, block: Block, heads: int) -> torch.Tensor:
        x = x.view(-1, heads, self.head_dim)
        norm_und, norm_gen = getattr(self, f"{which}_norm"), getattr(self, f"{which}_norm_moe_gen")
        if block.fp32_qk:
            out_dtype = x.dtype
            x = per_expert(x.float(), block.segments, lambda t: norm_und(t, torch.float32),
                           lambda t: norm_gen(t, torch.float32))
            return apply_rope(x, block.cos.float(), block.sin.float()).to(out_dtype)
        x = per_expert(x, block.segments, norm_und, norm_gen)
        return apply_rope(x, block.cos, block.sin)

    def forward(self, x: torch.Tensor, block: Block, context: Context, layer: int, update: bool):
        segs = block.segments
        q = per_expert(x, segs, self.q_proj, self.q_proj_moe_gen)
        k = per_expert(x, segs, self.k_proj, self.k_proj_moe_gen)
        v = per_expert(x, segs, self.v_proj, self.v_proj_moe_gen).view(-1, self.num_kv_heads, self.head_dim)
        q = self._norm_rope(q, "q", block, self.num_heads)
        k = self._norm_rope(k, "k", block, self.num_kv_heads)
        if block.branches is not None:
            out = block.branches.attend(q, k, v, layer)
            return per_expert(out, segs, self.o_proj, self.o_proj_moe_gen)
        past_k = context.cache.keys(layer, context.length)
        past_v = context.cache.values(layer, context.length)
        if update:
            context.cache.write(layer, context.length, k, v)
        if past_k is not None:
            k_all, v_all = torch.cat([past_k.to(k.dtype), k]), torch.cat([past_v.to(v.dtype), v])
        else:
            k_all, v_all = k, v
        out = attend(q, k_all, v_all, block.causal)
        return per_expert(out, segs, self.o_proj, self.o_proj_moe_gen)


class MoTDecoderLayer(nn.Module):
    def __init__(self, config: LLMConfig, operations=TorchOps):
        super().__init__()
        hidden, eps, norm = config.hidden_size, config.rms_norm_eps, operations.RMSNorm
        self.self_attn = MoTAttention(config, operations)
        self.mlp = MLP(hidden, config.intermediate_size, operations)
        self.mlp_moe_gen = MLP(hidden, config.intermediate_size, operations)
        self.input_layernorm = norm(hidden, eps)
        self.input_layernorm_moe_gen = norm(hidden, eps)
        self.post_attention_layernorm = norm(hidden, eps)
        self.post_attention_layernorm_moe_gen = norm(hidden, eps)

    def forward(self, x: torch.Tensor, block: Block, context: Context, layer: int, update: bool):
        segs = block.segments
        normed = per_expert(x, segs, self.input_layernorm, self.input_layernorm_moe_gen)
        h = x + self.self_attn(normed, block, context, layer, update)
        normed = per_expert(h, segs, self.post_attention_layernorm, self.post_attention_layernorm_moe_gen)
        return h + per_expert(normed, segs, self.mlp, self.mlp_moe_gen)


class Qwen2MoTModel(nn.Module):
    def __init__(self, config: LLMConfig, operations=TorchOps):
        super().__init__()
        self.config = config
        self.embed_tokens = operations.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MoTDecoderLayer(config, operations) for _ in range(config.num_hidden_layers))
        self.norm = operations.RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.norm_moe_gen = operations.RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, block: Block, context: Context, update: bool) -> torch.Tensor:
        """Runs every layer on the packed block ``x`` (tokens, hidden) attending to ``context``.

        With ``update`` the block's keys/values are appended to the context (length and cache grow);
        otherwise the cache is read only (the block being denoised is never cached).
        """
        return self.final_norm(self.run_layers(x, block, context, update), block.segments)

    def run_layers(self, x: torch.Tensor, block: Block, context: Context | None, update: bool) -> torch.Tensor:
        """Every decoder layer without the final norm (the step cache stores and extrapolates this output).
        ``context`` is unused (None) for a block with ``branches``."""
        if update and not context.owns_tail:
            raise RuntimeError("cannot append to a context snapshot that shares its cache with a longer one")
        for index, layer in enumerate(self.layers):
            x = layer(x, block, context, index, update)
        if update:
            context.length += x.shape[0]
            context.cache.length = context.length
        return x

    def final_norm(self, x: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        return per_expert(x, segments, self.norm, self.norm_moe_gen)


class Qwen2ForCausalLM(nn.Module):
    def __init__(self, config: LLMConfig, operations=TorchOps):
        super().__init__()
        self.model = Qwen2MoTModel(config, operations)
        self.lm_head = operations.Linear(config.hidden_size, config.vocab_size, bias=False)
