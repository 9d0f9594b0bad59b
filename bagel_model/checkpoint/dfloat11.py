"""DFloat11 BAGEL checkpoints (``DFloat11/BAGEL-7B-MoT-DF11``): detected by content, refused with what to do.

A DF11 folder has a ``config.json`` whose ``dfloat11_config`` (version, threads_per_block, bytes_per_thread,
pattern_dict) describes Huffman-coded bf16 exponents, and safetensors blocks with ``encoded_exponent``,
``sign_mantissa``, ``luts``, ``output_positions``, ``gaps`` and ``split_positions`` tensors in place of the
weights of the compressed modules (docs/checkpoints.md). Decoding runs only in the ``dfloat11`` package's CUDA
kernel, inside forward hooks on the model's own modules; this version does not load it (the decode cannot be
tested without CUDA), so the loader explains what is needed instead of running anything silently wrong.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..errors import BagelCheckpointError

DF11_CONFIG_FILE = "config.json"
DF11_TENSORS = ("encoded_exponent", "sign_mantissa", "luts", "output_positions", "gaps", "split_positions")
DF11_INSTALL = "python -m pip install -U dfloat11[cuda12]"


def is_dfloat11_folder(folder: Path) -> bool:
    path = Path(folder) / DF11_CONFIG_FILE
    if not path.is_file():
        return False
    try:
        return "dfloat11_config" in json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return False


def has_dfloat11_tensors(header: dict) -> bool:
    return any(key.rpartition(".")[2] in ("encoded_exponent", "sign_mantissa") for key in header)


def dfloat11_problem(path: Path, cuda_available: bool) -> str:
    """Why a DF11 checkpoint cannot be loaded here and what to do, for the error and the node's check."""
    package = importlib.util.find_spec("dfloat11") is not None
    fix = ("use the bf16 checkpoint (ByteDance-Seed/BAGEL-7B-MoT) with precision fp8_e4m3fn, int8 or nf4 for a "
           "smaller model")
    if not package:
        return (f"{path} is a DFloat11 (DF11) checkpoint. Decoding it needs the dfloat11 package and a CUDA GPU "
                f"('{DF11_INSTALL}'); this loader does not decode DF11 yet in any case: {fix}.")
    if not cuda_available:
        return f"{path} is a DFloat11 (DF11) checkpoint; DF11 decodes only on a CUDA GPU and none is present: {fix}."
    return (f"{path} is a DFloat11 (DF11) checkpoint. The dfloat11 package and a CUDA GPU are present, but this "
            f"loader does not decode DF11 yet: {fix}.")


def refuse_dfloat11(path: Path, cuda_available: bool) -> None:
    raise BagelCheckpointError(dfloat11_problem(path, cuda_available))
