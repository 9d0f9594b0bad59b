"""ComfyUI's layer classes for the BAGEL core: the core's layers (bagel_model/model/ops.py) on ComfyUI's op
classes, so ModelPatcher (and, on newer ComfyUI, Dynamic VRAM) can leave any of them on the offload device and
ComfyUI's own cast moves them.

Linear (98 % of the weights) runs ComfyUI's own ``forward`` whenever ComfyUI streams or patches the layer
(``comfy_cast_weights``, set by ModelPatcher for a layer past the budget and by Dynamic VRAM for every layer;
``weight_function``): its cast brings the weight to the input's device in the input's dtype, so casting the
input to the model's compute dtype first gives exactly our arithmetic (``F.linear`` in the compute dtype, as
the official autocast does), and ComfyUI's faulting, pinned memory, async offload and weight patches apply as
each ComfyUI version does them. Resident, it runs the core's forward.

The other layers keep our ``forward`` where ComfyUI's arithmetic differs from the one the golden parity tests
pin (its RMSNorm rounds differently from Qwen2's; LayerNorm runs in fp32 on GPUs as the official autocast
does; tables gather their rows where they live instead of copying a 1 GB vocabulary table for a few tokens;
the NF4/INT8/FP8 Linears compute with their own kernels) and read their ``weight``/``bias`` through
``comfy.ops.cast_bias_weight`` when ComfyUI streams or patches them: on ComfyUI versions that have it, in its
``offloadable`` form, released with ``uncast_bias_weight`` when the computation is done (``use_weights``).
Every read is reported to the core's transfer ledger (bagel_model/model/transfer_ledger.py).

Two flavours, as ComfyUI's: ``disable_weight_init`` (cast only when streamed) and ``manual_cast`` (always through
the cast path: weights stored in another dtype than the compute dtype).
"""
import contextlib
import functools
import inspect

import torch
import torch.nn.functional as F

import comfy.ops

from bagel_model.model import ops as core_ops

# Core layer name -> the ComfyUI class it also derives from (None: ComfyUI has no numerically usable class).
_COMFY_BASES = {"Linear": "Linear", "Embedding": "Embedding", "LayerNorm": "LayerNorm",
                "GroupNorm": "GroupNorm", "Conv2d": "Conv2d", "RMSNorm": None, "PositionTable": None}

# ComfyUI 0.33+: cast_bias_weight(..., offloadable=True) returns (weight, bias, state) and the caller releases
# the copies (unpins Dynamic VRAM pages, lets the offload stream reuse its buffer) with uncast_bias_weight.
# 0.3.64 has the two-value form only.
OFFLOADABLE_CAST = ("offloadable" in inspect.signature(comfy.ops.cast_bias_weight).parameters
                    and hasattr(comfy.ops, "uncast_bias_weight"))


def _cast_by_comfy(layer) -> bool:
    return bool(layer.comfy_cast_weights or layer.weight_function or layer.bias_function)


def _report(layer, device: torch.device) -> None:
    """ComfyUI's cast reads ``weight`` and ``bias``: tell the transfer ledger."""
    layer.report_read(layer.weight, device)
    layer.report_read(layer.bias, device)


class _ComfyCast:
    """``use_weights`` / ``cast_weights`` through ComfyUI's transfer code when ComfyUI streams or patches the
    layer; the core's own read otherwise."""

    @contextlib.contextmanager
    def use_weights(self, x: torch.Tensor, dtype=None, bias_dtype=None):
        if not _cast_by_comfy(self):
            with super().use_weights(x, dtype, bias_dtype) as weights:
                yield weights
            return
        _report(self, x.device)
        kwargs = dict(device=x.device, dtype=dtype, bias_dtype=bias_dtype or dtype)
        if not OFFLOADABLE_CAST:
            yield comfy.ops.cast_bias_weight(self, **kwargs)
            return
        weight, bias, state = comfy.ops.cast_bias_weight(self, offloadable=True, **kwargs)
        try:
            yield weight, bias
        finally:
            comfy.ops.uncast_bias_weight(self, weight, bias, state)

    def cast_weights(self, x: torch.Tensor, dtype=None, bias_dtype=None):
        """For weights that must outlive a ``with`` block (the banded decoder's lazily computed rows): ComfyUI's
        plain (legacy) cast, whose copies stay valid."""
        if not _cast_by_comfy(self):
            return super().cast_weights(x, dtype, bias_dtype)
        _report(self, x.device)
        return comfy.ops.cast_bias_weight(self, device=x.device, dtype=dtype, bias_dtype=bias_dtype or dtype)


class _ComfyLinear(_ComfyCast):
    """Streamed or patched: ComfyUI's own forward on the input in the compute dtype (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _cast_by_comfy(self):
            return core_ops.Linear.forward(self, x)
        x = x.to(self.compute_dtype)
        _report(self, x.device)
        return comfy.ops.disable_weight_init.Linear.forward(self, x)


class _ComfyTable(_ComfyCast):
    """Tables gather their rows where they live (ours) unless ComfyUI patches the table itself."""

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weight_function:
            with self.use_weights(ids) as (weight, _):
                return F.embedding(ids, weight)
        return super().lookup(ids)


def _namespace_name(always_cast: bool) -> str:
    return "BagelManualCastOps" if always_cast else "BagelComfyOps"


def _layer_class(name: str, comfy_namespace, always_cast: bool) -> type:
    core_cls = getattr(core_ops, name)
    mixin = {"Embedding": _ComfyTable, "PositionTable": _ComfyTable, "Linear": _ComfyLinear}.get(name, _ComfyCast)
    comfy_name = _COMFY_BASES[name]
    marker = getattr(comfy_namespace, comfy_name) if comfy_name else comfy.ops.CastWeightBiasOp
    return type(name, (mixin, core_cls, marker), {"comfy_cast_weights": always_cast, "__module__": __name__,
                                                   "__qualname__": f"{_namespace_name(always_cast)}.{name}"})


@functools.lru_cache(maxsize=None)
def _castable(cls: type, always_cast: bool) -> type:
    """A layer built outside the namespace (the NF4/INT8/FP8 Linears made at load time) with ComfyUI's marker.
    Those already read their tensors on the input's device per call; the marker lets ModelPatcher leave them
    on the offload device; their ``weight``/``bias`` go through ComfyUI's transfer code when streamed (the scale,
    block scales and row scales through the core's ``fetch``). Same class name: the core recognises quantized
    Linears by it."""
    bases = (_ComfyCast, cls) if issubclass(cls, core_ops.CastAtUse) else (cls,)
    return type(cls.__name__, (*bases, comfy.ops.CastWeightBiasOp),
                {"comfy_cast_weights": always_cast, "__module__": __name__})


@functools.lru_cache(maxsize=None)
def _namespace(always_cast: bool) -> type:
    comfy_namespace = comfy.ops.manual_cast if always_cast else comfy.ops.disable_weight_init
    layers = {name: _layer_class(name, comfy_namespace, always_cast) for name in core_ops.LAYER_NAMES}
    layers["castable"] = staticmethod(lambda cls: _castable(cls, always_cast))
    return type(_namespace_name(always_cast), (core_ops.TorchOps,), layers)


def bagel_operations(storage_dtype: torch.dtype, compute_dtype: torch.dtype) -> type:
    """The namespace for a model stored in ``storage_dtype`` that computes in ``compute_dtype``."""
    return _namespace(storage_dtype != compute_dtype)


disable_weight_init = _namespace(False)
manual_cast = _namespace(True)
