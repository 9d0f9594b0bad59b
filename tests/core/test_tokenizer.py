"""The tokenizer (the `tokenizers` library) gives the slow Qwen2Tokenizer's ids and text.

data/qwen25_tokenizer_reference.json holds 448 strings and 200 id lists (special tokens, whitespace runs,
newlines, CJK, emoji, digits, combining marks next to added tokens, random mixes; id lists with lone UTF-8
bytes, added tokens and ids past the vocabulary) with the ids / text of the hand-written slow-tokenizer
implementation this package used until it switched to `tokenizers` (commit fbce434), on the real Qwen2.5 files
(ComfyUI 0.3.64's copy, kept fixed in ../shared/fixtures/qwen25_tokenizer: a ComfyUI tree is never read, its
tokenizer_config.json changes between versions).
"""
import json
import os
import shutil
from pathlib import Path

import pytest

from bagel_model.errors import BagelCheckpointError
from bagel_model.testing import SHARED_QWEN25_TOKENIZER, find_qwen25_tokenizer
from bagel_model.text.tokenizer import Qwen2Tokenizer

REFERENCE = json.loads((Path(__file__).parent / "data" / "qwen25_tokenizer_reference.json").read_text())


@pytest.fixture(scope="module")
def qwen25_folder() -> Path:
    folder = find_qwen25_tokenizer()
    if folder is None:
        message = (f"the fixed Qwen2.5 tokenizer files are not at {SHARED_QWEN25_TOKENIZER} (../shared is not beside "
                   "this checkout): put the team's shared folder there, or set BAGEL_QWEN25_TOKENIZER to a folder "
                   "with Qwen2.5's vocab.json, merges.txt and tokenizer_config.json (22 added tokens)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


def test_encode_equals_the_slow_tokenizer(qwen25_folder):
    tok = Qwen2Tokenizer.from_folder(qwen25_folder)
    wrong = [(text, ids, tok.encode(text)) for text, ids in REFERENCE["encode"] if tok.encode(text) != ids]
    assert not wrong, f"{len(wrong)} of {len(REFERENCE['encode'])} differ, e.g. {wrong[:2]}"


def test_decode_equals_the_slow_tokenizer(qwen25_folder):
    tok = Qwen2Tokenizer.from_folder(qwen25_folder)
    wrong = [(ids, text, tok.decode(ids)) for ids, text in REFERENCE["decode"] if tok.decode(ids) != text]
    assert not wrong, f"{len(wrong)} of {len(REFERENCE['decode'])} differ, e.g. {wrong[:2]}"
    assert any("\ufffd" in text for _, text in REFERENCE["decode"])  # invalid UTF-8 is covered


def test_added_token_followed_by_a_combining_mark_is_not_split_off(qwen25_folder):
    """NFC joins ">" + U+0338 into "≯" before the added tokens are found, as in the slow tokenizer."""
    tok = Qwen2Tokenizer.from_folder(qwen25_folder)
    assert tok.token_id("<|im_end|>") not in tok.encode("<|im_end|>\u0338")
    assert tok.token_id("<|im_end|>") in tok.encode("<|im_end|> \u0338")


def test_tokenizer_json_and_vocab_merges_agree(golden, tmp_path):
    """The golden folder's official-layout tokenizer.json and its vocab.json/merges.txt give the same ids."""
    folder = golden / "checkpoint"
    without_json = tmp_path / "vocab_merges"
    without_json.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(folder / name, without_json / name)
    from_json, from_files = Qwen2Tokenizer.from_folder(folder), Qwen2Tokenizer.from_folder(without_json)
    for text, _ in REFERENCE["encode"]:
        assert from_json.encode(text) == from_files.encode(text), text
        assert from_json.decode(from_json.encode(text)) == from_files.decode(from_files.encode(text))


def test_unreadable_tokenizer_json_names_the_file(tiny_checkpoint, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(BagelCheckpointError, match="tokenizer.json is not a readable tokenizer file"):
        Qwen2Tokenizer.from_folder(folder)
