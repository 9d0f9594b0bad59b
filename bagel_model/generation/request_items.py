"""The ordered strings and images of one request, checked once for every backend (local pipeline, remote)."""
from __future__ import annotations

from PIL import Image

from ..errors import BagelInputError

EMPTY_PROMPT = "The prompt is empty; write what the model should do."


def request_items(images, prompt: str | None, inputs: list | None) -> list:
    """``inputs`` (interleaved strings and PIL images) when given, else the images followed by the prompt.

    Refuses blank strings, items that are neither strings nor images, and requests without any text."""
    if inputs is not None:
        items = list(inputs)
    else:
        items = [*([images] if isinstance(images, Image.Image) else list(images or [])), prompt]
    for item in items:
        if isinstance(item, str):
            if not item.strip():
                raise BagelInputError(EMPTY_PROMPT)
        elif not isinstance(item, Image.Image):
            raise BagelInputError(f"Inputs must be strings or PIL images, got {type(item).__name__}.")
    if not any(isinstance(item, str) for item in items):
        raise BagelInputError(EMPTY_PROMPT)
    return items
