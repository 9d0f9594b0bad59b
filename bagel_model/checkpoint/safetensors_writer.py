"""Writes a safetensors file one tensor at a time.

``safetensors.torch.save_file`` serialises every tensor to bytes before writing, so saving a 9 GB model would
need another 9 GB of host memory (and a host copy of every GPU tensor at once). Here the header is computed
from shapes and dtypes alone, then each tensor is copied to the host and written on its own.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable

import torch

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
}


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _header(tensors: list[tuple[str, torch.Tensor]], metadata: dict[str, str] | None) -> bytes:
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in tensors:
        if tensor.dtype not in _DTYPE_NAMES:
            raise ValueError(f"Tensor {name} has dtype {tensor.dtype}, which safetensors cannot store.")
        end = offset + _nbytes(tensor)
        header[name] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # The data section starts 8-byte aligned, as the reference writer does (readers may rely on it).
    return raw + b" " * (-len(raw) % 8)


def write_safetensors(path: str | Path, tensors: Iterable[tuple[str, torch.Tensor]],
                      metadata: dict[str, str] | None = None) -> int:
    """Writes ``tensors`` (name, tensor on any device) to ``path`` atomically; returns the file size.

    The file is written under a temporary name and renamed at the end, so an interrupted save never leaves a
    file that looks complete.
    """
    path = Path(path)
    items = list(tensors)
    names = [name for name, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate tensor names while writing {path}.")
    header = _header(items, metadata)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as fh:
            fh.write(struct.pack("<Q", len(header)))
            fh.write(header)
            for _, tensor in items:
                host = tensor.detach().contiguous().to("cpu").reshape(-1)
                fh.write(memoryview(host.view(torch.uint8).numpy()))
                del host
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path.stat().st_size
