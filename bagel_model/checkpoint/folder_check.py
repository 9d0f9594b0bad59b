"""Is a checkpoint folder complete? Missing, truncated or unreadable files against the list the loader needs.

An interrupted download leaves a folder that looks present (``llm_config.json`` arrives first), so presence of
the folder proves nothing: every needed file must exist, every JSON file must parse and every safetensors file
must be as long as its header says. Cheap (headers only), so it can run on every validation.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import BagelCheckpointError
from .folder import AE_FILE, LLM_CONFIG, VIT_CONFIG, WEIGHTS_FILE
from .folder import MARKER_FILE as PREQUANTIZED_MARKER
from .formats import describe_checkpoint
from .safetensors_header import read_header

# The tokenizer files text/tokenizer.py reads (checkpoint/ may not import text/): tokenizer.json when present,
# else vocab.json + merges.txt.
TOKENIZER_JSON = "tokenizer.json"
VOCAB_FILES = ("vocab.json", "merges.txt")
# huggingface_hub keeps the part of a file it is still downloading here, inside the target folder.
HF_PARTIAL_DOWNLOADS = Path(".cache") / "huggingface" / "download"
HF_REPO_ID = "ByteDance-Seed/BAGEL-7B-MoT"
# How many of a wrong folder's entries the "not a BAGEL folder" message names.
_LISTED_ENTRIES = 6


def download_command(folder: str | Path) -> str:
    """The huggingface_hub (>= 1.0) command that fetches, or completes, the official checkpoint into ``folder``."""
    return f'hf download {HF_REPO_ID} --local-dir "{folder}"'


def check_bagel_folder(folder: str | Path) -> Path:
    """The first check of a model folder, before anything in it is read: it exists and is a BAGEL folder at all
    (``llm_config.json`` marks one). Whether it is complete is ``incomplete_files``' job."""
    folder = Path(folder)
    if folder.is_file():
        return folder  # a single-file checkpoint: checkpoint/formats.py recognises it by its tensors
    if not folder.is_dir():
        raise BagelCheckpointError(
            f"Model folder {folder} does not exist. Put the BAGEL-7B-MoT files there "
            f"({download_command(folder)}) or pass another folder.")
    if not (folder / LLM_CONFIG).is_file():
        entries = sorted(entry.name for entry in folder.iterdir())
        found = ", ".join(entries[:_LISTED_ENTRIES]) + (", ..." if len(entries) > _LISTED_ENTRIES else "")
        raise BagelCheckpointError(
            f"not a BAGEL folder: {folder} (expected {LLM_CONFIG}, {VIT_CONFIG}, {AE_FILE}, {WEIGHTS_FILE} and "
            f"the tokenizer files; it holds {found or 'nothing'}). Pass the folder that holds the BAGEL-7B-MoT "
            f"files, or download them into this one: {download_command(folder)}")
    return folder


def expected_files(folder: str | Path) -> list[str]:
    """The files the loader reads from ``folder`` (a pre-quantized folder names its own weights file)."""
    weights = WEIGHTS_FILE
    marker = Path(folder) / PREQUANTIZED_MARKER
    if marker.is_file():
        try:
            weights = json.loads(marker.read_text(encoding="utf-8")).get("weights_file", WEIGHTS_FILE)
        except (json.JSONDecodeError, UnicodeDecodeError):
            weights = WEIGHTS_FILE  # reported as unreadable below
    tokenizer = [TOKENIZER_JSON] if (Path(folder) / TOKENIZER_JSON).is_file() else list(VOCAB_FILES)
    return [LLM_CONFIG, VIT_CONFIG, *tokenizer, AE_FILE, *_other_weights(Path(folder), weights)]


def _other_weights(folder: Path, weights: str) -> list[str]:
    """``[weights]``, or the weights file(s) of a folder that names them otherwise (a fine-tune's
    ``model_bf16.safetensors``, shards of an index: checkpoint/formats.py); a folder with none keeps
    ``ema.safetensors``, reported missing."""
    if weights != WEIGHTS_FILE or (folder / WEIGHTS_FILE).is_file():
        return [weights]
    try:
        return [p.name for p in describe_checkpoint(folder).weights]
    except BagelCheckpointError:
        return [weights]


def file_problem(path: Path) -> str | None:
    """None when ``path`` is usable, else what is wrong with it ("missing", "truncated ...", "not valid JSON")."""
    if not path.is_file():
        return "missing"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "not valid JSON (cut off or damaged)"
    elif path.suffix == ".safetensors":
        try:
            read_header(path)
        except BagelCheckpointError as exc:
            return "truncated" if " is truncated:" in str(exc) else "not a readable safetensors file"
    elif path.stat().st_size == 0:
        return "empty"
    return None


def incomplete_files(folder: str | Path) -> dict[str, str]:
    """``{file name: problem}`` for every needed file of ``folder`` that is missing, short or unreadable, plus
    ``{partial download: ...}`` when huggingface_hub also left an unfinished file behind. Empty: complete."""
    folder = Path(folder)
    names = expected_files(folder) + ([PREQUANTIZED_MARKER] if (folder / PREQUANTIZED_MARKER).is_file() else [])
    problems = {name: problem for name in names if (problem := file_problem(folder / name))}
    # Unfinished parts only explain a needed file that is not whole; alone (say, an optional file whose download
    # stopped) they do not make a usable folder incomplete.
    partial = sorted(p.name for p in (folder / HF_PARTIAL_DOWNLOADS).glob("*.incomplete")) if problems else []
    if partial:
        problems[str(HF_PARTIAL_DOWNLOADS / partial[0])] = f"unfinished download ({len(partial)} file(s))"
    return problems


def describe_problems(problems: dict[str, str]) -> str:
    return "; ".join(f"{name} is {problem}" for name, problem in problems.items())
