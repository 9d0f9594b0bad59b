"""Where BAGEL checkpoints live: the `bagel` model folder of ComfyUI.

The list holds, by content (bagel_model/checkpoint/listing.py, the rule tools/run_demo.py shares; docs/checkpoints.md):
* checkpoint folders (`BAGEL-7B-MoT`, a fine-tune like `BAGEL-RecA` whose weights file has another name, a
  sharded or pre-quantized folder), by the `llm_config.json` every BAGEL folder ships;
* `<folder>/<file>` for each further BAGEL weights file in such a folder (e.g. `BAGEL-7B-MoT/ema-FP8.safetensors`
  put beside the official weights);
* single files directly in models/bagel whose tensors are BAGEL's (`bagel_comfy_fp8.safetensors`, `.gguf`).
So the name says which weights a choice reads; the loader logs every file it reads.
"""
import logging
import os
from pathlib import Path

import folder_paths

from bagel_model.checkpoint.folder_check import HF_REPO_ID, download_command
from bagel_model.checkpoint.listing import checkpoint_choices

logger = logging.getLogger(__name__)

FOLDER_KEY = "bagel"
# Folder name the optional download creates; also always offered in the dropdown so a user
# with an empty models/bagel/ can pick it together with "download if missing".
DOWNLOAD_FOLDER_NAME = "BAGEL-7B-MoT"
# A folder counts as a checkpoint when it holds the LLM config every BAGEL checkpoint ships.
MARKER_FILE = "llm_config.json"


def register_model_folder() -> None:
    """Adds models/bagel to the `bagel` folder key, keeping paths from extra_model_paths.yaml."""
    default_dir = os.path.join(folder_paths.models_dir, FOLDER_KEY)
    folder_paths.add_model_folder_path(FOLDER_KEY, default_dir)


def search_roots() -> list[str]:
    return list(folder_paths.get_folder_paths(FOLDER_KEY))


def list_model_folders() -> list[str]:
    """Checkpoint choices under every registered root (folders, folder/file, single files), in a stable order."""
    names = []
    for root in search_roots():
        names += [name for name in checkpoint_choices(Path(root)) if name not in names]
    return names


def dropdown_choices() -> list[str]:
    names = list_model_folders()
    if DOWNLOAD_FOLDER_NAME not in names:
        names.append(DOWNLOAD_FOLDER_NAME)
    return names


def _is_safe_name(name: str) -> bool:
    parts = name.split("/") if name else []
    return 1 <= len(parts) <= 2 and all(p and p not in (".", "..") and os.path.basename(p) == p for p in parts)


def find_model_folder(name: str) -> str | None:
    """Full path of the checkpoint `name` (a folder, `folder/file` or a file), or None when no root holds it."""
    if not _is_safe_name(name):
        return None
    for root in search_roots():
        candidate = os.path.join(root, *name.split("/"))
        if os.path.isfile(os.path.join(candidate, MARKER_FILE)) or os.path.isfile(candidate):
            return candidate
    return None


def vae_dirs() -> list[str]:
    """ComfyUI's VAE folders: where a single-file checkpoint's FLUX autoencoder (ae.safetensors) is looked for."""
    return list(folder_paths.get_folder_paths("vae"))


def find_partial_folder(name: str) -> str | None:
    """A folder `name` under a root that lacks even the marker (a download cut off before it), else None."""
    if not name or os.path.basename(name) != name or name in (".", ".."):
        return None
    return next((os.path.join(root, name) for root in search_roots() if os.path.isdir(os.path.join(root, name))),
                None)


def download_target_dir() -> str:
    """Where a download goes: the first (preferred) `bagel` root."""
    roots = search_roots()
    if not roots:
        raise RuntimeError("No 'bagel' model folder is registered with ComfyUI; restart ComfyUI.")
    return os.path.join(roots[0], DOWNLOAD_FOLDER_NAME)


def incomplete_folder_message(name: str, path: str, problems: str) -> str:
    if not any(Path(path).iterdir()):
        return empty_folder_message(name, path)
    if name == DOWNLOAD_FOLDER_NAME:
        fix = (f"switch 'download_if_missing' on to complete the download, or complete it by hand: "
               f"{download_command(path)}")
    else:
        fix = (f"put the missing files there; if the folder is meant to hold the official {HF_REPO_ID}, this "
               f"completes it: {download_command(path)}")
    return f"BAGEL model folder '{name}' ({path}) is incomplete: {problems}. To fix it, {fix}."


def empty_folder_message(name: str, path: str) -> str:
    switch = " (or switch 'download_if_missing' on)" if name == DOWNLOAD_FOLDER_NAME else ""
    return (f"BAGEL model folder '{name}' ({path}) is empty: it holds no checkpoint. If it is meant to hold the "
            f"official {HF_REPO_ID} (about 29 GB), download it there: {download_command(path)}{switch}; "
            f"otherwise choose another model_folder (press R to refresh the list).")


def missing_folder_message(name: str) -> str:
    roots = search_roots()
    looked = f"looked for {name}/{MARKER_FILE} in: {', '.join(roots) or '(none registered)'}"
    if name == DOWNLOAD_FOLDER_NAME:
        fetch = f": {download_command(os.path.join(roots[0], name))}" if roots else ""
        fix = (f"Download {HF_REPO_ID} (about 29 GB) there{fetch}, or switch 'download_if_missing' on, then press "
               f"R to refresh the list")
    else:
        official = os.path.join(roots[0], DOWNLOAD_FOLDER_NAME) if roots else DOWNLOAD_FOLDER_NAME
        fix = (f"Choose a checkpoint from the list (press R to refresh it), or put '{name}' in one of these "
               f"folders. For the official {HF_REPO_ID}, choose '{DOWNLOAD_FOLDER_NAME}' and switch "
               f"'download_if_missing' on, or download it by hand: {download_command(official)}")
    return f"BAGEL model folder '{name}' was not found ({looked}). {fix}."
