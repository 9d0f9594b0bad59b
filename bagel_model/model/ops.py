"""The weight-bearing layers of every BAGEL module, the ``operations`` namespace that injects them, and the
small numeric helpers they share.

Numerics: the official inference runs under CUDA bf16 autocast: every Linear computes and returns bf16 while
norms and softmax run in fp32. We make those casts explicit, keyed on one *compute dtype*, so the same code
gives the official rounding in bf16 and plain fp32/fp16 arithmetic otherwise, on any device, without autocast.

Streaming: every module builds its layers as ``operations.Linear(...)``, ``operations.RMSNorm(...)`` ...
(``TorchOps`` by default), and a layer reads its stored tensors only through ``cast_weights`` (or, for
tables, ``lookup``), which returns them on the input's device in the dtype the computation needs. So a memory
manager may keep any layer's weights on another device (host RAM) and the forward still works: it copies
them for that one call. A host application (the ComfyUI nodes) passes subclasses of these classes that route
``cast_weights`` through its own transfer code; the arithmetic stays the one defined here.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .cast_buffers import CastSlot, borrowed_slots, needs_cpu_cast
from .transfer_ledger import ledger, tensor_bytes

_PRECISION_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
                    torch.float8_e4m3fn: "fp8_e4m3fn", torch.int8: "int8"}


class CastAtUse:
    """Mixin for a layer whose tensors are read per call, on the input's device.

    ``stored(name)`` is the one place a layer's tensor is read (tests override it to prove that no other
    code reads weights directly); ``fetch`` reads one tensor through it and reports the read to the transfer
    ledger; ``use_weights`` / ``cast_weights`` are what host applications override to stream.
    """

    # Stored format named in the transfer ledger; None: the weight's dtype (bf16, fp16, fp32 ...).
    ledger_precision: str | None = None

    def stored(self, name: str) -> torch.Tensor | None:
        return getattr(self, name, None)

    def stored_precision(self) -> str:
        if self.ledger_precision:
            return self.ledger_precision
        weight = getattr(self, "weight", None)
        return "none" if weight is None else _PRECISION_NAMES.get(weight.dtype, str(weight.dtype))

    def report_read(self, tensor: torch.Tensor | None, device: torch.device, nbytes: int | None = None) -> None:
        """Tells the transfer ledger that ``tensor`` (or ``nbytes`` of it) is read for a computation on
        ``device``."""
        if tensor is not None:
            ledger.record(type(self).__name__, self.stored_precision(),
                          tensor_bytes(tensor) if nbytes is None else nbytes, tensor.device != device)

    def fetch(self, name: str, device: torch.device, dtype: torch.dtype | None = None,
              slot: CastSlot | None = None) -> torch.Tensor | None:
        """Stored tensor ``name`` on ``device`` in ``dtype`` (None keeps it), reported to the ledger as a read
        from where the layer holds it (its attribute: a test's ``stored`` may serve the values from elsewhere).
        ``.to()`` returns the tensor itself when it already has this device and dtype: no copy when resident.
        ``slot``: a CPU dtype cast is written into that reused buffer (valid until the slot's next cast)."""
        tensor = self.stored(name)
        if tensor is None:
            return None
        held = getattr(self, name, None)
        self.report_read(tensor if held is None else held, device)
        if slot is not None and needs_cpu_cast(tensor, device, dtype):
            return slot.cast(tensor, dtype)
        return tensor.to(device=device, dtype=dtype)

    def cast_weights(self, x: torch.Tensor, dtype: torch.dtype | None = None,
                     bias_dtype: torch.dtype | None = None):
        """(weight, bias) on ``x``'s device; ``dtype`` None keeps the stored dtype."""
        return self.fetch("weight", x.device, dtype), self.fetch("bias", x.device, bias_dtype or dtype)

    @contextmanager
    def use_weights(self, x: torch.Tensor, dtype: torch.dtype | None = None,
                    bias_dtype: torch.dtype | None = None):
        """``cast_weights`` for the duration of a ``with`` block: a host that streams may release (unpin,
        evict) the copies when the block ends, so the tensors must not be used after it. On the CPU a dtype cast
        goes into a buffer that later blocks reuse (cast_buffers.py: a fresh allocation costs more than the
        cast)."""
        with borrowed_slots() as (weight_slot, bias_slot):
            yield (self.fetch("weight", x.device, dtype, weight_slot),
                   self.fetch("bias", x.device, bias_dtype or dtype, bias_slot))


class Linear(CastAtUse, nn.Linear):
    """nn.Linear whose input and weight are cast to ``compute_dtype``; the output has ``compute_dtype``.

    ``compute_dtype`` is set on every Linear of a model by ``set_compute_dtype``; quantized replacements
    (bitsandbytes) honour the same contract.
    """

    compute_dtype: torch.dtype = torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        with self.use_weights(x, dtype) as (weight, bias):
            return F.linear(x.to(dtype), weight, bias)


class Embedding(CastAtUse, nn.Embedding):
    """Token table: rows are gathered where the table lives and only those rows move to the ids' device
    (streaming a 1 GB vocabulary table to look up a few tokens would be wasteful)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bias = None  # host cast helpers read .bias of every layer

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        table = self.stored("weight")
        rows = F.embedding(ids.to(table.device), table)
        # Only the gathered rows are read and moved; reported from where the layer holds its table.
        self.report_read(getattr(self, "weight", None), ids.device, tensor_bytes(rows))
        return rows.to(ids.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lookup(ids)


class PositionTable(CastAtUse, nn.Module):
    """A fixed sin-cos table (looked up, never learned), held as ``weight`` like every other layer's main
    tensor (hosts such as ComfyUI read ``weight``/``bias`` of every streamable layer) and stored in the
    checkpoint as ``pos_embed``: the state dict uses the checkpoint name (``checkpoint_names``)."""

    checkpoint_names = {"weight": "pos_embed"}

    def __init__(self, side: int, width: int, device=None, dtype=None):
        super().__init__()
        self.side = side
        self.weight = nn.Parameter(torch.zeros(side * side, width, device=device, dtype=dtype),
                                   requires_grad=False)
        self.bias = None

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "pos_embed"] = destination.pop(prefix + "weight")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "pos_embed" in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(prefix + "pos_embed")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    lookup = Embedding.lookup
    forward = Embedding.forward


def checkpoint_name(layer: nn.Module, attr: str) -> str:
    """The checkpoint key suffix of a layer's attribute (equal to the attribute name except for
    ``PositionTable.weight``, stored as ``pos_embed``)."""
    return getattr(layer, "checkpoint_names", {}).get(attr, attr)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2 RMSNorm: normalise in fp32, round back to the input dtype, then scale (dtype promotes)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


class RMSNorm(CastAtUse, nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.bias = None
        self.eps = eps

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``dtype``: the dtype the weight is cast to (default: the input's)."""
        with self.use_weights(x, dtype or x.dtype) as (weight, _):
            return rms_norm(x, weight, self.eps)


def reduces_in_fp32(x: torch.Tensor) -> bool:
    """Whether the official code's autocast runs LayerNorm / vector norms of ``x`` in fp32.

    CUDA autocast promotes them to fp32; CPU autocast keeps the input dtype. Mirroring both keeps our results
    closest to the official implementation on each device type (identical when computing in fp32).
    """
    return x.device.type != "cpu"


class LayerNorm(CastAtUse, nn.LayerNorm):
    """SigLIP LayerNorm with the official autocast dtype: fp32 result on GPUs, input dtype on CPUs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if reduces_in_fp32(x) else x.dtype
        with self.use_weights(x, dtype) as (weight, bias):
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)


class GroupNorm(CastAtUse, nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.use_weights(x) as (weight, bias):
            return F.group_norm(x, self.num_groups, weight, bias, self.eps)


class Conv2d(CastAtUse, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.use_weights(x) as (weight, bias):
            return self._conv_forward(x, weight, bias)


class TorchOps:
    """The default ``operations`` namespace: the torch-only layers above.

    ``castable(cls)`` returns the class to instantiate for a layer built outside the namespace (the
    bitsandbytes NF4/INT8 Linears that replace Linears at load time); a host adds its streaming marker there.
    """

    Linear = Linear
    Embedding = Embedding
    PositionTable = PositionTable
    RMSNorm = RMSNorm
    LayerNorm = LayerNorm
    GroupNorm = GroupNorm
    Conv2d = Conv2d

    @staticmethod
    def castable(cls: type) -> type:
        return cls


LAYER_NAMES = ("Linear", "Embedding", "PositionTable", "RMSNorm", "LayerNorm", "GroupNorm", "Conv2d")


def set_compute_dtype(module: nn.Module, dtype: torch.dtype) -> None:
    """Sets the compute dtype on every submodule that has one (Linear layers, attention, the LM)."""
    for sub in module.modules():
        if hasattr(sub, "compute_dtype"):
            sub.compute_dtype = dtype


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")
