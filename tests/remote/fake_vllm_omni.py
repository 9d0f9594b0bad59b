"""A stand-in for a vLLM-Omni BAGEL server, for tests (no GPU, no model).

It checks every request field by field against vLLM-Omni's documented chat-completions schema for BAGEL
(written here from vLLM-Omni's docs and source independently of bagel_model/remote/schema.py, so a client
mistake is not mirrored) and answers in vLLM-Omni's documented shapes: images as PNG data URIs in
``message.content`` lists, text as a string, and in think mode the text and the image in separate choices.
Anything the real server would not understand is rejected with HTTP 400 in vLLM's error shape, so a typo in
a field name fails a test instead of being ignored. Knobs on the object script failures, delays and holds.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

NUMBER = (int, float)
BAGEL_FIELDS = {  # vllm_omni/model_extras/bagel.py BAGEL_EXTRA_BODY_PARAMS (minus negative_prompt, below)
    "cfg_text_scale": NUMBER, "cfg_img_scale": NUMBER, "cfg_interval": list, "cfg_renorm_type": str,
    "cfg_renorm_min": NUMBER, "timestep_shift": NUMBER, "think": bool, "max_think_tokens": int,
    "do_sample": bool, "text_temperature": NUMBER,
}
STANDARD_FIELDS = {  # OpenAI chat fields vLLM reads, and the diffusion fields the BAGEL docs put at the top
    "messages": list, "modalities": list, "model": str, "seed": int, "max_tokens": int, "temperature": NUMBER,
    "height": int, "width": int, "num_inference_steps": int, "negative_prompt": str, "stream": bool,
}
RENORM_TYPES = {"global", "channel", "text_channel"}
INT64 = (-(2 ** 63), 2 ** 63 - 1)
STRIDE, MAX_SIDE = 16, 1024


class RequestError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _check_type(name, value, kind):
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError(f"{name} must be an integer, got {value!r}")
    if kind is NUMBER and (isinstance(value, bool) or not isinstance(value, NUMBER)):
        raise RequestError(f"{name} must be a number, got {value!r}")
    if kind in (str, bool, list, dict) and not isinstance(value, kind):
        raise RequestError(f"{name} must be a {kind.__name__}, got {value!r}")


def _decode_input_image(url) -> Image.Image:
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise RequestError(f"image_url.url must be a base64 data URI, got {str(url)[:40]!r}")
    header, data = url.split(",", 1)
    raw = base64.b64decode(data, validate=True)
    with Image.open(io.BytesIO(raw)) as picture:
        if header.startswith("data:image/png") and picture.format != "PNG":
            raise RequestError("data URI says image/png but the bytes are not PNG")
        picture.load()
        return picture.convert("RGB")


def parse_messages(messages, modality):
    """(prompt text, input images) after checking the user message the BAGEL docs show."""
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        raise RequestError("BAGEL requests carry exactly one message with role 'user'")
    content = messages[0].get("content")
    if not isinstance(content, list) or not content or content[0].get("type") != "text":
        raise RequestError("message content must be a list whose first part is {'type': 'text', ...}")
    text = content[0].get("text")
    _check_type("text", text, str)
    images = []
    for part in content[1:]:
        if part.get("type") != "image_url" or set(part) != {"type", "image_url"}:
            raise RequestError(f"unexpected content part {part!r}")
        images.append(_decode_input_image(part["image_url"].get("url")))
    if modality == "image":
        if not (text.startswith("<|im_start|>") and text.endswith("<|im_end|>")):
            raise RequestError("image prompts are framed '<|im_start|>PROMPT<|im_end|>' in the BAGEL examples")
        prompt = text[len("<|im_start|>"):-len("<|im_end|>")]
    else:
        head, tail = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
        if not (text.startswith(head) and text.endswith(tail)):
            raise RequestError("text prompts are framed as a user turn + assistant start in the BAGEL examples")
        prompt = text[len(head):-len(tail)]
        pads = prompt.count("<|image_pad|>")
        if pads != len(images):
            raise RequestError(f"{pads} <|image_pad|> placeholders for {len(images)} images")
        prompt = prompt.replace("<|image_pad|>", "").strip()
    if not prompt.strip():
        raise RequestError("No text prompt found in messages")
    return prompt, images


def check_request(body) -> dict:
    """Field-by-field check; returns the parsed request."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object", 422)
    allowed = {**STANDARD_FIELDS, **BAGEL_FIELDS, "extra_args": dict}
    for name, value in body.items():
        if name not in allowed:
            raise RequestError(f"unknown field {name!r} (the real server would ignore it)")
        _check_type(name, value, allowed[name])
    duplicated = set(body.get("extra_args", {})) & set(body)
    if duplicated:
        raise RequestError(f"Diffusion request parameters were provided more than once: {sorted(duplicated)}")
    fields = {**body, **body.get("extra_args", {})}
    modalities = fields.get("modalities")
    if modalities not in (["image"], ["text"]):
        raise RequestError(f"modalities must be ['image'] or ['text'] for BAGEL, got {modalities!r}")
    modality = modalities[0]
    if "seed" in fields and not INT64[0] <= fields["seed"] <= INT64[1]:
        raise RequestError(f"seed {fields['seed']} is outside the signed 64-bit range")
    if modality == "image":
        if fields.get("num_inference_steps", 50) < 2:
            raise RequestError("BAGEL image requests require num_inference_steps >= 2")
        for side in ("width", "height"):
            if side in fields and fields[side] > MAX_SIDE:
                raise RequestError(f"Requested {side}={fields[side]} exceeds the BAGEL checkpoint limit of 1024")
        if "cfg_renorm_type" in fields and fields["cfg_renorm_type"] not in RENORM_TYPES:
            raise RequestError(f"cfg_renorm_type {fields['cfg_renorm_type']!r} unknown")
        interval = fields.get("cfg_interval", [0.4, 1.0])
        if len(interval) != 2 or not all(isinstance(v, NUMBER) for v in interval):
            raise RequestError("cfg_interval must be [start, end]")
    elif fields.get("max_tokens", 1) < 1:
        raise RequestError("max_tokens must be at least 1")
    prompt, images = parse_messages(fields["messages"], modality)
    return {"fields": fields, "modality": modality, "prompt": prompt, "images": images}


def native_size(image: Image.Image) -> tuple[int, int]:
    """vLLM-Omni's documented img2img canvas: keep aspect, 16 px stride, at most 1024, short side >= 256."""
    width, height = image.size
    scale = min(MAX_SIDE / max(width, height), 1.0)
    scale = max(scale, min(256, MAX_SIDE) / min(width, height))
    resized = [max(STRIDE, int(round(side * scale / STRIDE) * STRIDE)) for side in (width, height)]
    return min(resized[0], MAX_SIDE), min(resized[1], MAX_SIDE)


def png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class FakeVllmOmni:
    """``with FakeVllmOmni() as fake: fake.url`` — a server on 127.0.0.1 at a free port."""

    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self.requests: list[dict] = []  # parsed requests, in arrival order
        self.headers: list[dict] = []
        self.fail_with: tuple[int, object] | None = None  # (status, JSON body or raw str) for every request
        self.answer_override = None  # callable(parsed) -> raw bytes body (200), for wrong-shape answers
        self.think_layout = "separate"  # think + image: "separate" (text choice, image choice) or "image_only"
        self.honours = {"timestep_shift": True}  # False: answer as a server that fixes the shift at 3.0
        self.latency = 0.0  # seconds each answer takes (a stand-in for generation time, for bench/)
        self.hold = threading.Event()  # cleared: requests wait (see hold_requests)
        self.hold.set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.disconnected = 0
        self.reached = threading.Condition()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name="fake-vllm-omni", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def hold_requests(self) -> None:
        """Requests stay unanswered until release() (or their client disconnects, which is counted)."""
        self.hold.clear()

    def release(self) -> None:
        self.hold.set()

    def wait_in_flight(self, count: int, timeout: float = 30.0) -> bool:
        with self.reached:
            return self.reached.wait_for(lambda: self.in_flight >= count, timeout)

    # ---- answers ------------------------------------------------------------------------------------

    def image_for(self, parsed) -> Image.Image:
        fields = parsed["fields"]
        if "width" in fields or "height" in fields:
            size = (fields.get("width", MAX_SIDE), fields.get("height", MAX_SIDE))
        elif parsed["images"]:
            size = native_size(parsed["images"][0])
        else:
            size = (MAX_SIDE, MAX_SIDE)
        honoured = {k: v for k, v in fields.items()
                    if k not in ("messages",) and self.honours.get(k, True)}
        digest = hashlib.sha256(json.dumps([parsed["prompt"], honoured], sort_keys=True).encode()).digest()
        return Image.new("RGB", size, tuple(digest[:3]))

    def answer(self, parsed) -> dict:
        fields = parsed["fields"]
        if parsed["modality"] == "text":
            text = f"answer to: {parsed['prompt']} (seed {fields.get('seed')})"
            if fields.get("think"):
                text = f"<think>plan for: {parsed['prompt']}</think> {text}"
            choices = [{"index": 0, "message": {"role": "assistant", "content": text}}]
        else:
            image = {"type": "image_url", "image_url": {"url": png_uri(self.image_for(parsed))},
                     "stage_durations": {}, "peak_memory_mb": 0.0}
            image_choice = {"index": 0, "message": {"role": "assistant", "content": [image]}}
            choices = [image_choice]
            if fields.get("think") and self.think_layout == "separate":
                text_choice = {"index": 0, "message": {"role": "assistant", "content": f"plan: {parsed['prompt']}"}}
                choices = [text_choice, {**image_choice, "index": 1}]
        for choice in choices:
            choice.update(finish_reason="stop", logprobs=None, stop_reason=None)
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                "model": "ByteDance-Seed/BAGEL-7B-MoT", "choices": choices,
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    # ---- HTTP ---------------------------------------------------------------------------------------

    def _wait_while_held(self, connection: socket.socket) -> bool:
        """False when the client went away while held."""
        while not self.hold.wait(0.02):
            readable, _, _ = select.select([connection], [], [], 0)
            if readable and not connection.recv(1, socket.MSG_PEEK):
                with self._lock:
                    self.disconnected += 1
                return False
        return True

    def _enter(self):
        with self.reached:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.reached.notify_all()

    def _leave(self):
        with self.reached:
            self.in_flight -= 1
            self.reached.notify_all()

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"detail": "Not Found"})
                with fake._lock:
                    fake.headers.append(dict(self.headers))
                if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    return self._send(401, {"error": "Unauthorized"})
                fake._enter()
                try:
                    if not fake._wait_while_held(self.connection):
                        return None
                    if fake.latency:
                        time.sleep(fake.latency)
                    self._answer(raw)
                finally:
                    fake._leave()

            def _answer(self, raw):
                try:
                    parsed = check_request(json.loads(raw))
                except (RequestError, json.JSONDecodeError, ValueError, OSError) as exc:
                    status = getattr(exc, "status", 400)
                    return self._send(status, {"error": {"message": str(exc), "type": "BadRequestError",
                                                         "param": None, "code": status}})
                with fake._lock:
                    fake.requests.append(parsed)
                if fake.fail_with is not None:
                    status, body = fake.fail_with
                    return self._send(status, body.encode() if isinstance(body, str) else body)
                if fake.answer_override is not None:
                    return self._send(200, fake.answer_override(parsed))
                return self._send(200, fake.answer(parsed))

        return Handler
