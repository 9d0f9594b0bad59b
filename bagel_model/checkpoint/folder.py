"""What a BAGEL folder holds: its file names, the config its JSON files and weight headers describe, and the
marker of a pre-quantized folder (written by ``prequantized.py``)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..config import BagelConfig
from ..errors import BagelCheckpointError
from .quantization import QUANTIZED_PRECISIONS
from .safetensors_header import read_header

LLM_CONFIG = "llm_config.json"
VIT_CONFIG = "vit_config.json"
AE_CONFIG = "ae_config.json"
WEIGHTS_FILE = "ema.safetensors"
AE_FILE = "ae.safetensors"

MARKER_FILE = "quantization_config.json"
FORMAT_NAME = "bagel_model.prequantized"
FORMAT_VERSION = 1

# Position tables whose row count (a square grid) is the only record of the table side (see read_config).
_TABLE_SIDES = (("latent_pos_embed.pos_embed", "max_latent_size"),
                ("vit_pos_embed.pos_embed", "vit_max_num_patch_per_side"))


def read_config(folder: str | Path) -> BagelConfig:
    """The config of the model in ``folder``: its JSON files plus the position-table sides of its weights.

    The official inference passes ``max_latent_size=64`` and ``vit_max_num_patch_per_side=70``; small test
    checkpoints use smaller tables, and the stored tables are the only place that records their size.
    """
    return read_json_config(folder, **_table_sides_from_weights(Path(folder)))


def read_json_config(folder: str | Path, **table_sides: int) -> BagelConfig:
    """The config from the folder's JSON files alone (no weight file is opened): the position tables take the
    official sides unless ``table_sides`` gives them. Enough to check a request before loading."""
    folder = Path(folder)
    llm_json = read_json(folder, LLM_CONFIG)
    vit_json = read_json(folder, VIT_CONFIG)
    ae_json = read_json(folder, AE_CONFIG) if (folder / AE_CONFIG).is_file() else {}
    return BagelConfig.from_json(llm_json, vit_json, ae_json, **table_sides)


def read_json(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        raise BagelCheckpointError(
            f"{name} is missing in the model folder {folder}. A BAGEL folder needs llm_config.json, "
            f"vit_config.json, ema.safetensors, ae.safetensors and the tokenizer files; download "
            f"ByteDance-Seed/BAGEL-7B-MoT again or point to the right folder.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BagelCheckpointError(f"{path} is not valid JSON ({exc}); re-download this file.") from exc


def _table_sides_from_weights(folder: Path) -> dict:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        path = prequantized_weights_path(folder)  # a pre-quantized folder stores the same tables
        if path is None:
            return {}
    return table_sides(read_header(path), path)


def table_sides(header: dict, source) -> dict:
    """``max_latent_size`` / ``vit_max_num_patch_per_side`` from the position tables in a weights header
    (``source``: the file or store, for the message)."""
    sides = {}
    for key, name in _TABLE_SIDES:
        if key in header:
            rows = header[key]["shape"][0]
            side = math.isqrt(rows)
            if side * side != rows:
                raise BagelCheckpointError(
                    f"{key} in {source} has {rows} rows, which is not a square grid; the file is not a BAGEL "
                    f"checkpoint.")
            sides[name] = side
    return sides


def weights_file_name(precision: str) -> str:
    """The weights file of a pre-quantized ``precision`` folder."""
    return f"ema.{precision}.safetensors"


def read_marker(folder: str | Path) -> dict | None:
    """The parsed marker of a pre-quantized folder, None for an ordinary folder; raises if it is unusable."""
    path = Path(folder) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BagelCheckpointError(f"{path} is not valid JSON ({exc}); quantize the model again.") from exc
    if marker.get("format") != FORMAT_NAME or marker.get("version") != FORMAT_VERSION:
        raise BagelCheckpointError(
            f"{path} describes format {marker.get('format')!r} v{marker.get('version')}, but this version of "
            f"bagel_model reads {FORMAT_NAME} v{FORMAT_VERSION}; quantize the original folder again.")
    if marker.get("precision") not in QUANTIZED_PRECISIONS:
        raise BagelCheckpointError(f"{path} names precision {marker.get('precision')!r}; expected one of "
                                   f"{', '.join(QUANTIZED_PRECISIONS)}.")
    weights = Path(folder) / marker["weights_file"]
    if not weights.is_file():
        raise BagelCheckpointError(
            f"{weights} is missing although {path} announces it; copy the whole pre-quantized folder or "
            f"quantize again with `python -m bagel_model quantize`.")
    return marker


def prequantized_weights_path(folder: str | Path) -> Path | None:
    marker = read_marker(folder)
    return None if marker is None else Path(folder) / marker["weights_file"]
