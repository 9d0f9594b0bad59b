"""Where BAGEL checkpoints live: the `bagel` model folder of ComfyUI.

BAGEL checkpoints are directories (configs, tokenizer, ema.safetensors, ae.safetensors), so the
loader lists sub-folders rather than files (folder_paths.get_filename_list lists files only).
"""
import logging
import os

import folder_paths

from bagel_model.checkpoint.folder_check import HF_REPO_ID, download_command

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
    """Names of checkpoint folders under every registered root, in a stable order."""
    names = []
    for root in search_roots():
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            if entry not in names and os.path.isfile(os.path.join(root, entry, MARKER_FILE)):
                names.append(entry)
    return names


def dropdown_choices() -> list[str]:
    names = list_model_folders()
    if DOWNLOAD_FOLDER_NAME not in names:
        names.append(DOWNLOAD_FOLDER_NAME)
    return names


def find_model_folder(name: str) -> str | None:
    """Full path of the checkpoint folder `name`, or None when no root holds it."""
    if not name or os.path.basename(name) != name or name in (".", ".."):
        return None
    for root in search_roots():
        candidate = os.path.join(root, name)
        if os.path.isfile(os.path.join(candidate, MARKER_FILE)):
            return candidate
    return None


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
    if name == DOWNLOAD_FOLDER_NAME:
        fix = "switch 'download_if_missing' on to finish the download"
    else:
        fix = f"download the missing files again ({download_command(path)})"
    return f"BAGEL model folder '{name}' ({path}) is incomplete: {problems}. To fix it, {fix}."


def missing_folder_message(name: str) -> str:
    roots = search_roots()
    fetch = f" ({download_command(os.path.join(roots[0], name))})" if roots else ""
    return (
        f"BAGEL model folder '{name}' was not found (looked for {name}/{MARKER_FILE} in: "
        f"{', '.join(roots) or '(none registered)'}). Download {HF_REPO_ID} into one of these folders{fetch}, "
        f"or enable 'download_if_missing' with '{DOWNLOAD_FOLDER_NAME}' selected, then press R to refresh the list."
    )
