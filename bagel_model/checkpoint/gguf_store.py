"""GGUF BAGEL files (e.g. calcuis/bagel-gguf), read with the ``gguf`` package (llama.cpp's own reader) and
dequantized while loading.

Each tensor is dequantized to float32 on the host by ``gguf.quants.dequantize`` as its module is loaded, then
converted to the requested precision like any other checkpoint: the model holds bf16 (or fp8/int8/nf4 when that
precision is chosen), not GGUF blocks, so the memory saving is on disk and download only. Tensor names must be
BAGEL's own (docs/checkpoints.md); GGUF stores shapes innermost-first, so they are reversed here.
"""
from __future__ import annotations

import importlib
import importlib.util
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import BagelCheckpointError

GGUF_INSTALL = "python -m pip install gguf"


def gguf_available() -> bool:
    return importlib.util.find_spec("gguf") is not None


def import_gguf():
    if not gguf_available():
        raise BagelCheckpointError(
            f"Reading a .gguf BAGEL checkpoint needs the gguf package; install it with '{GGUF_INSTALL}' in this "
            f"Python (ComfyUI's), or use a .safetensors checkpoint.")
    return importlib.import_module("gguf")


class GGUFStore:
    """A ``TensorStore`` over one .gguf file; ``get_tensor`` returns the dequantized float32 tensor."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.parent = self.path.parent
        self.label = str(self.path)
        gguf = import_gguf()
        try:
            self._reader = gguf.GGUFReader(str(self.path))
        except (ValueError, OSError) as exc:
            raise BagelCheckpointError(f"{self.path} is not a readable GGUF file ({exc}); download it again.") \
                from exc
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._header = {name: {"dtype": t.tensor_type.name, "shape": [int(s) for s in reversed(t.shape)]}
                        for name, t in self._tensors.items()}

    def __str__(self) -> str:
        return self.label

    def header(self) -> dict:
        return self._header

    def tensor_types(self) -> dict[str, int]:
        """How many tensors each GGUF type holds (Q8_0, Q4_K, F16 ...), for the log."""
        counts: dict[str, int] = {}
        for info in self._header.values():
            counts[info["dtype"]] = counts.get(info["dtype"], 0) + 1
        return counts

    @contextmanager
    def reader(self) -> Iterator["GGUFStore"]:
        yield self

    def get_tensor(self, key: str) -> torch.Tensor:
        tensor = self._tensors[key]
        gguf = import_gguf()
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        shape = self._header[key]["shape"]
        return torch.from_numpy(np.array(values, dtype=np.float32)).reshape(shape)  # a copy: the file stays read-only
