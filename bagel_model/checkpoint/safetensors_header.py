"""Reads and checks a safetensors header without loading tensors (a truncated file must fail early)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from ..errors import BagelCheckpointError

_MAX_HEADER = 100 * 1024 * 1024


def read_header(path: str | Path) -> dict:
    """Returns ``{name: {"dtype", "shape", "data_offsets"}}`` (``__metadata__`` removed).

    Raises BagelCheckpointError naming the file when the header is unreadable or the data section is shorter
    than the header promises (a partial download).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", raw)
            if length > min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {length} does not fit in a {size}-byte file")
            header = json.loads(fh.read(length))
    except FileNotFoundError as exc:
        raise BagelCheckpointError(f"{path} does not exist.") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BagelCheckpointError(
            f"{path} is not a readable safetensors file ({exc}); the download is probably truncated or "
            f"corrupt: delete it and download it again.") from exc
    header.pop("__metadata__", None)
    data_end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + length + data_end > size:
        raise BagelCheckpointError(
            f"{path} is truncated: its header needs {8 + length + data_end} bytes but the file has {size}; "
            f"delete it and download it again.")
    return header
