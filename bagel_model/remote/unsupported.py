"""What the vLLM-Omni server cannot do as the local backend does: warnings (sent anyway, result may differ)
and errors (cannot be sent at all). Nothing here changes a setting behind the user's back."""
from __future__ import annotations

from PIL import Image

from ..errors import BagelInputError
from ..generation.request_items import request_items as checked_request_items
from .schema import SEED_LIMIT, SCHEMA_VERSION

SERVER_TIMESTEP_SHIFT = 3.0  # what vLLM-Omni's BAGEL pipeline uses when it does not read the field


def image_setting_warnings(timestep_shift: float, step_cache) -> list[str]:
    warnings = []
    if float(timestep_shift) != SERVER_TIMESTEP_SHIFT:
        warnings.append(
            f"timestep_shift={timestep_shift:g} is sent to the server, but vLLM-Omni versions whose BAGEL pipeline "
            f"does not read it always use {SERVER_TIMESTEP_SHIFT:g}; 'python tools/check_remote.py URL' shows "
            "whether your server honours it.")
    if step_cache not in (None, "off"):
        warnings.append(
            f"step_cache={getattr(step_cache, 'mode', step_cache)!r} is not applied: the server has no per-request "
            "step cache and samples every step (vLLM-Omni has its own: start it with --cache-backend tea_cache).")
    return warnings


def wire_seed(seed: int) -> tuple[int, list[str]]:
    """The seed as the server accepts it (signed 64-bit), with a warning when it had to be folded."""
    seed = int(seed)
    if 0 <= seed <= SEED_LIMIT:
        return seed, []
    folded = seed % (SEED_LIMIT + 1)
    return folded, [f"seed={seed} is above the server's signed 64-bit limit; sent seed={folded} "
                    f"(seed mod 2^63) instead."]


def reject_plan(thinking: str | None) -> None:
    if thinking is not None and thinking.strip():
        raise BagelInputError(
            f"The vLLM-Omni server ({SCHEMA_VERSION}) has no field for a written plan, so 'thinking' cannot be "
            "sent. Empty the 'thinking' input to generate without a plan, or use the local BAGEL-MoT Model "
            "Loader. (The server's own think mode, where it writes the plan itself, is the CLI's --think and "
            "the Python API's think=True.)")


def request_items(images, prompt, inputs, what: str) -> list:
    """The strings and images of one request, in order (``inputs`` when given, as the local pipeline reads it,
    else the images then the prompt). vLLM-Omni's chat endpoint uses only the first image of a request, so
    more are refused instead of dropped."""
    items = checked_request_items(images, prompt, inputs)
    count = sum(1 for item in items if isinstance(item, Image.Image))
    if count > 1:
        raise BagelInputError(
            f"{what} got {count} images, but the vLLM-Omni server uses only the first image of a request "
            "(reference images and several images in one question are not supported remotely). Disconnect the "
            "extra images (or ask about each image on its own), or use the local BAGEL-MoT Model Loader.")
    return items


def image_and_prompt(items, what: str) -> tuple[list[Image.Image], str]:
    """An image request is (optionally) one image, then one prompt: the server has no other layout."""
    images = [item for item in items if isinstance(item, Image.Image)]
    texts = [item for item in items if isinstance(item, str)]
    if len(texts) != 1 or not isinstance(items[-1], str):
        raise BagelInputError(f"{what} on the vLLM-Omni server takes at most one image followed by one prompt; "
                              "interleaved text blocks are not supported remotely.")
    return images, texts[0]
