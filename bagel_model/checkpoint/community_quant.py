"""Community FP8 and INT8 BAGEL files presented in the stored form our quantized layers load.

Such files keep BAGEL's key names and store Linear weights as ``float8_e4m3fn`` or ``int8`` (docs/checkpoints.md
lists the files and what was read about them). Their scale layouts differ from ours (prequantized.py); this
store renames and reshapes the scales so ``load_prequantized_weights`` builds our streamable layers from the
file's own bytes, with no detour through bf16:

* FP8: ``<linear>.scale_weight`` (ours, and ComfyUI's scaled-fp8) or ``<linear>.weight_scale`` holding one
  number -> our per-tensor ``scale_weight``; no scale at all (a plain cast) -> a scale of 1. A per-row scale
  does not fit our per-tensor layer and is refused with the key named. Activation scales (``scale_input``,
  ``input_scale``) are not used by a weight-only layer and are left out (logged).
* INT8: bitsandbytes' ``<linear>.SCB`` (row absmax, weight = int8 * SCB / 127) as is; a per-row
  ``<linear>.weight_scale`` (weight = int8 * scale) -> ``SCB = 127 * scale``; ``weight_format`` is dropped.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import BagelCheckpointError

log = logging.getLogger(__name__)

FP8_DTYPE_NAME = "F8_E4M3"
INT8_DTYPE_NAME = "I8"
_FP8_SCALES = ("scale_weight", "weight_scale")
_IGNORED_SUFFIXES = ("scale_input", "input_scale", "weight_format")
_SCALE_SUFFIXES = ("scale_weight", "weight_scale", "SCB")


def quantized_dtype_of(header: dict) -> str | None:
    """``fp8_e4m3fn`` / ``int8`` when the header stores weights in that dtype, None for a full-precision file."""
    dtypes = {info["dtype"] for key, info in header.items() if key.endswith(".weight")}
    if FP8_DTYPE_NAME in dtypes:
        return "fp8_e4m3fn"
    if INT8_DTYPE_NAME in dtypes:
        return "int8"
    other_fp8 = sorted(d for d in dtypes if d.startswith("F8"))
    if other_fp8:
        raise BagelCheckpointError(
            f"The checkpoint stores weights as {other_fp8[0]}; this version loads float8_e4m3fn (F8_E4M3) and "
            f"int8 files. Use the bf16 checkpoint or an e4m3fn file.")
    return None


class CommunityQuantStore:
    """A ``TensorStore`` over ``inner`` (a community fp8/int8 file) in our pre-quantized key layout.

    ``linear_names``: the qualified names of the model's Linear layers (only their weights become quantized
    layers; an fp8 embedding or norm is read as a plain tensor and converted to the storage dtype, exactly)."""

    def __init__(self, inner, precision: str, linear_names: set[str]):
        self.inner, self.precision = inner, precision
        self.label, self.parent = inner.label, inner.parent
        self._virtual: dict[str, tuple[str, str]] = {}  # our key -> (rule, source key)
        self._header = self._translate(inner.header(), linear_names)

    def __str__(self) -> str:
        return self.label

    def header(self) -> dict:
        return self._header

    def _translate(self, source: dict, linear_names: set[str]) -> dict:
        header, ignored = {}, []
        quantized = FP8_DTYPE_NAME if self.precision == "fp8_e4m3fn" else INT8_DTYPE_NAME
        for key, info in source.items():
            module, _, attr = key.rpartition(".")
            if attr in _IGNORED_SUFFIXES:
                ignored.append(key)
            elif attr in _SCALE_SUFFIXES:
                continue  # placed with its weight below
            elif attr == "weight" and info["dtype"] == quantized and module in linear_names:
                header[key] = info
                self._add_scale(module, source, header)
            else:
                header[key] = info
        if ignored:
            log.info("%s: %d tensor(s) a weight-only layer does not use are left out, e.g. %s", self.label,
                     len(ignored), ignored[:3])
        return header

    def _add_scale(self, module: str, source: dict, header: dict) -> None:
        rows = source[f"{module}.weight"]["shape"][0]
        if self.precision == "fp8_e4m3fn":
            found = next((f"{module}.{s}" for s in _FP8_SCALES if f"{module}.{s}" in source), None)
            if found is not None and _numel(source[found]["shape"]) != 1:
                raise BagelCheckpointError(
                    f"{found} in {self.label} has shape {source[found]['shape']}: a per-row fp8 scale; this "
                    f"version's fp8 layer has one scale per tensor. Use the bf16 checkpoint with "
                    f"precision fp8_e4m3fn instead (it quantizes while loading).")
            self._virtual[f"{module}.scale_weight"] = ("fp8_scale", found)
            header[f"{module}.scale_weight"] = {"dtype": "F32", "shape": []}
            return
        if f"{module}.SCB" in source:
            self._virtual[f"{module}.SCB"] = ("copy", f"{module}.SCB")
        elif f"{module}.weight_scale" in source and _numel(source[f"{module}.weight_scale"]["shape"]) in (1, rows):
            self._virtual[f"{module}.SCB"] = ("int8_scale", f"{module}.weight_scale")
        else:
            raise BagelCheckpointError(
                f"{module}.weight in {self.label} is int8 but has no row scale ({module}.SCB or "
                f"{module}.weight_scale with {rows} values); the file cannot be dequantized. Use the bf16 "
                f"checkpoint with precision int8 instead.")
        header[f"{module}.SCB"] = {"dtype": "F32", "shape": [rows]}

    @contextmanager
    def reader(self) -> Iterator["_Reader"]:
        with self.inner.reader() as inner:
            yield _Reader(self, inner)


class _Reader:
    def __init__(self, store: CommunityQuantStore, inner):
        self._store, self._inner = store, inner

    def get_tensor(self, key: str) -> torch.Tensor:
        rule = self._store._virtual.get(key)
        if rule is None:
            return self._inner.get_tensor(key)
        kind, source = rule
        if kind == "fp8_scale":
            value = self._inner.get_tensor(source).float().reshape(()) if source else torch.ones(())
            return value.to(torch.float32)
        if kind == "copy":
            return self._inner.get_tensor(source).float().flatten()
        rows = self._store.header()[key]["shape"][0]
        return (self._inner.get_tensor(source).float().flatten() * 127.0).expand(rows).contiguous()


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
