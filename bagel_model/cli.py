"""Command line: ``python -m bagel_model COMMAND ...``, one sub-command per task (build_parser lists them)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from safetensors.torch import save_file

from .checkpoint.auto_precision import AUTO
from .checkpoint.folder import read_json_config
from .checkpoint.folder_check import check_bagel_folder
from .checkpoint.memory import process_peak_rss_bytes
from .checkpoint.precision_loading import quantize_folder
from .checkpoint.quantization import check_precision
from .errors import BagelError, BagelInputError
from .generation.images import check_image_size
from .generation.sampler import EDIT_DEFAULTS, GENERATE_DEFAULTS, RENORM_TYPES, SamplerSettings
from .generation.step_cache import StepCacheSettings, resolve_step_cache
from .pipeline import BagelPipeline, BagelResult
from .remote import RemoteBagelClient
from .testing import is_random_checkpoint, make_test_checkpoint

log = logging.getLogger("bagel_model")


BATCH_CFG_CHOICES = {"auto": None, "on": True, "off": False}  # None: the pipeline decides per device
REMOTE_KEY_ENV = "BAGEL_MOT_API_KEY"  # never a command-line argument: those show up in process lists
SAMPLER_FIELDS = ("steps", "cfg_text_scale", "cfg_img_scale", "cfg_interval", "timestep_shift", "cfg_renorm_min",
                  "cfg_renorm_type")

def _common(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="BAGEL checkpoint folder")
    source.add_argument("--remote", metavar="URL",
                        help="run on a vLLM-Omni BAGEL server instead (e.g. http://gpu-box:8091); its API key, if "
                             "any, is read from the BAGEL_MOT_API_KEY environment variable")
    parser.add_argument("--remote-timeout", type=float, default=600.0,
                        help="seconds to wait for the server's answer (with --remote)")
    parser.add_argument("--precision", default=AUTO,
                        help="weight precision: auto (the default: the best that fits the device, a pre-quantized "
                             "folder in its own precision; docs/quantization.md), bf16, fp16, fp32, nf4, int8 or "
                             "fp8_e4m3fn")
    parser.add_argument("--compute-dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda[:N], xpu[:N] or mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write a JSON summary here")


def _sampler(parser: argparse.ArgumentParser, defaults) -> None:
    parser.add_argument("--steps", type=int, default=defaults.steps, help="official num_timesteps")
    parser.add_argument("--cfg-text-scale", type=float, default=defaults.cfg_text_scale)
    parser.add_argument("--cfg-img-scale", type=float, default=defaults.cfg_img_scale)
    parser.add_argument("--cfg-interval", type=float, nargs=2, default=list(defaults.cfg_interval))
    parser.add_argument("--timestep-shift", type=float, default=defaults.timestep_shift)
    parser.add_argument("--cfg-renorm-min", type=float, default=defaults.cfg_renorm_min)
    parser.add_argument("--cfg-renorm-type", default=defaults.cfg_renorm_type,
                        choices=list(RENORM_TYPES))
    parser.add_argument("--think", action="store_true", help="write a plan before the image")
    parser.add_argument("--max-think-tokens", type=int, default=1000, help="new tokens of the plan")
    parser.add_argument("--batch-cfg", default="auto", choices=list(BATCH_CFG_CHOICES),
                        help="run the CFG branches of a step as one LM call (same result); auto = on for CUDA, "
                             "off for CPU, where it measured no faster")
    parser.add_argument("--step-cache", default="off", choices=["off", "taylor"],
                        help="skip the decoder layers on some steps and extrapolate them (docs/speed.md)")
    parser.add_argument("--step-cache-warmup", type=int, default=StepCacheSettings.warmup,
                        help="first steps of each CFG branch that always run every layer")
    parser.add_argument("--step-cache-interval", type=int, default=StepCacheSettings.interval,
                        help="after the warm-up, one step in this many runs every layer")
    parser.add_argument("--step-cache-order", type=int, default=StepCacheSettings.order,
                        help="degree of the extrapolating polynomial (0-6)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--save-latent", help="safetensors file for the final latent (decoder input)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bagel_model")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    und = sub.add_parser("understand", help="image(s) + question -> text")
    _common(und)
    und.add_argument("--image", action="append", required=True)
    und.add_argument("--prompt", required=True)
    und.add_argument("--think", action="store_true")
    und.add_argument("--max-new-tokens", type=int, default=512)
    und.add_argument("--do-sample", action="store_true")
    und.add_argument("--temperature", type=float, default=0.3)
    gen = sub.add_parser("generate", help="text -> image")
    _common(gen)
    _sampler(gen, GENERATE_DEFAULTS)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--width", type=int, default=1024)
    gen.add_argument("--height", type=int, default=1024)
    edit = sub.add_parser("edit", help="image + instruction -> image")
    _common(edit)
    _sampler(edit, EDIT_DEFAULTS)
    edit.add_argument("--image", action="append", required=True)
    edit.add_argument("--prompt", required=True)
    think = sub.add_parser("think", help="prompt (+ image) -> the plan written before generating/editing")
    _common(think)
    think.add_argument("--prompt", required=True)
    think.add_argument("--image", action="append")
    think.add_argument("--max-think-tokens", type=int, default=1000)
    quant = sub.add_parser("quantize", help="write a pre-quantized nf4/int8 folder that loads directly")
    quant.add_argument("--model", required=True, help="original BAGEL checkpoint folder")
    quant.add_argument("--precision", required=True, choices=["nf4", "int8", "fp8_e4m3fn"])
    quant.add_argument("--out", required=True, help="new folder for the pre-quantized checkpoint")
    quant.add_argument("--device", default="auto", help="where to quantize: auto, cpu, cuda[:N], xpu[:N] or mps")
    make = sub.add_parser("make-test-checkpoint", help="write a random checkpoint in the real layout")
    make.add_argument("out_dir")
    make.add_argument("--preset", default="tiny", choices=["tiny", "small", "linear"])
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--tokenizer", help="folder with the Qwen2.5 vocab.json/merges.txt to copy")
    # Written from the sub-commands themselves, so --help can never leave one out.
    parser.description = (f"BAGEL-7B-MoT from the command line. Commands: {', '.join(sub.choices)}. "
                          "'python -m bagel_model COMMAND --help' shows a command's options.")
    return parser


def _open_images(paths: list[str] | None):
    images = []
    for path in paths or []:
        try:
            with Image.open(path) as img:
                img.load()
                images.append(img.copy())
        except (OSError, UnidentifiedImageError) as exc:
            raise BagelInputError(f"Cannot read image {path}: {exc}. Give a PNG/JPEG/WebP file.") from exc
    return images


def _sampler_kwargs(args) -> dict:
    return dict(steps=args.steps, cfg_text_scale=args.cfg_text_scale, cfg_img_scale=args.cfg_img_scale,
                cfg_interval=tuple(args.cfg_interval), timestep_shift=args.timestep_shift,
                cfg_renorm_min=args.cfg_renorm_min, cfg_renorm_type=args.cfg_renorm_type, think=args.think,
                max_think_tokens=args.max_think_tokens, seed=args.seed, batch_cfg=BATCH_CFG_CHOICES[args.batch_cfg],
                step_cache=_step_cache(args))


def _step_cache(args) -> StepCacheSettings | None:
    if args.step_cache == "off":
        return None
    return StepCacheSettings(args.step_cache, args.step_cache_warmup, args.step_cache_interval,
                             args.step_cache_order)


def _check_arguments(args) -> list[Image.Image]:
    """Everything that can be refused from the command line, before a weight is read; returns the images."""
    if args.model:
        check_bagel_folder(args.model)
        if args.precision != AUTO:
            check_precision(args.precision)
    images = _open_images(getattr(args, "image", None))
    if args.command in ("generate", "edit"):
        SamplerSettings(**{k: v for k, v in _sampler_kwargs(args).items() if k in SAMPLER_FIELDS}).validate()
        resolve_step_cache(_step_cache(args))
        if args.think:
            _check_token_count("--max-think-tokens", args.max_think_tokens)
    if args.command == "generate" and args.model:
        config = read_json_config(args.model)  # the JSON files only: no weight file is opened
        check_image_size(args.width, args.height, config.latent_downsample, config.max_image_side,
                         config.max_latent_size)
    if args.command == "understand":
        _check_token_count("--max-new-tokens", args.max_new_tokens)
        if args.do_sample and args.temperature <= 0:
            raise BagelInputError(f"--temperature must be > 0 with --do-sample, got {args.temperature}.")
    if args.command == "think":
        _check_token_count("--max-think-tokens", args.max_think_tokens)
    return images


def _check_token_count(option: str, value: int) -> None:
    if value < 1:
        raise BagelInputError(f"{option} must be at least 1, got {value}.")


def _backend(args):
    if args.remote:
        if getattr(args, "save_latent", None):
            raise BagelInputError("--save-latent needs a local --model: the server returns pixels only.")
        return RemoteBagelClient(args.remote, api_key=os.environ.get(REMOTE_KEY_ENV) or None,
                                 timeout=args.remote_timeout, max_concurrent_requests=1)
    return BagelPipeline.from_pretrained(args.model, precision=args.precision, device=args.device,
                                         compute_dtype=args.compute_dtype)


def _run(args) -> BagelResult:
    images = _check_arguments(args)
    pipe = _backend(args)
    if args.command == "understand":
        return pipe.understand(images, args.prompt, think=args.think, max_new_tokens=args.max_new_tokens,
                               do_sample=args.do_sample, temperature=args.temperature, seed=args.seed)
    if args.command == "generate":
        return pipe.generate_image(args.prompt, width=args.width, height=args.height, **_sampler_kwargs(args))
    if args.command == "edit":
        return pipe.edit_image(images, args.prompt, **_sampler_kwargs(args))
    return pipe.think(args.prompt, images=images, max_think_tokens=args.max_think_tokens, seed=args.seed)


def _write_outputs(args, result: BagelResult, seconds: float) -> list[str]:
    """Writes the image, latent and JSON summary asked for; returns one "what: where" line per file written."""
    written = []
    out = getattr(args, "out", None)
    if out and result.images:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        result.images[0].save(out)
        written.append(f"image: {Path(out).resolve()} ({result.images[0].width}x{result.images[0].height})")
    if getattr(args, "save_latent", None) and result.latents:
        save_file({"latent": result.latents[0].float().contiguous()}, args.save_latent)
        written.append(f"latent: {Path(args.save_latent).resolve()}")
    if args.json:
        image = result.images[0] if result.images else None
        summary = {"text": result.text, "thinking": result.thinking, "token_ids": result.token_ids,
                   "image": str(out) if image is not None else None,
                   "width": image.width if image else None, "height": image.height if image else None,
                   "seconds": round(seconds, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
        Path(args.json).write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
        written.append(f"summary: {Path(args.json).resolve()}")
    return written


def escape_control_characters(text: str) -> str:
    """``text`` with every unprintable character but newlines and tabs written as its Python escape (``\\x07``),
    so a random model's output cannot move the cursor or ring the terminal."""
    return "".join(ch if ch in "\n\t" or ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _report(args, result: BagelResult, written: list[str]) -> None:
    """The text answer on stdout (escaped), then where each output went; a word about random weights."""
    if result.text:
        sys.stdout.write(escape_control_characters(result.text) + "\n")
    for line in written:
        sys.stdout.write(f"wrote {line}\n")
    if args.model and is_random_checkpoint(args.model):
        what = "the image is noise" if result.images else "the text is gibberish (control characters escaped)"
        sys.stderr.write(f"note: {args.model} is a random test checkpoint (make-test-checkpoint): {what}. "
                         f"Real weights: hf download ByteDance-Seed/BAGEL-7B-MoT --local-dir <folder>\n")


def peak_rss_mb() -> float:
    return process_peak_rss_bytes() / 2 ** 20


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "make-test-checkpoint":
            path = make_test_checkpoint(args.out_dir, args.preset, args.seed, args.tokenizer)
            sys.stdout.write(f"{path}\n")
            return 0
        if args.command == "quantize":
            check_bagel_folder(args.model)
            sys.stdout.write(f"{quantize_folder(args.model, args.out, args.precision, args.device)}\n")
            return 0
        start = time.perf_counter()
        result = _run(args)
        written = _write_outputs(args, result, time.perf_counter() - start)
    except BagelError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    _report(args, result, written)
    return 0
