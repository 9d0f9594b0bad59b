"""Reads and checks a safetensors header without loading tensors (a truncated file must fail early).

``safetensors.safe_open`` parses the header and refuses a file whose data section does not match it; this
module only turns its errors into messages that name the file and the fix.
"""
from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..errors import BagelCheckpointError

# safe_open's message when the data section is shorter (or longer) than the header promises.
_SIZE_MISMATCH = "file not fully covered"


def read_header(path: str | Path) -> dict:
    """Returns ``{name: {"dtype", "shape"}}`` for every tensor (``__metadata__`` excluded).

    Raises BagelCheckpointError naming the file when the header is unreadable or the data section does not
    match it (a partial download).
    """
    path = Path(path)
    if not path.is_file():
        raise BagelCheckpointError(f"{path} does not exist.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            slices = {name: reader.get_slice(name) for name in reader.keys()}
            return {name: {"dtype": s.get_dtype(), "shape": s.get_shape()} for name, s in slices.items()}
    except SafetensorError as exc:
        if _SIZE_MISMATCH in str(exc):
            raise BagelCheckpointError(
                f"{path} is truncated: its size ({path.stat().st_size} bytes) does not match its header "
                f"({exc}); delete it and download it again.") from exc
        raise BagelCheckpointError(
            f"{path} is not a readable safetensors file ({exc}); the download is probably truncated or "
            f"corrupt: delete it and download it again.") from exc
