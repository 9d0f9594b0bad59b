"""Qwen2 byte-level BPE tokenizer with the behaviour of the slow ``Qwen2Tokenizer`` the official code uses.

Encoding: NFC-normalise, split out every added token (special or not) verbatim, pre-tokenise the rest with the
Qwen2 regex, map bytes to the GPT-2 printable alphabet and apply BPE merges by rank. Decoding keeps added tokens
verbatim, joins without extra spaces and decodes bytes as UTF-8 with ``errors="replace"``.
"""
from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from pathlib import Path

import regex

from ..errors import BagelCheckpointError

PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
    r"""\s+(?!\S)|\s+"""
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


class Qwen2Tokenizer:
    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], added_tokens: dict[str, int]):
        self.encoder = vocab
        self.decoder = {i: t for t, i in vocab.items()}
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.added_tokens = dict(added_tokens)
        self.added_by_id = {i: t for t, i in added_tokens.items()}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._pretokenize = regex.compile(PRETOKENIZE_PATTERN)
        # Longest first so that a token that is a prefix of another never wins.
        alternatives = sorted(self.added_tokens, key=len, reverse=True)
        self._added_split = regex.compile("(" + "|".join(regex.escape(t) for t in alternatives) + ")") \
            if alternatives else None
        self._bpe_cache: dict[str, list[str]] = {}

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Qwen2Tokenizer":
        folder = Path(folder)
        for name in ("vocab.json", "merges.txt"):
            if not (folder / name).is_file():
                raise BagelCheckpointError(
                    f"Tokenizer file {name} is missing in {folder}; copy the Qwen2.5 tokenizer files "
                    f"(vocab.json, merges.txt, tokenizer_config.json) from the BAGEL-7B-MoT download.")
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        merges = []
        for line in (folder / "merges.txt").read_text(encoding="utf-8").split("\n"):
            if not line or line.startswith("#version"):
                continue
            left, right = line.split(" ")
            merges.append((left, right))
        return cls(vocab, merges, _read_added_tokens(folder))

    def __len__(self) -> int:
        return len(set(self.encoder.values()) | set(self.added_by_id))

    def token_id(self, token: str) -> int:
        if token in self.added_tokens:
            return self.added_tokens[token]
        if token in self.encoder:
            return self.encoder[token]
        raise BagelCheckpointError(f"The tokenizer has no token {token!r}; it is not a Qwen2.5/BAGEL tokenizer.")

    def encode(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFC", text)
        pieces = self._added_split.split(text) if self._added_split else [text]
        ids: list[int] = []
        for index, piece in enumerate(pieces):
            if index % 2 == 1:  # captured group: an added token
                ids.append(self.added_tokens[piece])
            elif piece:
                ids.extend(self._encode_plain(piece))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        ids = []
        for word in self._pretokenize.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(mapped))
        return ids

    def _bpe(self, word: str) -> list[str]:
        cached = self._bpe_cache.get(word)
        if cached is not None:
            return cached
        parts = list(word)
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            parts = _merge_pair(parts, best)
        self._bpe_cache[word] = parts
        return parts

    def decode(self, ids: list[int]) -> str:
        out: list[str] = []
        plain: list[str] = []
        for token_id in ids:
            if token_id in self.added_by_id:
                out.append(self._bytes_to_text(plain))
                plain = []
                out.append(self.added_by_id[token_id])
            elif token_id in self.decoder:
                plain.append(self.decoder[token_id])
            # Ids past the tokenizer (the embedding's padding rows) have no text.
        out.append(self._bytes_to_text(plain))
        return "".join(out)

    def _bytes_to_text(self, tokens: list[str]) -> str:
        data = bytearray(self.byte_decoder[c] for c in "".join(tokens))
        return data.decode("utf-8", errors="replace")


def _merge_pair(parts: list[str], pair: tuple[str, str]) -> list[str]:
    merged: list[str] = []
    i = 0
    while i < len(parts):
        if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
            merged.append(parts[i] + parts[i + 1])
            i += 2
        else:
            merged.append(parts[i])
            i += 1
    return merged


def _read_added_tokens(folder: Path) -> dict[str, int]:
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        decoder = config.get("added_tokens_decoder")
        if decoder:
            return {entry["content"]: int(i) for i, entry in decoder.items()}
    added_path = folder / "added_tokens.json"
    if added_path.is_file():
        return {t: int(i) for t, i in json.loads(added_path.read_text(encoding="utf-8")).items()}
    raise BagelCheckpointError(
        f"Neither tokenizer_config.json (with added_tokens_decoder) nor added_tokens.json is in {folder}; "
        f"the special tokens <|im_start|>/<|im_end|>/<|vision_start|>/<|vision_end|> cannot be found.")
