"""The request and answer format of vLLM-Omni's BAGEL chat endpoint (``POST /v1/chat/completions``).

Written from vLLM-Omni's own documentation and source (see SCHEMA_SOURCE), not from a live server:
- ``modalities`` ``["image"]`` (text-to-image, image-to-image) or ``["text"]`` (image/text to text);
- the prompt is one text part of the user message, framed with BAGEL's ``<|im_start|>``/``<|im_end|>``
  markers as in the documented examples; input images are ``image_url`` parts holding PNG data URIs;
- ``height``, ``width``, ``num_inference_steps``, ``seed`` at the top level; the BAGEL fields the pipeline
  declares (``cfg_text_scale``, ``cfg_img_scale``, ``cfg_interval``, ``cfg_renorm_type``, ``cfg_renorm_min``,
  ``timestep_shift``, ``think``, ``max_think_tokens``, ``do_sample``, ``text_temperature``) also at the top
  level, from where the server routes them into the pipeline's ``extra_args``. (Sending a key both at the
  top level and inside an ``extra_args`` object is rejected by newer servers as a duplicate, so each key is
  sent once, at the top level, which every version that reads the field accepts.)
- generated images come back as ``message.content = [{"type": "image_url", "image_url": {"url":
  "data:image/png;base64,..."}}]``; text as a string ``message.content``; text and image may arrive in
  separate choices (think mode), so every choice is read.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from .errors import CHECK_HINT, RemoteResponseError

SCHEMA_VERSION = "vLLM-Omni 0.21"
SCHEMA_SOURCE = (
    "docs.vllm.ai/projects/vllm-omni (BAGEL-7B-MoT online serving example, Chat Completions API page) and "
    "vllm_omni/entrypoints/openai/serving_chat.py, vllm_omni/model_extras/bagel.py, "
    "vllm_omni/diffusion/models/bagel/pipeline_bagel.py of the 0.21 line")
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# OpenAI's (and vLLM's) `seed` is a signed 64-bit integer; ComfyUI seeds go up to 2**64 - 1.
SEED_LIMIT = 2 ** 63 - 1


def png_data_uri(image: Image.Image) -> str:
    """A PIL image as a PNG data URI (RGBA is composited on white, as the local backend does)."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_prompt_text(prompt: str) -> str:
    """Text part of a text-to-image / image-to-image request, as in vLLM-Omni's BAGEL examples."""
    return f"<|im_start|>{prompt}<|im_end|>"


IMAGE_PAD = "<|image_pad|>"


def text_prompt_text(items) -> str:
    """Text part of an image-to-text / text-to-text request, as in vLLM-Omni's BAGEL examples: one user turn in
    which ``<|image_pad|>`` marks where each image of ``items`` (strings and images, in order) stands."""
    body = "\n".join(item if isinstance(item, str) else IMAGE_PAD for item in items)
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


def user_message(text: str, images) -> list[dict]:
    content = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": png_data_uri(image)}} for image in images]
    return [{"role": "user", "content": content}]


@dataclass(frozen=True)
class ImageSettings:
    """Every sampler setting of an image request, under the server's field names."""

    steps: int
    cfg_text_scale: float
    cfg_img_scale: float
    cfg_interval: tuple[float, float]
    cfg_renorm_type: str
    cfg_renorm_min: float
    timestep_shift: float


@dataclass(frozen=True)
class TextSettings:
    max_tokens: int
    do_sample: bool
    temperature: float


def image_request(prompt: str, images, size, settings: ImageSettings, seed: int, think: bool,
                  think_text: TextSettings) -> dict:
    """``size`` (width, height), or None to let the server derive it from the input image."""
    payload = {
        "messages": user_message(image_prompt_text(prompt), images),
        "modalities": ["image"],
        "num_inference_steps": int(settings.steps),
        "seed": int(seed),
        "cfg_text_scale": float(settings.cfg_text_scale),
        "cfg_img_scale": float(settings.cfg_img_scale),
        "cfg_interval": [float(settings.cfg_interval[0]), float(settings.cfg_interval[1])],
        "cfg_renorm_type": settings.cfg_renorm_type,
        "cfg_renorm_min": float(settings.cfg_renorm_min),
        "timestep_shift": float(settings.timestep_shift),
        "think": bool(think),
        "max_think_tokens": int(think_text.max_tokens),
        "do_sample": bool(think_text.do_sample),
        "text_temperature": float(think_text.temperature),
    }
    if size is not None:
        payload["width"], payload["height"] = int(size[0]), int(size[1])
    return payload


def text_request(items, settings: TextSettings, seed: int, think: bool) -> dict:
    """Understanding / planning of ``items`` (strings and images, in order). The standard OpenAI fields drive
    the AR stage of the two-stage server; the BAGEL fields drive the single-stage pipeline's text path (it reads
    its token budget from max_think_tokens)."""
    images = [item for item in items if not isinstance(item, str)]
    return {
        "messages": user_message(text_prompt_text(items), images),
        "modalities": ["text"],
        "max_tokens": int(settings.max_tokens),
        "temperature": float(settings.temperature) if settings.do_sample else 0.0,
        "seed": int(seed),
        "think": bool(think),
        "max_think_tokens": int(settings.max_tokens),
        "do_sample": bool(settings.do_sample),
        "text_temperature": float(settings.temperature),
    }


@dataclass
class Reply:
    """What one answer held, across all of its choices."""

    texts: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def _shape_error(server: str, what: str) -> RemoteResponseError:
    return RemoteResponseError(
        f"The server at {server} answered, but not in vLLM-Omni's chat-completions format: {what}. Check that "
        f"server_url points to a vLLM-Omni BAGEL server ('vllm serve ByteDance-Seed/BAGEL-7B-MoT --omni'), not "
        f"another service or proxy page. {CHECK_HINT}")


def parse_json(raw: bytes, server: str):
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        preview = raw[:120].decode("utf-8", "replace")
        raise _shape_error(server, f"the body is not JSON ({exc}; it starts with {preview!r})") from exc


def decode_png_uri(url, server: str) -> Image.Image:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise _shape_error(server, "an image_url is not a data: URI")
    header, _, data = url.partition(",")
    if ";base64" not in header:
        raise _shape_error(server, f"an image data URI is not base64 ({header[:40]!r})")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _shape_error(server, f"an image data URI holds invalid base64 ({exc})") from exc
    if not raw.startswith(PNG_SIGNATURE):
        raise RemoteResponseError(
            f"The server at {server} returned an image that is not a PNG (data URI header {header[:40]!r}, first "
            f"bytes {raw[:8]!r}); vLLM-Omni sends PNG. Check the server and any proxy that re-encodes images. "
            f"{CHECK_HINT}")
    try:
        with Image.open(io.BytesIO(raw)) as picture:
            picture.load()
            return picture.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise RemoteResponseError(
            f"The server at {server} returned a broken PNG ({exc}). Retry; if it persists, check the server. "
            f"{CHECK_HINT}") from exc


def _read_content(content, reply: Reply, server: str) -> None:
    if content is None:
        return
    if isinstance(content, str):
        reply.texts.append(content)
        return
    if not isinstance(content, list):
        raise _shape_error(server, f"message.content is a {type(content).__name__}, not a string or list")
    for part in content:
        if not isinstance(part, dict):
            raise _shape_error(server, "a message.content item is not an object")
        if part.get("type") == "image_url" or "image_url" in part:
            image_url = part.get("image_url")
            reply.images.append(decode_png_uri(image_url.get("url") if isinstance(image_url, dict) else None,
                                               server))
        elif part.get("type") == "text" and isinstance(part.get("text"), str):
            reply.texts.append(part["text"])


def parse_reply(body, server: str) -> Reply:
    if not isinstance(body, dict):
        raise _shape_error(server, f"the JSON body is a {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _shape_error(server, "it has no 'choices' list")
    reply = Reply(metrics=body.get("metrics") if isinstance(body.get("metrics"), dict) else {})
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise _shape_error(server, "a choice has no 'message' object")
        _read_content(message.get("content"), reply, server)
    return reply


def require_image(reply: Reply, server: str) -> Image.Image:
    if not reply.images:
        said = f" (it said: {' '.join(reply.texts)[:200]!r})" if reply.texts else ""
        raise _shape_error(server, f"an image was requested but the answer holds no image_url{said}")
    if len(reply.images) > 1:
        raise _shape_error(server, f"one image was requested but the answer holds {len(reply.images)}")
    return reply.images[0]


def require_text(reply: Reply, server: str) -> str:
    texts = [text for text in reply.texts if text.strip()]
    if texts:
        return "\n".join(texts)
    fallback = reply.metrics.get("text_output")
    if isinstance(fallback, str) and fallback.strip():
        return fallback
    raise _shape_error(server, "text was requested but the answer holds no text content")


def think_text_of(reply: Reply) -> str:
    """The plan of a think-mode image request: a text choice, or the 'think_text' the server reports."""
    texts = [text for text in reply.texts if text.strip()]
    if texts:
        return "\n".join(texts)
    fallback = reply.metrics.get("think_text")
    return fallback if isinstance(fallback, str) else ""
