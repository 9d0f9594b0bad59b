"""Prompt framing: special token ids, the two think system prompts, and text extraction (spec §4)."""
from __future__ import annotations

from dataclasses import dataclass

from .tokenizer import Qwen2Tokenizer

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"

# Line 1 of each prompt ends with a space before the newline; that space is part of the official string.
VLM_THINK_SYSTEM_PROMPT = (
    "You should first think about the reasoning process in the mind and then provide the user with the answer. \n"
    "The reasoning process is enclosed within <think> </think> tags, i.e. <think> reasoning process here "
    "</think> answer here")
GEN_THINK_SYSTEM_PROMPT = (
    "You should first think about the planning process in the mind and then generate the image. \n"
    "The planning process is enclosed within <think> </think> tags, i.e. <think> planning process here "
    "</think> image here")


@dataclass(frozen=True)
class SpecialIds:
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Qwen2Tokenizer) -> "SpecialIds":
        return cls(tokenizer.token_id(IM_START), tokenizer.token_id(IM_END),
                   tokenizer.token_id(VISION_START), tokenizer.token_id(VISION_END))


def text_block_ids(tokenizer: Qwen2Tokenizer, ids: SpecialIds, text: str) -> list[int]:
    """One text segment: ``<|im_start|>`` + encoded text + ``<|im_end|>`` (no chat roles)."""
    return [ids.im_start, *tokenizer.encode(text), ids.im_end]


def extract_generated_text(tokenizer: Qwen2Tokenizer, ids_with_start: list[int]) -> str:
    """Decodes generated ids (start token first) the official way: the text between the leading
    ``<|im_start|>`` and a second one, cut at the first ``<|im_end|>``."""
    decoded = tokenizer.decode(ids_with_start)
    before_end = decoded.split(IM_END)[0]
    parts = before_end.split(IM_START)
    return parts[1] if len(parts) > 1 else parts[0]
