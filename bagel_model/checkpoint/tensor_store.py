"""The weights of one checkpoint as one set of named tensors, whatever files hold them.

A ``TensorStore`` answers two questions the loaders ask: which tensors exist (``header``: name -> dtype and
shape, read from file headers only) and the tensor of a name (``reader().get_tensor``). The loaders open a
reader per module and close it after, so a memory-mapped file never stays resident as a whole
(checkpoint/loading.py explains why).

``SafetensorsStore`` covers one file under any name (``ema.safetensors``, ``model_bf16.safetensors``, a
single-file ComfyUI checkpoint) and Hugging Face shards listed by a ``*.safetensors.index.json``. A common key
prefix (``model.``) that a converter added in front of BAGEL's own names is stripped.
"""
from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Protocol

import torch
from safetensors import SafetensorError, safe_open

from ..errors import BagelCheckpointError
from .safetensors_header import read_header

# BAGEL's own top-level modules: a store whose keys start with one of them after a prefix is BAGEL-keyed.
BAGEL_ROOTS = ("language_model.", "vit_model.", "connector.", "vae2llm.", "llm2vae.", "latent_pos_embed.",
               "vit_pos_embed.", "time_embedder.")
STRIPPABLE_PREFIXES = ("model.", "bagel.", "module.")


class TensorReader(Protocol):
    def get_tensor(self, key: str) -> torch.Tensor: ...


class TensorStore(Protocol):
    """What the loaders need of a checkpoint's weights."""

    label: str  # the file(s) in messages and logs
    parent: Path  # the folder holding them

    def header(self) -> dict: ...

    def reader(self): ...  # a context manager yielding a TensorReader


def bagel_prefix(keys) -> str | None:
    """"" when ``keys`` are BAGEL's own names, the prefix to strip when every key carries one, else None."""
    keys = list(keys)
    if any(k.startswith(BAGEL_ROOTS) for k in keys):
        return ""
    for prefix in STRIPPABLE_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys) and \
                any(k[len(prefix):].startswith(BAGEL_ROOTS) for k in keys):
            return prefix
    return None


class SafetensorsStore:
    """One or more safetensors files seen as one set of tensors (``files``: shards in index order)."""

    def __init__(self, files: list[Path], prefix: str = "", label: str | None = None):
        self.files = [Path(f) for f in files]
        self.prefix = prefix
        self.parent = self.files[0].parent
        self.label = label or ", ".join(str(f) for f in self.files)
        self._header: dict | None = None
        self._owner: dict[str, Path] = {}

    def header(self) -> dict:
        if self._header is None:
            merged: dict = {}
            for path in self.files:
                for key, info in read_header(path).items():
                    name = key[len(self.prefix):] if key.startswith(self.prefix) else key
                    if name in merged:
                        raise BagelCheckpointError(
                            f"Tensor {key} is stored twice ({self._owner[name].name} and {path.name}); the shards "
                            f"of {self.parent} come from different downloads. Download them again.")
                    merged[name] = info
                    self._owner[name] = path
            self._header = merged
        return self._header

    def __str__(self) -> str:
        return self.label

    def metadata(self) -> dict:
        """``__metadata__`` of the first file ({} when it has none)."""
        return file_metadata(self.files[0])

    @contextmanager
    def reader(self) -> Iterator[TensorReader]:
        self.header()
        with ExitStack() as stack:
            handles: dict[Path, object] = {}

            def open_file(path: Path):
                if path not in handles:
                    handles[path] = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
                return handles[path]

            yield _ShardReader(self, open_file)


class _ShardReader:
    def __init__(self, store: SafetensorsStore, open_file):
        self._store, self._open = store, open_file

    def get_tensor(self, key: str) -> torch.Tensor:
        owner = self._store._owner.get(key)
        if owner is None:
            raise KeyError(key)
        return self._open(owner).get_tensor(self._store.prefix + key)


def file_metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            return dict(reader.metadata() or {})
    except SafetensorError as exc:
        raise BagelCheckpointError(f"{path} is not a readable safetensors file ({exc}); download it again.") \
            from exc


def shards_of_index(index: Path) -> list[Path]:
    """The shard files a ``*.safetensors.index.json`` names, in first-use order; raises naming a missing one."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BagelCheckpointError(f"{index} is not valid JSON ({exc}); download it again.") from exc
    if not isinstance(weight_map, dict) or not weight_map:
        raise BagelCheckpointError(f"{index} has no weight_map; it is not a safetensors shard index.")
    shards = list(dict.fromkeys(index.parent / name for name in weight_map.values()))
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise BagelCheckpointError(
            f"{index} lists {len(missing)} shard(s) that are not in {index.parent}, e.g. {missing[:3]}; download "
            f"the missing shards.")
    return shards


def store_header(weights) -> dict:
    """The header of a store, or of a single safetensors file given as a path."""
    return read_header(weights) if isinstance(weights, (str, Path)) else weights.header()


def open_store(weights):
    """A reader of a store, or ``safe_open`` of a single safetensors file given as a path."""
    if isinstance(weights, (str, Path)):
        return safe_open(str(weights), framework="pt", device="cpu")
    return weights.reader()
