"""Qwen2 Mixture-of-Transformers decoder: two full expert weight sets per layer, one joint attention.

Every token is routed to the understanding expert ("und": original Qwen2 names) or the generation expert
("gen": ``*_moe_gen`` names). A call gives its tokens as segments ``(start, end, expert)``; latent tokens use
the gen expert, text/ViT tokens and the image marker tokens the und expert. Module attribute names equal the
checkpoint keys (``language_model.model.layers.{i}.self_attn.q_proj_moe_gen.weight`` ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LLMConfig
from .attention import attend, bottom_right_causal_mask
from .embeddings import apply_rope
from .kv_cache import Context
from .ops import TorchOps

UND, GEN = "und", "gen"


Streams = dict  # expert ("und"/"gen") -> that expert's rows of a block, in block order


class BranchAttention(Protocol):
    """Attention of several CFG branches stacked in one block, each to its own context (the layout is
    ``branches.BranchLayout``, which builds on this module; the decoder only needs this one method)."""

    def attend(self, q: Streams, k: Streams, v: Streams, layer: int) -> Streams:
        ...


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    expert: str


@dataclass
class Block:
    """What one LM call processes and how: the routing, the positions' cos/sin, causality, cache update.

    Inside the decoder a block's rows travel as one tensor per expert ("streams": ``split``), so norms,
    projections and MLPs read their expert's rows in place and nothing is gathered or scattered per layer; the
    rows are put back in block order only for attention (``join``), which needs them anyway. Everything that
    depends on the block alone (the row plan, each expert's cos/sin in each dtype, the causal mask) is computed
    once per call, not once per layer."""

    segments: list[Segment]
    cos: torch.Tensor
    sin: torch.Tensor
    causal: bool
    fp32_qk: bool  # gen-mode calls normalise Q/K and apply RoPE in fp32 (official numerics, spec §3.3)
    # Several CFG branches of one denoise query stacked on the token axis; each attends to its own context.
    branches: BranchAttention | None = None
    _per_call: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_rows(self) -> int:
        return sum(s.end - s.start for s in self.segments)

    def ranges(self) -> dict[str, list[tuple[int, int]]]:
        """Expert -> its (start, end) row ranges in block order (und first, as the expert calls run)."""
        if "ranges" not in self._per_call:
            ranges = {expert: [(s.start, s.end) for s in self.segments if s.expert == expert]
                      for expert in (UND, GEN)}
            self._per_call["ranges"] = {expert: r for expert, r in ranges.items() if r}
        return self._per_call["ranges"]

    def split(self, x: torch.Tensor) -> Streams:
        """Block-ordered rows -> streams (views where an expert owns one range)."""
        return {expert: x[r[0][0]:r[0][1]] if len(r) == 1 else torch.cat([x[a:b] for a, b in r])
                for expert, r in self.ranges().items()}

    def join(self, streams: Streams) -> torch.Tensor:
        """Streams -> block-ordered rows (no copy for a one-expert block)."""
        if len(streams) == 1:
            return next(iter(streams.values()))
        pieces, offsets = [], dict.fromkeys(streams, 0)
        for s in self.segments:
            offset = offsets[s.expert]
            pieces.append(streams[s.expert][offset:offset + s.end - s.start])
            offsets[s.expert] = offset + s.end - s.start
        return torch.cat(pieces)

    def rope(self, dtype: torch.dtype | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each expert's rows of cos/sin, in ``dtype`` (None: as given)."""
        key = ("rope", dtype)
        if key not in self._per_call:
            cos, sin = (self.cos, self.sin) if dtype is None else (self.cos.to(dtype), self.sin.to(dtype))
            cos, sin = self.split(cos), self.split(sin)
            self._per_call[key] = {expert: (cos[expert], sin[expert]) for expert in cos}
        return self._per_call[key]

    def causal_mask(self, num_keys: int, device) -> torch.Tensor | None:
        """The bottom-right causal mask of this block against ``num_keys`` keys (None when not causal)."""
        if not self.causal or self.num_rows == 1:
            return None
        key = ("mask", num_keys)
        if key not in self._per_call:
            self._per_call[key] = bottom_right_causal_mask(self.num_rows, num_keys, device)
        return self._per_call[key]


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


def expert_layer(owner: nn.Module, name: str, expert: str) -> nn.Module:
    """``owner.q_proj`` or ``owner.q_proj_moe_gen`` ... by expert (looked up per call: a loader may replace
    layers after the model is built)."""
    return getattr(owner, name if expert == UND else f"{name}_moe_gen")


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

    def _norm_rope(self, x: torch.Tensor, which: str, expert: str, block: Block, heads: int) -> torch.Tensor:
        x = x.view(-1, heads, self.head_dim)
        norm = expert_layer(self, f"{which}_norm", expert)
        if block.fp32_qk:
            cos, sin = block.rope(torch.float32)[expert]
            return apply_rope(norm(x.float(), torch.float32), cos, sin).to(x.dtype)
        cos, sin = block.rope(None)[expert]
        return apply_rope(norm(x), cos, sin)

    def forward(self, x: Streams, block: Block, context: Context | None, layer: int, update: bool) -> Streams:
        q, k, v = {}, {}, {}
        for expert, rows in x.items():
            q[expert] = self._norm_rope(expert_layer(self, "q_proj", expert)(rows), "q", expert, block,
                                        self.num_heads)
            k[expert] = self._norm_rope(expert_layer(self, "k_proj", expert)(rows), "k", expert, block,
                                        self.num_kv_heads)
            v[expert] = expert_layer(self, "v_proj", expert)(rows).view(-1, self.num_kv_heads, self.head_dim)
        if block.branches is not None:
            out = block.branches.attend(q, k, v, layer)
        else:
            out = block.split(self._attend_context(block.join(q), block.join(k), block.join(v), block, context,
                                                   layer, update))
        return {expert: expert_layer(self, "o_proj", expert)(rows) for expert, rows in out.items()}

    @staticmethod
    def _attend_context(q, k, v, block: Block, context: Context, layer: int, update: bool) -> torch.Tensor:
        past_k = context.cache.keys(layer, context.length)
        past_v = context.cache.values(layer, context.length)
        if update:
            context.cache.write(layer, context.length, k, v)
        if past_k is not None:
            k, v = torch.cat([past_k.to(k.dtype), k]), torch.cat([past_v.to(v.dtype), v])
        return attend(q, k, v, block.causal, block.causal_mask(k.shape[0], q.device))


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

    def forward(self, x: Streams | torch.Tensor, block: Block, context: Context | None, layer: int, update: bool):
        """``x``: the block's rows split by expert (what the decoder passes; returns them the same way), or the
        block-ordered rows (returns block-ordered rows)."""
        if isinstance(x, torch.Tensor):
            return block.join(self._on_streams(block.split(x), block, context, layer, update))
        return self._on_streams(x, block, context, layer, update)

    def _on_streams(self, x: Streams, block: Block, context: Context | None, layer: int, update: bool) -> Streams:
        normed = {expert: expert_layer(self, "input_layernorm", expert)(rows) for expert, rows in x.items()}
        attended = self.self_attn(normed, block, context, layer, update)
        h = {expert: rows + attended[expert] for expert, rows in x.items()}
        normed = {expert: expert_layer(self, "post_attention_layernorm", expert)(rows)
                  for expert, rows in h.items()}
        return {expert: rows + expert_layer(self, "mlp", expert)(normed[expert]) for expert, rows in h.items()}


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
        return block.join(self.run_layer_streams(block.split(x), block, context, update))

    def run_layer_streams(self, x: Streams, block: Block, context: Context | None, update: bool) -> Streams:
        """``run_layers`` on the block's rows split by expert (``Block.split``); returns them split the same way."""
        if update and not context.owns_tail:
            raise RuntimeError("cannot append to a context snapshot that shares its cache with a longer one")
        for index, layer in enumerate(self.layers):
            x = layer(x, block, context, index, update)
        if update:
            context.length += block.num_rows
            context.cache.length = context.length
        return x

    def final_norm(self, x: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        return per_expert(x, segments, self.norm, self.norm_moe_gen)


class Qwen2ForCausalLM(nn.Module):
    def __init__(self, config: LLMConfig, operations=TorchOps):
        super().__init__()
        self.model = Qwen2MoTModel(config, operations)
        self.lm_head = operations.Linear(config.hidden_size, config.vocab_size, bias=False)
