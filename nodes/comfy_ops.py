"""ComfyUI's layer classes for the BAGEL core: the core's own layers (bagel_model/model/ops.py) with ComfyUI's
streaming marker, so ModelPatcher can leave any of them on the offload device.

Why subclasses of ours and not ComfyUI's classes as they are: their arithmetic differs from the one our golden
parity tests pin (ComfyUI's RMSNorm rounds differently from Qwen2's; its Linear computes in the input dtype
where ours casts input and weight to the model's compute dtype, as the official autocast does; its Embedding
copies the whole table to the GPU for a few rows). So every class here keeps our ``forward`` and only routes
``cast_weights`` through ``comfy.ops.cast_bias_weight`` when ComfyUI streams the layer (``comfy_cast_weights``,
set by ModelPatcher for a layer past the budget) or patches its weights (``weight_function``). Where a ComfyUI
class exists for the layer it is a base too, so ComfyUI code that checks ``isinstance(m, comfy.ops.*)``
sees what it expects.

Two flavours, as ComfyUI's: ``disable_weight_init`` (cast only when streamed) and ``manual_cast`` (always through
the cast path: weights stored in another dtype than the compute dtype).
"""
import functools

import torch
import torch.nn.functional as F

import comfy.ops

from bagel_model.model import ops as core_ops

# Core layer name -> the ComfyUI class it also derives from (None: ComfyUI has no numerically usable class).
_COMFY_BASES = {"Linear": "Linear", "Embedding": "Embedding", "LayerNorm": "LayerNorm",
                "GroupNorm": "GroupNorm", "Conv2d": "Conv2d", "RMSNorm": None, "PositionTable": None}


def _cast_by_comfy(layer) -> bool:
    return bool(layer.comfy_cast_weights or layer.weight_function or layer.bias_function)


class _ComfyCast:
    """``cast_weights`` through ComfyUI's transfer code (offload stream, non-blocking copies, weight patches)."""

    def cast_weights(self, x: torch.Tensor, dtype=None, bias_dtype=None):
        if _cast_by_comfy(self):
            return comfy.ops.cast_bias_weight(self, device=x.device, dtype=dtype, bias_dtype=bias_dtype or dtype)
        return super().cast_weights(x, dtype, bias_dtype)


class _ComfyTable(_ComfyCast):
    """Tables gather their rows where they live (ours) unless ComfyUI patches the table itself."""

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weight_function:
            weight, _ = self.cast_weights(ids)
            return F.embedding(ids, weight)
        return super().lookup(ids)


def _namespace_name(always_cast: bool) -> str:
    return "BagelManualCastOps" if always_cast else "BagelComfyOps"


def _layer_class(name: str, comfy_namespace, always_cast: bool) -> type:
    core_cls = getattr(core_ops, name)
    mixin = _ComfyTable if name in ("Embedding", "PositionTable") else _ComfyCast
    comfy_name = _COMFY_BASES[name]
    marker = getattr(comfy_namespace, comfy_name) if comfy_name else comfy.ops.CastWeightBiasOp
    return type(name, (mixin, core_cls, marker), {"comfy_cast_weights": always_cast, "__module__": __name__,
                                                   "__qualname__": f"{_namespace_name(always_cast)}.{name}"})


@functools.lru_cache(maxsize=None)
def _castable(cls: type, always_cast: bool) -> type:
    """A layer built outside the namespace (the NF4/INT8/FP8 Linears made at load time) with ComfyUI's marker.
    Those already read their tensors on the input's device per call; the marker lets ModelPatcher leave them
    on the offload device. A core cast-at-use layer (FP8: ``cast_weights`` then its scale) also gets ComfyUI's
    transfer code when streamed. Same class name: the core recognises quantized Linears by it."""
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
