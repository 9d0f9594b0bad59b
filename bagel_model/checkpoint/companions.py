"""The files a single-file checkpoint does not hold: JSON configs, tokenizer and FLUX autoencoder.

A converted single file (neverbiasu/ComfyUI-BAGEL's ``comfyui_bagel`` format) embeds the two model configs in
its safetensors metadata, or carries them in a ``<file>.comfyui-bagel.json`` sidecar; it holds neither the
tokenizer (that pack ships its own copy) nor the autoencoder (ComfyUI's ``models/vae/ae.safetensors``). This
module finds each of them, in this order: beside the file, then in a BAGEL folder next to it, then (for the
autoencoder) in the extra folders the host names. When one is missing the error says which and where to put it.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import BagelCheckpointError
from .folder import AE_FILE, LLM_CONFIG, VIT_CONFIG
from .safetensors_header import read_header

CONVERTED_METADATA_KEY = "comfyui_bagel"  # neverbiasu/ComfyUI-BAGEL: JSON with format, dtype, model_configs
SIDECAR_SUFFIX = ".comfyui-bagel.json"
TOKENIZER_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
HF_REPO = "ByteDance-Seed/BAGEL-7B-MoT"


def converted_metadata(weights: Path, metadata: dict) -> dict | None:
    """The ``comfyui_bagel`` metadata of a converted file (embedded, else its sidecar), None when absent."""
    raw = metadata.get(CONVERTED_METADATA_KEY)
    if raw is not None:
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BagelCheckpointError(f"The '{CONVERTED_METADATA_KEY}' metadata of {weights} is not valid JSON "
                                       f"({exc}); convert the checkpoint again.") from exc
    sidecar = weights.with_name(weights.name + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return None
    try:
        found = json.loads(sidecar.read_text(encoding="utf-8")).get("metadata")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise BagelCheckpointError(f"{sidecar} is not a valid sidecar ({exc}); create it again.") from exc
    return found if isinstance(found, dict) else None


def neighbour_folders(weights: Path) -> list[Path]:
    """The file's own folder, then the BAGEL folders beside it (sorted: the same answer on every run)."""
    parent = weights.parent
    siblings = sorted(p for p in parent.iterdir() if p.is_dir() and (p / LLM_CONFIG).is_file()) \
        if parent.is_dir() else []
    return [parent, *siblings]


def find_configs(weights: Path, embedded: dict | None) -> tuple[dict | None, Path | None]:
    """``(embedded configs, None)`` or ``(None, folder with llm_config.json + vit_config.json)``."""
    configs = (embedded or {}).get("model_configs") or {}
    if LLM_CONFIG in configs and VIT_CONFIG in configs:
        return configs, None
    for folder in neighbour_folders(weights):
        if (folder / LLM_CONFIG).is_file() and (folder / VIT_CONFIG).is_file():
            return None, folder
    raise BagelCheckpointError(
        f"{weights.name} holds no model configs ({CONVERTED_METADATA_KEY} metadata or {weights.name}"
        f"{SIDECAR_SUFFIX}) and no folder beside it has {LLM_CONFIG} + {VIT_CONFIG}. Put those two files from "
        f"{HF_REPO} next to it in {weights.parent}.")


def find_tokenizer(weights: Path) -> Path:
    for folder in neighbour_folders(weights):
        if any(all((folder / name).is_file() for name in names) for names in TOKENIZER_SETS):
            return folder
    raise BagelCheckpointError(
        f"No tokenizer found for {weights.name}: put tokenizer.json (or vocab.json + merges.txt and "
        f"tokenizer_config.json) from {HF_REPO} into {weights.parent}, or keep the BAGEL-7B-MoT folder there.")


def is_flux_autoencoder(path: Path) -> bool:
    try:
        header = read_header(path)
    except BagelCheckpointError:
        return False
    return "encoder.conv_in.weight" in header and "decoder.conv_out.weight" in header


def find_autoencoder(weights: Path, extra_dirs=()) -> Path:
    """``ae.safetensors`` beside the file or in a BAGEL folder beside it, else a FLUX autoencoder (by its
    keys) in ``extra_dirs`` (the host's VAE folders), ``ae.safetensors`` first."""
    for folder in neighbour_folders(weights):
        if (folder / AE_FILE).is_file():
            return folder / AE_FILE
    for folder in map(Path, extra_dirs):
        if not folder.is_dir():
            continue
        files = sorted(folder.glob("*.safetensors"), key=lambda p: (p.name != AE_FILE, p.name))
        found = next((p for p in files if is_flux_autoencoder(p)), None)
        if found is not None:
            return found
    places = ", ".join([str(weights.parent), *map(str, extra_dirs)])
    raise BagelCheckpointError(
        f"No FLUX autoencoder found for {weights.name} (looked for {AE_FILE} in: {places}). Put the FLUX "
        f"{AE_FILE} (from {HF_REPO} or black-forest-labs/FLUX.1-schnell) into models/vae or next to the file.")
