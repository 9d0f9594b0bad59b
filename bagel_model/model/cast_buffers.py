"""Reusable CPU buffers for the weights a layer casts to its compute dtype at use.

A model stored in one dtype and computing in another (bf16 weights, fp32 compute on a CPU without native bf16)
casts every weight per call (``ops.CastAtUse.use_weights``). Written into a freshly allocated tensor, that cast
cost ~10x more than the conversion itself on the CPU we measured (a 6-layer sequence of 11 MB weights: 0.45 s
vs 0.05 s): every new multi-megabyte block comes from the OS and is page-faulted and zeroed first. So inside a
``use_weights`` block the cast is written into a buffer that the next layer's cast reuses. The arithmetic is
unchanged (the same conversion, exact for bf16 -> fp32).

One buffer per (nesting depth, weight or bias, dtype) per thread, as large as the largest tensor cast so far,
up to ``MAX_KEPT_BYTES`` (larger ones, e.g. a 2 GB vocabulary head, are cast into a fresh tensor as before).
The memory estimate already counts one largest decoder weight in compute precision (checkpoint/memory.py);
the buffer keeps that much alive between calls. CUDA's caching allocator reuses blocks itself: no buffers there.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

MAX_KEPT_BYTES = 512 * 2 ** 20

_local = threading.local()


class CastSlot:
    """Where one tensor of a ``use_weights`` block is cast: a buffer per dtype, reused by later blocks."""

    def __init__(self):
        self.buffers: dict[torch.dtype, torch.Tensor] = {}

    def cast(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``tensor.to(dtype)`` on the CPU, in this slot's buffer when the size allows."""
        count = tensor.numel()
        if count * dtype.itemsize > MAX_KEPT_BYTES:
            return tensor.to(dtype)
        buffer = self.buffers.get(dtype)
        # A buffer made under inference mode cannot be written outside it (and the reverse): remake it then.
        if buffer is None or buffer.numel() < count or buffer.is_inference() != torch.is_inference_mode_enabled():
            buffer = self.buffers[dtype] = torch.empty(count, dtype=dtype)
        return buffer[:count].view(tensor.shape).copy_(tensor)


def _slots_at(depth: int) -> tuple[CastSlot, CastSlot]:
    levels = getattr(_local, "levels", None)
    if levels is None:
        levels = _local.levels = []
    while len(levels) <= depth:
        levels.append((CastSlot(), CastSlot()))
    return levels[depth]


@contextmanager
def borrowed_slots():
    """(weight slot, bias slot) for one ``use_weights`` block; a nested block gets its own pair."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield _slots_at(depth)
    finally:
        _local.depth = depth


def needs_cpu_cast(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> bool:
    """Whether reading ``tensor`` for a computation on ``device`` in ``dtype`` is a CPU-to-CPU dtype cast."""
    return (dtype is not None and tensor.dtype != dtype and device.type == "cpu" and tensor.device.type == "cpu"
            and not tensor.requires_grad)
