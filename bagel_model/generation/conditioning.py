"""Builds the three conditioning contexts of a request the way the official inferencer does (spec §6.2).

``gen`` holds every input in order. ``cfg_text`` is ``gen`` as it was before the last text segment (images
and system prompt kept). ``cfg_img`` holds the text segments only (no image of any kind). Both CFG contexts are
prefixes of ``gen`` whenever possible, so they cost nothing; ``cfg_img`` is prefilled separately only when an
image sits between texts and image guidance is actually used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from ..text.framing import text_block_ids
from .images import to_rgb
from ..model.kv_cache import Context
from .runtime import BagelRuntime
from ..text.tokenizer import Qwen2Tokenizer


@dataclass
class Conditioning:
    gen: Context
    cfg_text: Context
    texts: list[str] = field(default_factory=list)
    image_free: Context | None = None  # snapshot of gen holding exactly ``texts`` when gen has no image
    image_size: tuple[int, int] | None = None  # (width, height) of the last image after the VAE rule
    vit_tokens: int = 0


class ConditioningBuilder:
    def __init__(self, runtime: BagelRuntime, tokenizer: Qwen2Tokenizer):
        self.runtime = runtime
        self.tokenizer = tokenizer
        # Called with a residency.PHASE_GROUPS key before each kind of block (text, ViT image, VAE image), so
        # a memory manager loads only the weights that block reads (the pipeline sets its phase hook here).
        self.phase: Callable[[str], None] = lambda name: None

    def add_text(self, ctx: Context, text: str) -> None:
        self.runtime.prefill_text(ctx, text_block_ids(self.tokenizer, self.runtime.special, text))

    def build(self, items: list, system_prompt: str | None, use_vae: bool,
              generator: torch.Generator | None) -> Conditioning:
        gen = Context.empty(self.runtime.config.llm.num_hidden_layers)
        cond = Conditioning(gen=gen, cfg_text=gen.snapshot())
        self.phase("prefill_text")
        self.runtime.begin_request()
        if system_prompt is not None:
            self.add_text(gen, system_prompt)
            cond.texts.append(system_prompt)
        cond.image_free = gen.snapshot()
        for item in items:
            if isinstance(item, str):
                cond.cfg_text = gen.snapshot()
                self.phase("prefill_text")
                self.add_text(gen, item)
                cond.texts.append(item)
                if cond.image_size is None:
                    cond.image_free = gen.snapshot()
            else:
                self._add_image(cond, item, use_vae, generator)
        if cond.image_size is not None:
            cond.image_free = None
        return cond

    def _add_image(self, cond: Conditioning, image: Image.Image, use_vae: bool, generator) -> None:
        working = self.runtime.vae_rule(to_rgb(image))
        if use_vae:
            self.phase("prefill_vae")
            self.runtime.prefill_vae(cond.gen, working, generator)
        self.phase("prefill_vit")
        cond.vit_tokens += self.runtime.prefill_vit(cond.gen, working)
        cond.image_size = working.size
        cond.cfg_text = cond.gen.snapshot()

    def image_cfg_context(self, cond: Conditioning) -> Context:
        """The text-only context: a free prefix of ``gen`` when gen has no image, else prefilled anew."""
        if cond.image_free is not None:
            return cond.image_free
        ctx = Context.empty(self.runtime.config.llm.num_hidden_layers)
        self.phase("prefill_text")
        for text in cond.texts:
            self.add_text(ctx, text)
        return ctx
