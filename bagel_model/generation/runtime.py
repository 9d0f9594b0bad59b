"""Low-level BAGEL operations on contexts: prefill text / ViT image / VAE image, and
text decoding. Every call runs on ``BagelRuntime.device`` in the configured compute dtype."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from ..text.framing import SpecialIds
from .images import patchify_latent, patchify_pixels, resize_rules, to_tensor
from ..model.autoencoder import AutoEncoder
from ..model.bagel import Bagel
from ..model.embeddings import grid_position_ids, rope_cos_sin, rope_inv_freq
from ..model.kv_cache import Context
from ..model.qwen2_mot import GEN, UND, Block, Segment

ProgressFn = Callable[[str, int, int], None]
# preview(step, total, x0): the predicted clean latents after a denoise step (the pipeline's is unpatchified).
PreviewFn = Callable[[int, int, torch.Tensor], None]
PackedPreviewFn = PreviewFn  # the same call with packed (B, tokens, 64) latents, inside the denoise loop


@dataclass
class GenerationQuery:
    """The image block being denoised: size in latent tokens and its position ids in the latent table."""

    grid_h: int
    grid_w: int
    position_ids: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.grid_h * self.grid_w


class BagelRuntime:
    """``device`` is where activations live and every layer computes (default: where the weights are). The
    weights may live elsewhere: every layer reads them through ops.CastAtUse, on the activations' device."""

    def __init__(self, model: Bagel, vae: AutoEncoder, special: SpecialIds, compute_dtype: torch.dtype,
                 device: torch.device | None = None):
        self.model = model
        self.vae = vae
        self.special = special
        self.dtype = compute_dtype
        self.config = model.config
        self.device = torch.device(device) if device is not None else model.lm.embed_tokens.weight.device
        self.vae_rule, self.vit_rule = resize_rules(self.config.max_latent_size, self.config.vit_max_num_patch_per_side,
                                                    self.config.latent_downsample, self.config.vit.patch_size)
        self._marker_rows: tuple[torch.Tensor, torch.Tensor] | None = None

    def _inv_freq(self) -> torch.Tensor:
        llm = self.config.llm
        return rope_inv_freq(llm.head_dim, llm.rope_theta, self.device)

    def _rope(self, positions: torch.Tensor):
        return rope_cos_sin(positions, self._inv_freq(), self.dtype)

    def rope_at(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (1, head_dim) of one RoPE position in the compute dtype."""
        return self._rope(torch.tensor([position], device=self.device))

    def _same_position(self, position: int, count: int):
        cos, sin = self.rope_at(position)
        return cos.expand(count, -1), sin.expand(count, -1)

    def begin_request(self) -> None:
        """Looks up the two image-marker rows of this request once, while the token table is loaded for text
        (phase ``prefill_text``): image blocks and every denoising step reuse them, so those phases never need
        the token table (a memory manager would otherwise have to load or patch it for two rows)."""
        self._marker_rows = None
        self._marker_rows = self._markers()

    def marker_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``<|vision_start|>`` and ``<|vision_end|>`` embeddings, each (1, hidden)."""
        return self._markers()

    def _markers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._marker_rows is not None:
            return self._marker_rows
        ids = torch.tensor([self.special.vision_start, self.special.vision_end], device=self.device)
        emb = self.model.embed_tokens(ids, self.dtype)
        return emb[:1], emb[1:]

    def _image_block(self, tokens: torch.Tensor, position: int, expert: str) -> tuple[torch.Tensor, Block]:
        """Wraps image tokens in ``<|vision_start|>``/``<|vision_end|>``; every token sits at ``position``."""
        start, end = self._markers()
        x = torch.cat([start, tokens, end])
        n = x.shape[0]
        if expert == UND:
            segments = [Segment(0, n, UND)]
        else:  # the markers always use the und expert
            segments = [Segment(0, 1, UND), Segment(1, n - 1, GEN), Segment(n - 1, n, UND)]
        cos, sin = self._same_position(position, n)
        return x, Block(segments, cos, sin, causal=False, fp32_qk=expert == GEN)

    @torch.no_grad()
    def prefill_text(self, ctx: Context, ids: list[int]) -> None:
        tokens = torch.tensor(ids, device=self.device)
        x = self.model.embed_tokens(tokens, self.dtype)
        cos, sin = self._rope(torch.arange(ctx.rope, ctx.rope + len(ids), device=self.device))
        block = Block([Segment(0, len(ids), UND)], cos, sin, causal=True, fp32_qk=False)
        self.model.lm(x, block, ctx, update=True)
        ctx.rope += len(ids)

    @torch.no_grad()
    def prefill_vit(self, ctx: Context, image: Image.Image) -> int:
        """ViT block of one (already VAE-resized) image; returns its token count."""
        vit_image = self.vit_rule(image)
        patch = self.config.vit.patch_size
        pixels = to_tensor(vit_image).to(self.device)
        patches = patchify_pixels(pixels, patch)
        grid_h, grid_w = pixels.shape[1] // patch, pixels.shape[2] // patch
        ids = grid_position_ids(grid_h, grid_w, self.config.vit_max_num_patch_per_side, self.device)
        tokens = self.model.embed_vit(patches, ids, self.dtype)
        x, block = self._image_block(tokens, ctx.rope, UND)
        self.model.lm(x, block, ctx, update=True)
        ctx.rope += 1
        return tokens.shape[0]

    @torch.no_grad()
    def prefill_vae(self, ctx: Context, image: Image.Image, generator: torch.Generator) -> None:
        """Clean VAE block (gen expert, t = 0). Encoding samples the posterior from ``generator``."""
        pixels = to_tensor(image)[None].to(self.device, torch.float32)
        latent = self.vae.encode(pixels, generator)[0]
        grid_h, grid_w = pixels.shape[2] // self.config.latent_downsample, \
            pixels.shape[3] // self.config.latent_downsample
        packed = patchify_latent(latent, self.config.latent_patch_size)
        ids = grid_position_ids(grid_h, grid_w, self.config.max_latent_size, self.device)
        t0 = torch.zeros((), dtype=torch.float32, device=self.device)
        tokens = self.model.embed_latents(packed, t0, ids, self.dtype)
        x, block = self._image_block(tokens, ctx.rope, GEN)
        self.model.lm(x, block, ctx, update=True)
        ctx.rope += 1

    def generation_query(self, height: int, width: int) -> GenerationQuery:
        grid_h, grid_w = height // self.config.latent_downsample, width // self.config.latent_downsample
        ids = grid_position_ids(grid_h, grid_w, self.config.max_latent_size, self.device)
        return GenerationQuery(grid_h, grid_w, ids)

    @torch.no_grad()
    def decode_text(self, ctx: Context, max_new_tokens: int, do_sample: bool, temperature: float,
                    generator: torch.Generator | None, progress: ProgressFn | None = None) -> list[int]:
        """Greedy or temperature decoding from ``ctx``; returns the ids with the start token first.

        The context is restored afterwards (its cache tail is reused as scratch space instead of copied).
        """
        saved_length, saved_rope = ctx.length, ctx.rope
        ids = [self.special.im_start]
        try:
            # The official loop runs one more forward whose pick is always discarded; it is skipped here.
            for step in range(max_new_tokens):
                token = torch.tensor([ids[-1]], device=self.device)
                x = self.model.embed_tokens(token, self.dtype)
                cos, sin = self._rope(torch.tensor([ctx.rope], device=self.device))
                block = Block([Segment(0, 1, UND)], cos, sin, causal=True, fp32_qk=False)
                hidden = self.model.lm(x, block, ctx, update=True)
                ctx.rope += 1
                logits = self.model.language_model.lm_head(hidden)[0]
                next_id = self._pick(logits, do_sample, temperature, generator)
                if progress is not None:
                    progress("text", step + 1, max_new_tokens)
                if next_id == self.special.im_end:
                    break
                ids.append(next_id)
        finally:
            ctx.cache.truncate(saved_length)
            ctx.length, ctx.rope = saved_length, saved_rope
        return ids

    @staticmethod
    def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, generator) -> int:
        if not do_sample:
            return int(torch.argmax(logits))
        probs = torch.softmax((logits / temperature).float(), dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=generator))
