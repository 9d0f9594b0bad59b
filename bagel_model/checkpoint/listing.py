"""Which entries of a checkpoint root (ComfyUI's models/bagel) are BAGEL checkpoints: the one rule the loader's
list and the demo's "are there real weights?" both use.

* a folder holding ``llm_config.json`` (every BAGEL folder ships it: official, fine-tune, sharded, pre-quantized,
  or still incomplete: the loader then says what is missing);
* ``<folder>/<file>`` for each further BAGEL weights file in such a folder (``BAGEL-7B-MoT/ema-FP8.safetensors``);
* a single ``.safetensors``/``.gguf`` file directly in the root whose tensors are BAGEL's.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import BagelCheckpointError
from .folder import LLM_CONFIG
from .formats import bagel_weight_files, describe_checkpoint


def checkpoint_choices(root: Path) -> list[str]:
    """The checkpoint names under ``root``, in a stable (sorted) order; [] when ``root`` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        return []
    single_files = set(bagel_weight_files(root))
    names = []
    for path in sorted(root.iterdir()):
        if path.is_file():
            names += [path.name] if path in single_files else []
        else:
            names += _folder_choices(path)
    return names


def _folder_choices(path: Path) -> list[str]:
    if not (path / LLM_CONFIG).is_file():
        return []
    try:
        default = describe_checkpoint(path).weights
    except BagelCheckpointError:
        default = []  # incomplete or ambiguous: the folder is still listed, the loader says what is wrong
    return [path.name] + [f"{path.name}/{p.name}" for p in bagel_weight_files(path) if p not in default]
