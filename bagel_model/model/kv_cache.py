"""Per-layer key/value cache with bounded growth, and contexts that view a prefix of it.

The official code deep-copies whole caches to make CFG contexts and to decode text. Contexts here are
append-only, and every CFG context of the official flows is either a prefix of another context or built from
text alone, so a context is just (cache, length, rope position): a prefix is free to share, and text decoding
appends past the end and then truncates back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# A layer's buffer grows to what the write needs plus this many tokens (room for the next decoded tokens), not
# to twice its size: a cache holds at most its tokens + GROWTH_TOKENS per layer, and while one layer grows its
# old buffer coexists with the new one (layers grow one after the other). ``peak_tokens`` is that bound, which
# the memory estimate uses (checkpoint/memory.py).
GROWTH_TOKENS = 256


def peak_tokens(tokens: int, num_layers: int) -> float:
    """Upper bound of the live cache, in tokens of all layers, for a cache that ends with ``tokens`` tokens:
    every layer's buffer (tokens + growth room) plus one layer's old buffer while it grows."""
    return num_layers * (tokens + GROWTH_TOKENS) + tokens


class KVCache:
    """Keys (after QK-norm and RoPE) and values per layer, each (tokens, kv_heads, head_dim)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self._keys: list[torch.Tensor | None] = [None] * num_layers
        self._values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0

    def keys(self, layer: int, length: int) -> torch.Tensor | None:
        buf = self._keys[layer]
        return None if buf is None or length == 0 else buf[:length]

    def values(self, layer: int, length: int) -> torch.Tensor | None:
        buf = self._values[layer]
        return None if buf is None or length == 0 else buf[:length]

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Stores new keys/values at positions ``start..``; earlier positions are kept, later ones dropped."""
        end = start + keys.shape[0]
        self._keys[layer] = _grow(self._keys[layer], end, keys)
        self._values[layer] = _grow(self._values[layer], end, values)
        self._keys[layer][start:end] = keys
        self._values[layer][start:end] = values

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def nbytes(self) -> int:
        total = 0
        for buf in self._keys + self._values:
            if buf is not None:
                total += buf[: self.length].numel() * buf.element_size()
        return total


def _grow(buffer: torch.Tensor | None, needed: int, like: torch.Tensor) -> torch.Tensor:
    if buffer is not None and buffer.shape[0] >= needed and buffer.dtype == like.dtype \
            and buffer.device == like.device:
        return buffer
    capacity = needed + GROWTH_TOKENS
    grown = like.new_empty((capacity, *like.shape[1:]))
    if buffer is not None:
        old = min(buffer.shape[0], needed)
        grown[:old] = buffer[:old].to(like.dtype)
    return grown


@dataclass
class Context:
    """A conditioning context: the first ``length`` cached tokens of ``cache`` and the next RoPE position."""

    cache: KVCache
    length: int = 0
    rope: int = 0

    @classmethod
    def empty(cls, num_layers: int) -> "Context":
        return cls(KVCache(num_layers))

    def snapshot(self) -> "Context":
        """A read-only view of this context as it is now (later appends to ``self`` do not change it)."""
        return Context(self.cache, self.length, self.rope)

    @property
    def owns_tail(self) -> bool:
        """True when appending to this context will not overwrite tokens another context still uses."""
        return self.cache.length == self.length
