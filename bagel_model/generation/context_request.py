"""A conditioning context described by its inputs, prefilled on demand.

A host that schedules the prefill itself (ComfyUI computes a sampling run's contexts once, right before the
first step, with the weights patched as the run wants them) carries this description instead of a KV cache.
Prefilling it gives the context the pipeline's own flows build for the same inputs: the system prompt, then the
items in order (texts; images as VAE tokens then ViT tokens, as in the official edit and multi-image
contexts), then the plan (thinking) text.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from PIL import Image

from ..model.kv_cache import Context
from ..text.tokenizer import Qwen2Tokenizer
from .conditioning import ConditioningBuilder
from .runtime import BagelRuntime


@dataclass(frozen=True)
class ContextRequest:
    items: tuple = ()  # str (a text segment) or PIL.Image.Image, in context order
    system_prompt: str | None = None
    plan: str | None = None  # thinking text appended after the items

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(item for item in self.items if isinstance(item, str))

    @property
    def images(self) -> tuple[Image.Image, ...]:
        return tuple(item for item in self.items if isinstance(item, Image.Image))

    def with_images_first(self, images: list[Image.Image]) -> "ContextRequest":
        """The same context with ``images`` before its items (where the official edit puts the input)."""
        return replace(self, items=tuple(images) + self.items)

    def with_plan(self, system_prompt: str, plan: str) -> "ContextRequest":
        return replace(self, system_prompt=system_prompt, plan=plan)

    def with_system_prompt(self, system_prompt: str | None) -> "ContextRequest":
        return replace(self, system_prompt=system_prompt)


def prefill_request(runtime: BagelRuntime, tokenizer: Qwen2Tokenizer, request: ContextRequest,
                    generator: torch.Generator | None) -> Context:
    """The prefilled context of ``request``. ``generator`` draws the VAE posterior samples of its images (the
    pipeline seeds it with the request's seed). An empty request gives the zero-length context."""
    builder = ConditioningBuilder(runtime, tokenizer)
    cond = builder.build(list(request.items), request.system_prompt, use_vae=True, generator=generator)
    if request.plan is not None:
        builder.add_text(cond.gen, request.plan)
    return cond.gen
