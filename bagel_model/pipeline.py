"""Public API: ``BagelPipeline`` with understand / generate_image / edit_image / think (spec §6)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .checkpoint.auto_precision import AUTO, resolve_auto
from .checkpoint.formats import describe_checkpoint
from .generation.conditioning import Conditioning, ConditioningBuilder
from .generation.denoise import denoise
from .devices import resolve_batch_cfg, resolve_batch_images, resolve_compute_dtype, resolve_device
from .errors import BagelInputError
from .text.framing import GEN_THINK_SYSTEM_PROMPT, VLM_THINK_SYSTEM_PROMPT, SpecialIds, extract_generated_text
from .generation.image_batch import image_seeds, job_progress, shares_context
from .generation.images import check_image_size, to_pil, to_unit_pixels, unpatchify_latent
from .generation.request_items import request_items
from .checkpoint.memory import batch_cfg_fits
from .oom import release_on_oom
from .checkpoint.folder_check import check_bagel_folder
from .checkpoint.precision_loading import load_with_precision
from .checkpoint.quantization import check_precision
from .checkpoint.prequantized import save_quantized
from .model import banded_autoencoder
from .model.autoencoder import AutoEncoder
from .model.bagel import Bagel
from .model.ops import TorchOps, set_compute_dtype
from .generation.runtime import BagelRuntime, PreviewFn, ProgressFn
from .generation.sampler import EDIT_DEFAULTS, GENERATE_DEFAULTS, SamplerSettings
from .generation.step_cache import StepCacheSettings, resolve_step_cache
from .text.tokenizer import Qwen2Tokenizer

log = logging.getLogger(__name__)
_T2I, _EDIT = GENERATE_DEFAULTS, EDIT_DEFAULTS


@dataclass
class BagelResult:
    text: str = ""  # the decoded text the official code returns for this mode (think runs: the plan)
    thinking: str = ""  # the reasoning part (think modes), "" otherwise
    answer: str = ""  # understanding: the text after the reasoning ("" for image modes)
    token_ids: list[int] = field(default_factory=list)  # generated ids without the start token / EOS
    images: list[Image.Image] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)  # float32 (1, 16, H/8, W/8), decoder input
    seconds: float = 0.0
    # The decoded images in float, before the 8-bit conversion of ``images``: float32 (H, W, 3) in 0..1, CPU.
    pixels: list[torch.Tensor] = field(default_factory=list)

    def extend(self, other: "BagelResult") -> None:
        """Appends another image result of the same request (one image of a batch)."""
        self.images += other.images
        self.latents += other.latents
        self.pixels += other.pixels
        self.token_ids += other.token_ids
        self.seconds += other.seconds


class BagelModule(torch.nn.Module):
    """Everything with weights in one module, so a memory manager can move it as a unit."""

    def __init__(self, bagel: Bagel, vae: AutoEncoder):
        super().__init__()
        self.bagel = bagel
        self.vae = vae


class BagelPipeline:
    def __init__(self, model: Bagel, vae: AutoEncoder, tokenizer: Qwen2Tokenizer,
                 compute_dtype: torch.dtype, source: Path | None = None, device: torch.device | None = None):
        self.model = BagelModule(model, vae)
        self.tokenizer = tokenizer
        self.config = model.config
        self.special = SpecialIds.from_tokenizer(tokenizer)
        self.compute_dtype = compute_dtype
        self.source = source
        set_compute_dtype(model, compute_dtype)
        self.runtime = BagelRuntime(model, vae, self.special, compute_dtype, device)
        self.builder = ConditioningBuilder(self.runtime, tokenizer)
        self.builder.phase = self._phase
        # Called with a residency.PHASE_GROUPS key before each phase of a call (each kind of prefill block, text
        # decoding, denoising, image decoding), so a memory manager can make that phase's weights resident (the
        # ComfyUI nodes ask ComfyUI to load them). A phase asks only for the groups it computes with.
        self.phase_hook: Callable[[str], None] | None = None

    @classmethod
    @release_on_oom
    def from_pretrained(cls, path: str | Path, precision: str = AUTO, device: str = "auto",
                        compute_dtype: str = "auto", *, available_memory: int | None = None,
                        check_memory: bool = True, operations=TorchOps,
                        storage_device: str | torch.device | None = None, vae_dirs=()) -> "BagelPipeline":
        """``path``: a BAGEL folder or checkpoint file in any format checkpoint/formats.py recognises
        (``vae_dirs``: where a single file's FLUX autoencoder may be). ``precision``: bf16, fp16, fp32, nf4,
        int8, fp8_e4m3fn (see checkpoint/quantization.py) or auto (the best that fits in ``available_memory`` /
        the free memory of the device, checkpoint/auto_precision.py); a checkpoint stored quantized loads in its
        own precision. ``available_memory`` (bytes, None = measured free memory) bounds the fit check.
        ``device`` is where the model computes; ``storage_device`` (default: ``device``) where its weights are
        kept, for a host application that moves or streams them itself; ``operations`` its layer classes. Every argument is checked before the first weight is read."""
        check_bagel_folder(path)  # a folder without llm_config.json is named as "not a BAGEL folder"
        if precision != AUTO:
            check_precision(precision)
        source = describe_checkpoint(path, vae_dirs)  # reads headers only; fails naming what is missing
        target = resolve_device(device)
        storage = target if storage_device is None else resolve_device(storage_device)
        cdtype = resolve_compute_dtype(compute_dtype, target)
        if precision == AUTO:
            precision = resolve_auto(path, target, cdtype, available_memory, vae_dirs).precision
        start = time.perf_counter()
        tokenizer = Qwen2Tokenizer.from_folder(source.tokenizer_dir)  # cheap: a missing file fails before the big read
        _, model, vae = load_with_precision(path, precision, storage, cdtype, available_bytes=available_memory,
                                            check_memory=check_memory, operations=operations,
                                            compute_device=target, vae_dirs=vae_dirs)
        log.info("Loaded %s: %s as %s (%s compute, %s) in %.1f s", path, source.describe(), precision, cdtype,
                 target, time.perf_counter() - start)
        pipe = cls(model, vae, tokenizer, cdtype, Path(path), device=target)
        pipe.precision = precision
        pipe.checkpoint_format = source.describe()
        return pipe

    def save_quantized(self, out_dir: str | Path) -> Path:
        """Writes a pre-quantized folder of this nf4/int8 pipeline that loads without re-quantizing."""
        return save_quantized(self.model.bagel, self.source, out_dir, getattr(self, "precision", "bf16"))

    def __repr__(self) -> str:
        return (f"BagelPipeline(source={str(self.source)!r}, format={getattr(self, 'checkpoint_format', '')!r}, "
                f"precision={getattr(self, 'precision', '')!r})")

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def to(self, device: str | torch.device) -> "BagelPipeline":
        self.model.to(device)
        self.runtime.device = torch.device(device)
        return self

    def compute_on(self, device: str | torch.device) -> "BagelPipeline":
        """Computes on ``device`` from now on without moving any weight (a memory manager owns them)."""
        self.runtime.device = torch.device(device)
        return self

    # ---- public flows -------------------------------------------------------------------------------

    @release_on_oom
    def understand(self, images, prompt: str, think: bool = False, max_new_tokens: int = 512,
                   do_sample: bool = False, temperature: float = 0.3, seed: int = 0,
                   callback: ProgressFn | None = None, inputs: list | None = None) -> BagelResult:
        """Answers ``prompt`` about ``images`` (ViT tokens only). ``inputs`` gives an interleaved list."""
        start = time.perf_counter()
        items = self._items(images, prompt, inputs)
        system = VLM_THINK_SYSTEM_PROMPT if think else None
        cond = self.builder.build(items, system, use_vae=False, generator=None)
        ids = self._decode(cond, max_new_tokens, do_sample, temperature, seed, callback)
        text = extract_generated_text(self.tokenizer, ids)
        thinking, answer = split_thinking(text) if think else ("", text)
        return BagelResult(text=text, thinking=thinking, answer=answer, token_ids=ids[1:],
                           seconds=time.perf_counter() - start)

    @release_on_oom
    def think(self, prompt: str, images=None, max_think_tokens: int = 1000, do_sample: bool = False,
              temperature: float = 0.3, seed: int = 0, callback: ProgressFn | None = None,
              inputs: list | None = None) -> BagelResult:
        """The plan the model writes before generating (no image) or editing (with images; the last one is
        the image to edit). ``inputs`` gives an interleaved list of images and texts instead."""
        start = time.perf_counter()
        items = self._items(images, prompt, inputs)
        cond = self.builder.build(items, GEN_THINK_SYSTEM_PROMPT, use_vae=True,
                                  generator=torch.Generator("cpu").manual_seed(seed))
        ids = self._decode(cond, max_think_tokens, do_sample, temperature, seed, callback)
        plan = extract_generated_text(self.tokenizer, ids)
        return BagelResult(text=plan, thinking=plan, token_ids=ids[1:], seconds=time.perf_counter() - start)

    @release_on_oom
    def generate_image(self, prompt: str, width: int = 1024, height: int = 1024, steps: int = _T2I.steps,
                       cfg_text_scale: float = _T2I.cfg_text_scale, cfg_img_scale: float = _T2I.cfg_img_scale,
                       cfg_interval=_T2I.cfg_interval, timestep_shift: float = _T2I.timestep_shift,
                       cfg_renorm_min: float = _T2I.cfg_renorm_min, cfg_renorm_type: str = _T2I.cfg_renorm_type,
                       think: bool = False, max_think_tokens: int = 1000,
                       thinking: str | None = None, seed: int = 0, callback: ProgressFn | None = None,
                       do_sample: bool = False, temperature: float = 0.3,
                       inputs: list | None = None, batch_cfg: bool | None = None,
                       step_cache: str | StepCacheSettings | None = None, num_images: int = 1,
                       batch_images: bool | None = None, preview: PreviewFn | None = None) -> BagelResult:
        """``batch_cfg``: run the CFG branches of a step as one LM call (same result up to float reordering);
        None = on for CUDA, off for CPU, where it measured no faster (docs/speed.md).
        ``step_cache``: None (off), ``"taylor"`` or ``StepCacheSettings(...)`` — see docs/speed.md.
        ``num_images``: image k uses seed + k and equals what ``seed=seed + k`` gives alone; the prompt context
        is built once when it does not depend on the seed. ``batch_images``: denoise those images in one LM
        call per step (None = the device default, ``resolve_batch_images``).
        ``preview(step, total, x0)``: called after each denoise step with the predicted clean latents
        (B, 16, H/8, W/8) float32 in ``latents``' space; nothing is computed for it when it is None."""
        settings = SamplerSettings(steps, cfg_text_scale, cfg_img_scale, tuple(cfg_interval), timestep_shift,
                                   cfg_renorm_min, cfg_renorm_type)
        items = self._items(None, prompt, inputs)
        if not isinstance(num_images, int) or num_images < 1:
            raise BagelInputError(f"num_images must be a whole number >= 1, got {num_images!r}.")
        speed = dict(batch_cfg=batch_cfg, step_cache=resolve_step_cache(step_cache), batch_images=batch_images,
                     preview=preview)
        flow = (items, settings, (width, height), think, max_think_tokens, thinking)
        sampling = (do_sample, temperature, speed)
        if num_images > 1 and not shares_context(items, think and thinking is None and do_sample):
            return self._each_image(flow, sampling, image_seeds(seed, num_images), callback)
        return self._image_flow(*flow, image_seeds(seed, num_images), callback, *sampling)

    @release_on_oom
    def edit_image(self, images, prompt: str, steps: int = _EDIT.steps, cfg_text_scale: float = _EDIT.cfg_text_scale,
                   cfg_img_scale: float = _EDIT.cfg_img_scale, cfg_interval=_EDIT.cfg_interval,
                   timestep_shift: float = _EDIT.timestep_shift, cfg_renorm_min: float = _EDIT.cfg_renorm_min,
                   cfg_renorm_type: str = _EDIT.cfg_renorm_type, think: bool = False,
                   max_think_tokens: int = 1000, thinking: str | None = None, output_size=None,
                   seed: int = 0, callback: ProgressFn | None = None, do_sample: bool = False,
                   temperature: float = 0.3, inputs: list | None = None, batch_cfg: bool | None = None,
                   step_cache: str | StepCacheSettings | None = None,
                   preview: PreviewFn | None = None) -> BagelResult:
        """Edits the last image of ``images`` following ``prompt``; output size = the VAE-resized input size
        unless ``output_size`` (width, height) is given. ``batch_cfg``/``step_cache``/``preview`` as in
        generate_image."""
        settings = SamplerSettings(steps, cfg_text_scale, cfg_img_scale, tuple(cfg_interval), timestep_shift,
                                   cfg_renorm_min, cfg_renorm_type)
        items = self._items(images, prompt, inputs)
        if not any(isinstance(item, Image.Image) for item in items):
            raise BagelInputError("edit_image needs at least one input image.")
        speed = dict(batch_cfg=batch_cfg, step_cache=resolve_step_cache(step_cache), batch_images=False,
                     preview=preview)
        return self._image_flow(items, settings, output_size, think, max_think_tokens, thinking, [seed],
                                callback, do_sample, temperature, speed)

    # ---- internals ----------------------------------------------------------------------------------

    def _items(self, images, prompt: str | None, inputs: list | None) -> list:
        return request_items(images, prompt, inputs)

    def _phase(self, name: str) -> None:
        if self.phase_hook is not None:
            self.phase_hook(name)

    def _decode(self, cond: Conditioning, max_new_tokens: int, do_sample: bool, temperature: float, seed: int,
                callback) -> list[int]:
        if max_new_tokens < 1:
            raise BagelInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        if do_sample and temperature <= 0:
            raise BagelInputError(f"temperature must be > 0 when sampling, got {temperature}.")
        self._phase("decode_text")
        generator = torch.Generator("cpu").manual_seed(seed) if do_sample else None
        return self.runtime.decode_text(cond.gen, max_new_tokens, do_sample, temperature, generator, callback)

    def _each_image(self, flow: tuple, sampling: tuple, seeds: list[int], callback) -> BagelResult:
        """A batch whose context depends on the seed (input images, sampled plans): one image at a time."""
        result = None
        for job, seed in enumerate(seeds):
            one = self._image_flow(*flow, [seed], job_progress(callback, job, len(seeds)), *sampling)
            if result is None:
                result = one
            else:
                result.extend(one)
        return result

    def _image_flow(self, items, settings: SamplerSettings, size, think: bool, max_think_tokens: int,
                    thinking: str | None, seeds: list[int], callback, do_sample: bool, temperature: float,
                    speed: dict):
        """One conditioning for all ``seeds`` (the caller checked it does not depend on them beyond seeds[0])."""
        start = time.perf_counter()
        settings.validate()
        if size is not None:
            self._check_size(*size)
        # A given plan is used as it is, even blank: the integrated think route uses whatever the model wrote, and
        # plugging that same text in must give the same image. Only None means "no plan".
        generator = torch.Generator("cpu").manual_seed(seeds[0])
        system = GEN_THINK_SYSTEM_PROMPT if (think or thinking is not None) else None
        cond = self.builder.build(items, system, use_vae=True, generator=generator)
        token_ids: list[int] = []
        if think and thinking is None:
            ids = self._decode(cond, max_think_tokens, do_sample, temperature, seeds[0], callback)
            token_ids = ids[1:]
            thinking = extract_generated_text(self.tokenizer, ids)
        cfg_img = None
        if settings.cfg_text_scale > 1.0 and settings.cfg_img_scale > 1.0:
            cfg_img = self.builder.image_cfg_context(cond)
        if thinking is not None:
            self._phase("prefill_text")
            self.builder.add_text(cond.gen, thinking)
        width, height = size if size is not None else cond.image_size
        generators = [generator] + [torch.Generator("cpu").manual_seed(seed) for seed in seeds[1:]]
        latents = self._sample(settings, width, height, generators, cond, cfg_img, callback, speed)
        decoded = [self._decode_tensor(latent) for latent in latents]
        return BagelResult(text=thinking or "", thinking=thinking or "", token_ids=token_ids,
                           images=[to_pil(d) for d in decoded], latents=[latent.cpu() for latent in latents],
                           pixels=[to_unit_pixels(d) for d in decoded], seconds=time.perf_counter() - start)

    def _sample(self, settings, width, height, generators, cond, cfg_img, callback,
                speed: dict) -> list[torch.Tensor]:
        query = self.runtime.generation_query(height, width)
        noises = [torch.randn((query.num_tokens, self.config.patch_latent_dim), generator=generator,
                              dtype=torch.float32) for generator in generators]
        noise = noises[0] if len(noises) == 1 else torch.stack(noises)
        contexts = [cond.gen, cond.cfg_text] + ([cfg_img] if cfg_img is not None else [])
        self._phase("denoise")
        batch_cfg = self._choose_batch_cfg(speed["batch_cfg"], query, contexts)
        batch_images = self._choose_batch_images(speed["batch_images"], query, contexts, len(generators),
                                                 batch_cfg)

        def unpatchify(packed: torch.Tensor) -> torch.Tensor:
            return torch.cat([unpatchify_latent(tokens, query.grid_h, query.grid_w, self.config.latent_channels,
                                                self.config.latent_patch_size) for tokens in packed])

        preview = speed["preview"]
        packed_preview = None if preview is None else (lambda step, total, x0: preview(step, total, unpatchify(x0)))
        packed = denoise(self.runtime, settings, query, noise, cond.gen, cond.cfg_text, cfg_img, callback,
                         batch_cfg=batch_cfg, step_cache=speed["step_cache"], batch_images=batch_images,
                         preview=packed_preview)
        return list(unpatchify(packed).split(1))

    def _choose_batch_cfg(self, requested: bool | None, query, contexts) -> bool:
        """The device default (``resolve_batch_cfg``), except that an automatic choice falls back to one
        branch at a time when the stacked call would not fit in the free memory (same result, less memory)."""
        batch = resolve_batch_cfg(requested, self.device)
        if requested is None and batch and not batch_cfg_fits(
                self.config, self.device, query.num_tokens + 2, max(ctx.length for ctx in contexts),
                len(contexts), self.compute_dtype):
            log.info("Not enough free memory on %s to run %d CFG branches in one call at %d latent tokens; "
                     "running them one at a time (same result).", self.device, len(contexts), query.num_tokens)
            return False
        return batch

    @release_on_oom
    def decode_latent(self, latent: torch.Tensor, banded: bool | None = None) -> Image.Image:
        """Autoencoder decode of a (1, 16, H/8, W/8) latent. ``banded`` (None: on CUDA, where memory is
        scarce) runs the full-resolution stages in bands of rows: same image up to float rounding, ~60 % less
        peak memory at 1024² (model/banded_autoencoder.py). Off, it is the official plain fp32 decode."""
        return to_pil(self._decode_tensor(latent, banded))

    def unscale_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """``latents`` (BAGEL's scaled space, what the model denoises) → the autoencoder's own latent space,
        i.e. what its decoder network takes (``z / scale_factor + shift_factor``; ComfyUI's LATENT convention)."""
        return self.model.vae.unscale(latent)

    @torch.no_grad()
    def _decode_tensor(self, latent: torch.Tensor, banded: bool | None = None) -> torch.Tensor:
        """Decoder output (1, 3, H, W) in [-1, 1]."""
        self._phase("decode_image")
        vae = self.model.vae
        z = latent.to(self.device, vae.decoder.conv_in.weight.dtype)
        if self.device.type == "cuda" if banded is None else banded:
            return banded_autoencoder.decode(vae, z)
        return vae.decode(z)

    def _choose_batch_images(self, requested: bool | None, query, contexts, num_images: int,
                             batch_cfg: bool) -> bool:
        """Like ``_choose_batch_cfg`` for the images of a batch (``resolve_batch_images`` per device)."""
        if num_images < 2:
            return False
        batch = resolve_batch_images(requested, self.device)
        branches = num_images * (len(contexts) if batch_cfg else 1)
        if requested is None and batch and not batch_cfg_fits(
                self.config, self.device, query.num_tokens + 2, max(ctx.length for ctx in contexts),
                branches, self.compute_dtype):
            log.info("Not enough free memory on %s to denoise %d images in one call at %d latent tokens; "
                     "running them one at a time (same result).", self.device, num_images, query.num_tokens)
            return False
        return batch

    def _check_size(self, width: int, height: int) -> None:
        config = self.config
        check_image_size(width, height, config.latent_downsample, config.max_image_side, config.max_latent_size)


def split_thinking(text: str) -> tuple[str, str]:
    """Splits ``<think> reasoning </think> answer`` into (reasoning, answer); no tags → ("", text)."""
    if "</think>" not in text:
        return "", text.strip()
    reasoning, answer = text.split("</think>", 1)
    return reasoning.replace("<think>", "", 1).strip(), answer.strip()
