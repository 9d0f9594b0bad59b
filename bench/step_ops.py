"""Records every ATen kernel one denoising step runs: its time, the bytes it writes, its FLOPs, and its kind.

A ``TorchDispatchMode`` sees the kernels below autograd (``F.linear`` arrives as ``addmm``, SDPA as the CPU
flash-attention kernel), times each one on its own (the thread's CPU time around the call, least disturbed by other jobs; the
mode's own Python is outside the timed span) and classifies it:

* by kernel name: GEMM (``mm``/``addmm``/``bmm``), attention (SDPA kernels), dtype casts (``_to_copy`` or a
  ``copy_`` that changes the dtype), gather/scatter/cat (``cat``, ``index``, ``index_put_``, same-dtype
  ``copy_``/``clone``: every copy that a view, a preallocated buffer or another layout could avoid);
* otherwise by the project function that called it: norms (``rms_norm``), RoPE (``apply_rope``/``rotate_half``),
  activations (``MLP.forward``'s SiLU and product); everything else (residual adds, embeddings, CFG combine,
  Euler update, views, allocations) is "rest".

The step's wall time minus the kernels' time is the Python and dispatch overhead between kernels.
"""
from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

KINDS = ("GEMM", "attention", "norms", "RoPE", "activations", "gather/scatter/cat", "dtype casts", "rest")
GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm"}
COPY_OPS = {"cat", "index", "index_put_", "index_select", "clone", "_unsafe_index", "stack"}
# Project functions whose elementwise kernels belong to one kind (innermost match wins).
CALLER_KINDS = {"rms_norm": "norms", "apply_rope": "RoPE", "rotate_half": "RoPE"}
CALLER_QUALNAMES = {"MLP.forward": "activations"}


def _name(func) -> str:
    return func.overloadpacket.__name__


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _out_bytes(out) -> int:
    if isinstance(out, (list, tuple)):
        return sum(_nbytes(t) for t in out)
    return _nbytes(out)


def _written(name: str, args, out) -> int:
    """Bytes a kernel writes to memory: copy_ its destination, a view nothing, the others their outputs."""
    if name == "copy_":
        return _nbytes(args[0])
    first = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if isinstance(out, torch.Tensor) and first is not None \
            and out.untyped_storage().data_ptr() == first.untyped_storage().data_ptr():
        return 0
    return _out_bytes(out)


def _caller_kind() -> str:
    frame = sys._getframe(3)
    while frame is not None:
        code = frame.f_code
        kind = CALLER_KINDS.get(code.co_name) or CALLER_QUALNAMES.get(getattr(code, "co_qualname", ""))
        if kind:
            return kind
        frame = frame.f_back
    return "rest"


def classify(name: str, args, kwargs) -> str:
    if name in GEMM_OPS:
        return "GEMM"
    if "scaled_dot_product" in name or name == "_safe_softmax":
        return "attention"
    if name == "_to_copy":
        return "dtype casts" if kwargs.get("dtype", args[0].dtype) != args[0].dtype else "gather/scatter/cat"
    if name == "copy_":
        return "dtype casts" if args[0].dtype != args[1].dtype else "gather/scatter/cat"
    if name in COPY_OPS:
        return "gather/scatter/cat"
    return _caller_kind()


def gemm_shape(name: str, args) -> tuple[int, int, int, int] | None:
    """(batch, M, K, N) of a matrix multiply."""
    if name == "addmm":
        a, b = args[1], args[2]
        return 1, a.shape[0], a.shape[1], b.shape[1]
    if name == "mm":
        return 1, args[0].shape[0], args[0].shape[1], args[1].shape[1]
    if name in ("bmm", "baddbmm"):
        a, b = (args[1], args[2]) if name == "baddbmm" else (args[0], args[1])
        return a.shape[0], a.shape[1], a.shape[2], b.shape[2]
    return None


def attention_flops(args) -> float:
    """QK^T and PV of SDPA: 4 · batch · heads · Nq · Nk · d."""
    q, k = args[0], args[1]
    return 4.0 * math.prod(q.shape[:-1]) * k.shape[-2] * q.shape[-1]


@dataclass
class StepRecord:
    seconds: dict = field(default_factory=lambda: defaultdict(float))
    calls: dict = field(default_factory=lambda: defaultdict(int))
    bytes_written: dict = field(default_factory=lambda: defaultdict(int))
    gemm_calls: dict = field(default_factory=lambda: defaultdict(int))  # (batch, M, K, N, dtype) -> calls
    flops: dict = field(default_factory=lambda: defaultdict(float))  # "GEMM" / "attention" -> FLOPs
    per_op: dict = field(default_factory=lambda: defaultdict(lambda: [0.0, 0, 0]))  # (kind, op) -> [s, calls, bytes]

    def kernel_seconds(self) -> float:
        return sum(self.seconds.values())


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.record = StepRecord()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        kind = classify(name, args, kwargs)
        start = time.thread_time()
        out = func(*args, **kwargs)
        elapsed = time.thread_time() - start
        rec = self.record
        rec.seconds[kind] += elapsed
        rec.calls[kind] += 1
        written = _written(name, args, out)
        if kind in ("gather/scatter/cat", "dtype casts"):
            rec.bytes_written[kind] += written
        entry = rec.per_op[(kind, name)]
        entry[0] += elapsed
        entry[1] += 1
        entry[2] += written
        shape = gemm_shape(name, args)
        if shape is not None:
            rec.gemm_calls[(*shape, out.dtype)] += 1
            rec.flops["GEMM"] += 2.0 * math.prod(shape)
        elif kind == "attention" and "scaled_dot_product" in name:
            rec.flops["attention"] += attention_flops(args)
        return out


def record_step(step) -> StepRecord:
    with torch.no_grad(), OpRecorder() as recorder:
        step()
    return recorder.record
