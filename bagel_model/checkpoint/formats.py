"""What a BAGEL checkpoint path holds, decided by content: which format, which files a load reads, which
precision the weights are stored in. docs/checkpoints.md describes each format and where its facts come from.

Formats (``CheckpointSource.kind``):

* ``official folder``: ``ema.safetensors`` + JSON configs + tokenizer + ``ae.safetensors``.
* ``folder``: the same with the weights under another name (BAGEL-RecA's ``model_bf16.safetensors``), found by
  its keys; ``sharded folder``: shards listed by a ``*.safetensors.index.json``.
* ``pre-quantized folder``: ours (``quantization_config.json``, prequantized.py).
* ``single file``: one ``.safetensors`` (neverbiasu/ComfyUI-BAGEL's converted ``comfyui_bagel`` files, or any
  BAGEL-keyed file), configs from its metadata/sidecar or a folder beside it, tokenizer and autoencoder found
  beside it or in the host's VAE folders (companions.py).
* Any of those whose Linear weights are ``float8_e4m3fn`` or ``int8`` (community FP8/INT8 files) holds that
  precision (community_quant.py); ``GGUF`` files are dequantized at load (gguf_store.py); ``DFloat11`` folders
  are detected and refused with what to do (dfloat11.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..config import BagelConfig
from ..errors import BagelCheckpointError
from . import companions
from .community_quant import quantized_dtype_of
from .config_keys import check_config_keys
from .dfloat11 import has_dfloat11_tensors, is_dfloat11_folder
from .folder import (AE_CONFIG, AE_FILE, LLM_CONFIG, VIT_CONFIG, WEIGHTS_FILE, read_json, read_marker,
                     table_sides)
from .gguf_store import GGUFStore
from .safetensors_header import read_header
from .tensor_store import SafetensorsStore, bagel_prefix, file_metadata, shards_of_index

log = logging.getLogger(__name__)

OFFICIAL, FOLDER, SHARDED, PREQUANTIZED = "official folder", "folder", "sharded folder", "pre-quantized folder"
SINGLE_FILE, GGUF, DFLOAT11 = "single file", "GGUF", "DFloat11"
INDEX_SUFFIX = ".safetensors.index.json"
GGUF_MAGIC = b"GGUF"


@dataclass
class CheckpointSource:
    path: Path  # what was chosen: a folder or a file
    kind: str
    weights: list[Path]
    ae_path: Path | None = None
    tokenizer_dir: Path | None = None
    config_dir: Path | None = None
    embedded_configs: dict | None = None  # {"llm_config.json": {...}, "vit_config.json": {...}}
    held_precision: str | None = None  # stored quantized (fp8_e4m3fn, int8, nf4): loads only in that precision
    marker: dict | None = None  # our pre-quantized folder's marker
    prefix: str = ""
    variant: str = ""  # the name a converter recorded (comfyui_bagel metadata), "" when none
    _store: object = field(default=None, repr=False)

    def store(self):
        """The weights as a TensorStore (safetensors shards, one renamed file, or a GGUF file)."""
        if self._store is None:
            if self.kind == GGUF:
                self._store = GGUFStore(self.weights[0])
            else:
                self._store = SafetensorsStore(self.weights, self.prefix)
        return self._store

    def files(self) -> list[Path]:
        """Every file a load reads (weights, autoencoder, configs, tokenizer)."""
        found = list(self.weights) + ([self.ae_path] if self.ae_path else [])
        if self.config_dir is not None:
            found += [self.config_dir / n for n in (LLM_CONFIG, VIT_CONFIG, AE_CONFIG)
                      if (self.config_dir / n).is_file()]
        if self.tokenizer_dir is not None:
            found += [p for names in companions.TOKENIZER_SETS for p in (self.tokenizer_dir / n for n in names)
                      if p.is_file()]
        return list(dict.fromkeys(found))

    def describe(self) -> str:
        """One line for logs, tooltips and reprs: format, stored precision, weights file(s)."""
        names = ", ".join(p.name for p in self.weights[:3]) + (" ..." if len(self.weights) > 3 else "")
        held = f", stored {self.held_precision}" if self.held_precision else ""
        variant = f" '{self.variant}'" if self.variant else ""
        return f"{self.kind}{variant}{held} ({names})"

    def read_config(self) -> BagelConfig:
        """The model config: JSON (folder or embedded), unknown keys checked, tables from the weights."""
        if self.embedded_configs is not None:
            llm, vit = self.embedded_configs[LLM_CONFIG], self.embedded_configs[VIT_CONFIG]
            ae = self.embedded_configs.get(AE_CONFIG) or self._ae_json_beside_autoencoder()
        else:
            llm, vit = read_json(self.config_dir, LLM_CONFIG), read_json(self.config_dir, VIT_CONFIG)
            ae = read_json(self.config_dir, AE_CONFIG) if (self.config_dir / AE_CONFIG).is_file() \
                else self._ae_json_beside_autoencoder()
        check_config_keys(LLM_CONFIG, llm, str(self.path))
        check_config_keys(VIT_CONFIG, vit, str(self.path))
        return BagelConfig.from_json(llm, vit, ae, **table_sides(self.store().header(), self.store()))

    def _ae_json_beside_autoencoder(self) -> dict:
        if self.ae_path is not None and (self.ae_path.parent / AE_CONFIG).is_file():
            return read_json(self.ae_path.parent, AE_CONFIG)
        return {}


def describe_checkpoint(path: str | Path, vae_dirs=()) -> CheckpointSource:
    """The format of ``path`` (a folder or a file) and the files a load reads; raises naming what is missing.

    ``vae_dirs``: extra folders where a single file's FLUX autoencoder may be (ComfyUI's models/vae)."""
    path = Path(path)
    if path.is_dir():
        source = _describe_folder(path)
    elif path.is_file():
        source = _describe_file(path, vae_dirs)
    else:
        raise BagelCheckpointError(f"Model path {path} does not exist. Put a BAGEL folder or checkpoint file there "
                                   f"or choose another one.")
    log.debug("%s: %s", path, source.describe())
    return source


def _describe_folder(folder: Path) -> CheckpointSource:
    marker = read_marker(folder)
    if marker is not None:
        weights = folder / marker["weights_file"]
        return _folder_source(folder, PREQUANTIZED, [weights], held=marker["precision"], marker=marker)
    if is_dfloat11_folder(folder):
        return _folder_source(folder, DFLOAT11, [p for p in sorted(folder.glob("*.safetensors")) if p.name != AE_FILE])
    indexes = sorted(folder.glob("*" + INDEX_SUFFIX))
    if indexes:
        return _with_content(_folder_source(folder, SHARDED, shards_of_index(indexes[0])))
    if (folder / WEIGHTS_FILE).is_file():
        return _with_content(_folder_source(folder, OFFICIAL, [folder / WEIGHTS_FILE]))
    candidates = bagel_weight_files(folder)
    if len(candidates) == 1:
        return _with_content(_folder_source(folder, GGUF if candidates[0].suffix == ".gguf" else FOLDER,
                                            candidates))
    if candidates:
        raise BagelCheckpointError(
            f"{folder} holds {len(candidates)} BAGEL weight files ({', '.join(p.name for p in candidates)}); "
            f"choose one of them as '{folder.name}/<file>'.")
    raise BagelCheckpointError(
        f"{WEIGHTS_FILE} is missing in the model folder {folder} and no other BAGEL weights file is there. "
        f"Download ByteDance-Seed/BAGEL-7B-MoT completely (about 29 GB) into this folder, or choose another one.")


def _folder_source(folder: Path, kind: str, weights: list[Path], held: str | None = None,
                   marker: dict | None = None) -> CheckpointSource:
    return CheckpointSource(folder, kind, weights, ae_path=folder / AE_FILE, tokenizer_dir=folder,
                            config_dir=folder, held_precision=held, marker=marker)


def _describe_file(weights: Path, vae_dirs) -> CheckpointSource:
    if weights.suffix == ".gguf":
        source = CheckpointSource(weights, GGUF, [weights])
        metadata = {}
    elif weights.suffix == ".safetensors":
        source = CheckpointSource(weights, SINGLE_FILE, [weights])
        metadata = file_metadata(weights)
    else:
        raise BagelCheckpointError(f"{weights} is neither a .safetensors nor a .gguf file; choose a BAGEL "
                                   f"checkpoint file or folder.")
    converted = companions.converted_metadata(weights, metadata)
    source.variant = str((converted or {}).get("variant") or "")
    source.embedded_configs, source.config_dir = companions.find_configs(weights, converted)
    source.tokenizer_dir = companions.find_tokenizer(weights)
    source.ae_path = companions.find_autoencoder(weights, vae_dirs)
    return _with_content(source)


def _with_content(source: CheckpointSource) -> CheckpointSource:
    """Checks the weights are BAGEL's (prefix stripped) and records a stored quantized precision."""
    raw = source.store().header()
    prefix = bagel_prefix(raw)
    if prefix is None:
        raise BagelCheckpointError(
            f"{source.describe()} at {source.path} holds no BAGEL tensors (e.g. language_model.*); its first keys "
            f"are {sorted(raw)[:3]}. Choose a BAGEL-7B-MoT checkpoint.")
    if prefix:
        source.prefix, source._store = prefix, None
    header = source.store().header()
    if has_dfloat11_tensors(header):
        source.kind = DFLOAT11
    elif source.kind != GGUF:
        source.held_precision = quantized_dtype_of(header)
    return source


def bagel_weight_files(folder: Path) -> list[Path]:
    """The BAGEL weight files directly in ``folder`` (by their keys; the autoencoder and shards excluded)."""
    found = []
    for path in sorted(folder.glob("*.safetensors")):
        if path.name == AE_FILE:
            continue
        try:
            if bagel_prefix(read_header(path)) is not None:
                found.append(path)
        except BagelCheckpointError:
            continue  # unreadable: the folder check reports it
    return found + [p for p in sorted(folder.glob("*.gguf")) if is_gguf_file(p)]


def is_gguf_file(path: Path) -> bool:
    """A GGUF file starts with the magic bytes ``GGUF`` (read without the gguf package)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False
