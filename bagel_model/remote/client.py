"""``RemoteBagelClient``: BagelPipeline's understand / generate_image / edit_image / think, run by a
vLLM-Omni BAGEL server over HTTP, plus ``run_concurrently`` to send the items of a batch side by side."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import BagelInputError
from ..generation.sampler import EDIT_DEFAULTS as _EDIT
from ..generation.sampler import GENERATE_DEFAULTS as _T2I
from ..generation.sampler import SamplerSettings
from ..pipeline import BagelResult, split_thinking
from . import schema, unsupported
from .concurrency import run_concurrently
from .errors import ServerAddress
from .transport import JsonPoster

log = logging.getLogger(__name__)

METHODS = ("generate_image", "edit_image", "understand", "think")
SEED_RANGE = 2 ** 64  # ComfyUI seeds wrap like the local backend's (seed + k) % 2**64


@dataclass
class RemoteResult(BagelResult):
    """A BagelResult from the server. ``latents`` stay empty (the server returns pixels only); ``warnings``
    lists the settings the server may not have applied as asked."""

    warnings: list[str] = field(default_factory=list)


@dataclass
class _Job:
    payload: dict
    finish: Callable[[schema.Reply], RemoteResult]
    warnings: list[str]


def _merged(results: list[RemoteResult]) -> RemoteResult:
    """The images of one batched call as one result (plan of the first image, as the local batch keeps)."""
    merged = results[0]
    for other in results[1:]:
        merged.images += other.images
        merged.seconds += other.seconds
        merged.warnings += [warning for warning in other.warnings if warning not in merged.warnings]
    return merged


def _text_settings(max_tokens: int, do_sample: bool, temperature: float) -> schema.TextSettings:
    if int(max_tokens) < 1:
        raise BagelInputError(f"max_new_tokens must be at least 1, got {max_tokens}.")
    if do_sample and temperature <= 0:
        raise BagelInputError(f"temperature must be > 0 when sampling, got {temperature}.")
    return schema.TextSettings(int(max_tokens), bool(do_sample), float(temperature))


class RemoteBagelClient:
    """Duck-types BagelPipeline for the nodes, the CLI and Python callers.

    ``timeout``: seconds to wait for the server's answer to one request. ``max_concurrent_requests``: how many
    requests of a batch are in flight at once (the server queues or batches them; see README).
    """

    def __init__(self, server_url: str, api_key: str | None = None, timeout: float = 600.0,
                 max_concurrent_requests: int = 4):
        if float(timeout) <= 0:
            raise BagelInputError(f"timeout must be > 0 seconds, got {timeout}.")
        if int(max_concurrent_requests) < 1:
            raise BagelInputError(f"max_concurrent_requests must be at least 1, got {max_concurrent_requests}.")
        self.address = ServerAddress.parse(server_url)
        self.max_concurrent_requests = int(max_concurrent_requests)
        self.timeout = float(timeout)
        self._poster = JsonPoster(self.address, api_key, self.timeout)

    @property
    def server(self) -> str:
        return self.address.display

    def __repr__(self) -> str:  # ComfyUI prints node inputs in error reports: never include the key
        return f"RemoteBagelClient(server={self.server!r}, max_concurrent_requests={self.max_concurrent_requests})"

    # ---- BagelPipeline-compatible calls ------------------------------------------------------------

    def generate_image(self, prompt: str, width: int = 1024, height: int = 1024, callback=None,
                       num_images: int = 1, **settings) -> RemoteResult:
        """``num_images``: image k uses seed + k (as locally), each its own concurrent request."""
        if not isinstance(num_images, int) or num_images < 1:
            raise BagelInputError(f"num_images must be a whole number >= 1, got {num_images!r}.")
        seed = int(settings.pop("seed", 0))
        jobs = [dict(prompt=prompt, width=width, height=height, seed=(seed + k) % SEED_RANGE, **settings)
                for k in range(num_images)]
        return _merged(self.run_concurrently("generate_image", jobs, callback))

    def edit_image(self, images, prompt: str, callback=None, **settings) -> RemoteResult:
        return self.run_concurrently("edit_image", [dict(images=images, prompt=prompt, **settings)], callback)[0]

    def understand(self, images, prompt: str, callback=None, **settings) -> RemoteResult:
        return self.run_concurrently("understand", [dict(images=images, prompt=prompt, **settings)], callback)[0]

    def think(self, prompt: str, images=None, callback=None, **settings) -> RemoteResult:
        return self.run_concurrently("think", [dict(prompt=prompt, images=images, **settings)], callback)[0]

    def run_concurrently(self, method: str, jobs: list[dict], callback=None) -> list[RemoteResult]:
        """Runs ``method`` once per keyword dict in ``jobs``, up to max_concurrent_requests at a time.

        Every job is checked before the first request goes out. ``callback(stage, finished, total)`` is called
        while waiting (stage "request"); an exception from it aborts all requests in flight and propagates.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        prepared = [getattr(self, f"_prepare_{method}")(**job) for job in jobs]
        for warning in dict.fromkeys(w for job in prepared for w in job.warnings):
            log.warning("BAGEL server %s: %s", self.server, warning)
        return run_concurrently([self._task(job) for job in prepared], self.max_concurrent_requests, callback)

    # ---- request preparation ------------------------------------------------------------------------

    def _task(self, job: _Job):
        def send(aborter) -> RemoteResult:
            start = time.perf_counter()
            body = self._poster.post(schema.CHAT_COMPLETIONS_PATH, job.payload, aborter)
            result = job.finish(schema.parse_reply(body, self.server))
            result.seconds = time.perf_counter() - start
            result.warnings = list(job.warnings)
            return result

        return send

    def _image_job(self, items, size, settings: SamplerSettings, seed, think, max_think_tokens, thinking,
                   do_sample, temperature, step_cache) -> _Job:
        unsupported.reject_plan(thinking)
        images, prompt = unsupported.image_and_prompt(items, "image generation")
        settings.validate()
        wire_seed, warnings = unsupported.wire_seed(seed)
        warnings = unsupported.image_setting_warnings(settings.timestep_shift, step_cache) + warnings
        fields = schema.ImageSettings(settings.steps, settings.cfg_text_scale, settings.cfg_img_scale,
                                      tuple(settings.cfg_interval), settings.cfg_renorm_type,
                                      settings.cfg_renorm_min, settings.timestep_shift)
        payload = schema.image_request(prompt, images, size, fields, wire_seed, think,
                                       _text_settings(max_think_tokens, do_sample, temperature))

        def finish(reply: schema.Reply) -> RemoteResult:
            image = schema.require_image(reply, self.server)
            plan = schema.think_text_of(reply) if think else ""
            return RemoteResult(text=plan, thinking=plan, images=[image])

        return _Job(payload, finish, warnings)

    def _prepare_generate_image(self, prompt, width=1024, height=1024, steps=_T2I.steps,
                                cfg_text_scale=_T2I.cfg_text_scale, cfg_img_scale=_T2I.cfg_img_scale,
                                cfg_interval=_T2I.cfg_interval, timestep_shift=_T2I.timestep_shift,
                                cfg_renorm_min=_T2I.cfg_renorm_min, cfg_renorm_type=_T2I.cfg_renorm_type,
                                think=False, max_think_tokens=1000,
                                thinking=None, seed=0, do_sample=False, temperature=0.3, inputs=None,
                                step_cache=None, batch_cfg=None, batch_images=None, preview=None) -> _Job:
        # batch_cfg / batch_images only change how the local backend schedules its work (same result), and the
        # server streams no intermediate latents for previews: nothing to send for them.
        settings = SamplerSettings(int(steps), cfg_text_scale, cfg_img_scale, tuple(cfg_interval), timestep_shift,
                                   cfg_renorm_min, cfg_renorm_type)
        items = unsupported.request_items(None, prompt, inputs, "generate_image")
        if any(not isinstance(item, str) for item in items):
            raise BagelInputError("generate_image takes no input image; use edit_image.")
        return self._image_job(items, (int(width), int(height)), settings, seed, think, max_think_tokens,
                               thinking, do_sample, temperature, step_cache)

    def _prepare_edit_image(self, images, prompt, steps=_EDIT.steps, cfg_text_scale=_EDIT.cfg_text_scale,
                            cfg_img_scale=_EDIT.cfg_img_scale, cfg_interval=_EDIT.cfg_interval,
                            timestep_shift=_EDIT.timestep_shift, cfg_renorm_min=_EDIT.cfg_renorm_min,
                            cfg_renorm_type=_EDIT.cfg_renorm_type, think=False, max_think_tokens=1000, thinking=None,
                            output_size=None, seed=0, do_sample=False, temperature=0.3, inputs=None,
                            step_cache=None, batch_cfg=None, preview=None) -> _Job:
        items = unsupported.request_items(images, prompt, inputs, "edit_image")
        if all(isinstance(item, str) for item in items):
            raise BagelInputError("edit_image needs at least one input image.")
        size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        settings = SamplerSettings(int(steps), cfg_text_scale, cfg_img_scale, tuple(cfg_interval), timestep_shift,
                                   cfg_renorm_min, cfg_renorm_type)
        return self._image_job(items, size, settings, seed, think, max_think_tokens, thinking, do_sample,
                               temperature, step_cache)

    def _prepare_understand(self, images, prompt, think=False, max_new_tokens=512, do_sample=False,
                            temperature=0.3, seed=0, inputs=None) -> _Job:
        items = unsupported.request_items(images, prompt, inputs, "understand")
        wire_seed, warnings = unsupported.wire_seed(seed)
        payload = schema.text_request(items, _text_settings(max_new_tokens, do_sample, temperature), wire_seed,
                                      think)

        def finish(reply: schema.Reply) -> RemoteResult:
            text = schema.require_text(reply, self.server)
            reasoning, answer = split_thinking(text) if think else ("", text)
            return RemoteResult(text=text, thinking=reasoning, answer=answer)

        return _Job(payload, finish, warnings)

    def _prepare_think(self, prompt, images=None, max_think_tokens=1000, do_sample=False, temperature=0.3,
                       seed=0, inputs=None) -> _Job:
        items = unsupported.request_items(images, prompt, inputs, "think")
        wire_seed, warnings = unsupported.wire_seed(seed)
        payload = schema.text_request(items, _text_settings(max_think_tokens, do_sample, temperature), wire_seed,
                                      True)

        def finish(reply: schema.Reply) -> RemoteResult:
            plan = schema.require_text(reply, self.server)
            return RemoteResult(text=plan, thinking=plan)

        return _Job(payload, finish, warnings)
