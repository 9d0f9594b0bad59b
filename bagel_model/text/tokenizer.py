"""Qwen2 byte-level BPE tokenizer with the ids of the slow ``Qwen2Tokenizer`` the official code uses.

The work is done by the ``tokenizers`` library (installed with ComfyUI). It reads the folder's
``tokenizer.json`` when there is one; otherwise it is built from ``vocab.json`` + ``merges.txt`` with the
Qwen2 pipeline (split on the Qwen2 pre-tokenisation regex, GPT-2 byte alphabet, BPE by merge rank, byte-level
decoder) and the added tokens of ``tokenizer_config.json`` (or ``added_tokens.json``).

One hand-written step, forced by a measured difference: the slow tokenizer NFC-normalises the whole text
*before* it splits off added tokens, ``tokenizers`` splits them off first. The two differ when normalisation
joins the last character of an added token with what follows: in ``"<|im_end|>\u0338"`` NFC turns
``">\u0338"`` into ``"≯"``, so the slow tokenizer sees no ``<|im_end|>`` (15 of 3,039 random strings around
added tokens differed). ``encode`` therefore normalises in Python first; the library's own NFC, if the
``tokenizer.json`` has one, then has nothing left to change. Decoding needs nothing by hand: added tokens
come back verbatim, pieces are joined without spaces and invalid UTF-8 becomes U+FFFD as with
``errors="replace"`` (tests/core/test_tokenizer.py compares both on the real Qwen2.5 files).
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ..errors import BagelCheckpointError

TOKENIZER_JSON = "tokenizer.json"
VOCAB_FILES = ("vocab.json", "merges.txt")
PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)


class Qwen2Tokenizer:
    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Qwen2Tokenizer":
        folder = Path(folder)
        if (folder / TOKENIZER_JSON).is_file():
            return cls(_read_tokenizer_json(folder / TOKENIZER_JSON))
        for name in VOCAB_FILES:
            if not (folder / name).is_file():
                raise BagelCheckpointError(
                    f"Tokenizer file {name} is missing in {folder}; copy the Qwen2.5 tokenizer files "
                    f"(vocab.json, merges.txt, tokenizer_config.json) from the BAGEL-7B-MoT download.")
        return cls(_from_vocab_and_merges(folder))

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise BagelCheckpointError(
                f"The tokenizer has no token {token!r}; it is not a Qwen2.5/BAGEL tokenizer.")
        return token_id

    def encode(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFC", text)  # before added tokens are split off (see module docstring)
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; ids past the tokenizer (the embedding's padding rows) have no text."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


def _read_tokenizer_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
        raise BagelCheckpointError(
            f"{path} is not a readable tokenizer file ({exc}); download it again, or delete it so that "
            f"vocab.json and merges.txt are used.") from exc


def _from_vocab_and_merges(folder: Path) -> Tokenizer:
    vocab, merges = (str(folder / name) for name in VOCAB_FILES)
    tokenizer = Tokenizer(models.BPE.from_file(vocab, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    for token_id, token in sorted(_read_added_tokens(folder).items()):
        tokenizer.add_special_tokens([token]) if token.special else tokenizer.add_tokens([token])
        if tokenizer.token_to_id(token.content) != token_id:
            raise BagelCheckpointError(
                f"The added token {token.content!r} has id {token_id} in {folder}, but the vocabulary there "
                f"does not leave that id free; the tokenizer files come from different downloads.")
    return tokenizer


def _read_added_tokens(folder: Path) -> dict[int, AddedToken]:
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        decoder = config.get("added_tokens_decoder")
        if decoder:
            return {int(i): AddedToken(entry["content"], single_word=entry.get("single_word", False),
                                       lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                                       normalized=entry.get("normalized", False),
                                       special=entry.get("special", False))
                    for i, entry in decoder.items()}
    added_path = folder / "added_tokens.json"
    if added_path.is_file():
        return {int(i): AddedToken(t, normalized=False, special=True)
                for t, i in json.loads(added_path.read_text(encoding="utf-8")).items()}
    raise BagelCheckpointError(
        f"Neither tokenizer_config.json (with added_tokens_decoder) nor added_tokens.json is in {folder}; "
        f"the special tokens <|im_start|>/<|im_end|>/<|vision_start|>/<|vision_end|> cannot be found.")
