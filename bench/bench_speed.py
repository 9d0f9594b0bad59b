"""Denoise speed side by side in one run: uncached (one LM call per CFG branch) vs batched CFG vs step cache.

For every variant: seconds per denoise step (the loop only; prefill and VAE decode excluded), speed-up over the
uncached path, and the quality cost of the final image against the uncached one (same seed, same noise):
PSNR (uint8 RGB), max abs pixel difference, max abs latent difference. Also prints the analytic FLOPs per
step at the real BAGEL-7B-MoT dims for 1024², so GPU timings can be set against the hardware limit.

Usage: python bench/bench_speed.py [--preset small] [--size 512] [--steps 50] [--mode t2i|edit]
                                   [--device cpu|cuda] [--model DIR (e.g. the real weights on a GPU)]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bagel_model import BagelPipeline, make_test_checkpoint  # noqa: E402
from bagel_model.generation.denoise import denoise  # noqa: E402
from bagel_model.generation.images import unpatchify_latent  # noqa: E402
from bagel_model.generation.sampler import EDIT_DEFAULTS, GENERATE_DEFAULTS, SamplerSettings  # noqa: E402
from bagel_model.generation.step_cache import StepCacheSettings  # noqa: E402

PROMPT = "A lighthouse on a rocky coast at sunset, oil painting"
EDIT_PROMPT = "Make the sky stormy and add a red boat"


def lm_pass_flops(hidden, layers, heads, kv_heads, head_dim, intermediate, query, context) -> float:
    """Multiply-adds ×2 of one LM pass over ``query`` tokens attending to ``context`` cached + query keys."""
    proj = 2 * query * hidden * (heads * head_dim + 2 * kv_heads * head_dim) + 2 * query * heads * head_dim * hidden
    mlp = 3 * 2 * query * hidden * intermediate
    attention = 2 * 2 * query * (context + query) * heads * head_dim
    return layers * (proj + mlp + attention)


def real_dims_report() -> None:
    real = dict(hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128, intermediate=18944)
    query = 64 * 64 + 2  # 1024² → 64×64 latent tokens + 2 markers
    print("\nAnalytic FLOPs per denoise step, real BAGEL-7B-MoT dims, 1024x1024 (4098 query tokens):")
    for label, contexts in (("T2I, no CFG (gen ctx ~40 tok)", [40]),
                            ("T2I, text CFG (gen ~40 + uncond 0)", [40, 0]),
                            ("edit 1024x768 input, 3 branches (6.7k, 6.7k, ~40)", [6700, 6700, 40])):
        flops = sum(lm_pass_flops(query=query, context=c, **real) for c in contexts)
        print(f"  {label:52s} {flops / 1e12:7.1f} TFLOP/step  "
              f"(at 50% of a 312 TFLOP/s bf16 A100: {flops / 156e12:.2f} s/step)")


def build(pipe: BagelPipeline, mode: str, size: int, seed: int):
    """The contexts, settings and noise the pipeline would use for this request."""
    from PIL import Image

    generator = torch.Generator("cpu").manual_seed(seed)
    if mode == "t2i":
        settings = GENERATE_DEFAULTS
        cond = pipe.builder.build([PROMPT], None, use_vae=True, generator=generator)
        width = height = size
    else:
        settings = EDIT_DEFAULTS
        gradient = np.linspace(0, 255, size * size * 3, dtype=np.float64).reshape(size, size, 3).astype(np.uint8)
        image = Image.fromarray(gradient)
        cond = pipe.builder.build([image, EDIT_PROMPT], None, use_vae=True, generator=generator)
        width, height = cond.image_size
    cfg_img = pipe.builder.image_cfg_context(cond) if settings.cfg_img_scale > 1 else None
    query = pipe.runtime.generation_query(height, width)
    noise = torch.randn((query.num_tokens, pipe.config.patch_latent_dim), generator=generator)
    return settings, cond, cfg_img, query, noise


def run_variant(pipe, settings: SamplerSettings, cond, cfg_img, query, noise, batch_cfg, step_cache):
    synchronize(pipe.device)
    start = time.perf_counter()
    packed = denoise(pipe.runtime, settings, query, noise, cond.gen, cond.cfg_text, cfg_img,
                     batch_cfg=batch_cfg, step_cache=step_cache)
    synchronize(pipe.device)
    seconds = time.perf_counter() - start
    latent = unpatchify_latent(packed, query.grid_h, query.grid_w, pipe.config.latent_channels,
                               pipe.config.latent_patch_size)
    return seconds / (settings.steps - 1), latent, np.asarray(pipe.decode_latent(latent), dtype=np.float64)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "linear"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--mode", default="t2i", choices=["t2i", "edit"])
    parser.add_argument("--compute-dtype", default="bf16", choices=["auto", "bf16", "fp32", "fp16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--interval", type=int, default=3)
    parser.add_argument("--order", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds (the fastest counts)")
    parser.add_argument("--checkpoint", "--model", help="reuse this checkpoint folder (a test one or real weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()

    folder = Path(args.checkpoint) if args.checkpoint else \
        make_test_checkpoint(Path(tempfile.mkdtemp()) / f"BAGEL-{args.preset}", args.preset, seed=0)
    pipe = BagelPipeline.from_pretrained(folder, precision=args.precision, device=args.device,
                                         compute_dtype=args.compute_dtype)
    settings, cond, cfg_img, query, noise = build(pipe, args.mode, args.size, args.seed)
    settings = SamplerSettings(args.steps, *[getattr(settings, f) for f in (
        "cfg_text_scale", "cfg_img_scale", "cfg_interval", "timestep_shift", "cfg_renorm_min", "cfg_renorm_type")])
    cache = StepCacheSettings("taylor", args.warmup, args.interval, args.order)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {pipe.device}, {args.precision} weights; "
          f"preset {args.preset if not args.checkpoint else folder} (LM hidden {pipe.config.llm.hidden_size}, "
          f"{pipe.config.llm.num_hidden_layers} layers); compute dtype {pipe.compute_dtype}")
    print(f"mode {args.mode}, {query.grid_w * 16}x{query.grid_h * 16} px ({query.num_tokens} latent tokens), "
          f"{args.steps} timesteps ({args.steps - 1} evaluations), contexts: gen {cond.gen.length} tok, "
          f"cfg_text {cond.cfg_text.length} tok, cfg_img {cfg_img.length if cfg_img else '-'} tok")
    variants = [("uncached (sequential)", False, None), ("batched CFG", True, None),
                (f"step cache {cache.warmup}/{cache.interval}/o{cache.order} + batched", True, cache),
                (f"step cache {cache.warmup}/{cache.interval}/o{cache.order} sequential", False, cache)]
    run_variant(pipe, SamplerSettings(3), cond, cfg_img, query, noise, True, None)  # warm up kernels
    # Other processes may share this CPU: rounds interleave the variants and the fastest round counts.
    timings: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    outputs = {}
    for _ in range(args.rounds):
        for label, batch_cfg, step_cache in variants:
            per_step, latent, image = run_variant(pipe, settings, cond, cfg_img, query, noise, batch_cfg, step_cache)
            timings[label].append(per_step)
            print(f"  round {len(timings[label])}: {label}: {per_step:.3f} s/step", file=sys.stderr, flush=True)
            outputs.setdefault(label, (latent, image))
    base_label = variants[0][0]
    base_time, (base_latent, base_image) = min(timings[base_label]), outputs[base_label]
    print(f"\n{'variant':40s} {'s/step':>8s} {'speed-up':>8s} {'PSNR dB':>8s} {'max|dpx|':>8s} {'max|dlat|':>9s}"
          f"  all rounds s/step")
    for label, _, _ in variants:
        latent, image = outputs[label]
        per_step = min(timings[label])
        print(f"{label:40s} {per_step:8.3f} {base_time / per_step:7.2f}x {psnr(image, base_image):8.1f} "
              f"{np.abs(image - base_image).max():8.0f} {float((latent - base_latent).abs().max()):9.2e}  "
              + " ".join(f"{x:.3f}" for x in timings[label]))
    real_dims_report()
    small = pipe.config.llm
    flops = lm_pass_flops(small.hidden_size, small.num_hidden_layers, small.num_attention_heads,
                          small.num_key_value_heads, small.head_dim, small.intermediate_size, query.num_tokens + 2,
                          cond.gen.length)
    print(f"\nthis preset: {flops / 1e9:.1f} GFLOP per LM pass at this size (compare with s/step × passes/step)")


if __name__ == "__main__":
    main()
