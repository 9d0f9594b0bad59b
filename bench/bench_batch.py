"""Text-to-image batches: the images denoised one LM call each vs all in one LM call per step (batch_images).

Both variants build the prompt context once and denoise the B images in lockstep, so the only difference is
how many LM calls a step makes. Prints seconds per denoise step per image (wall clock, and on a CPU also the
process CPU time, which other processes sharing the machine disturb much less than the wall clock; use
--threads 1 there so no thread spins waiting), the speed-up of the batched call and the max abs latent
difference between the two (0 in bf16 on the CPUs we measured). Names the CPU / GPU.

Usage: python bench/bench_batch.py [--preset small] [--size 256] [--batch 4] [--steps 10] [--rounds 3]
                                   [--batch-cfg off|on] [--device cpu|cuda] [--model DIR]
On a GPU: python bench/bench_batch.py --device cuda --model /path/to/BAGEL-7B-MoT --size 1024 --batch 4
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bagel_model import BagelPipeline, make_test_checkpoint  # noqa: E402
from bagel_model.generation.denoise import denoise  # noqa: E402
from bagel_model.pipeline import GENERATE_DEFAULTS  # noqa: E402
from bagel_model.generation.sampler import SamplerSettings  # noqa: E402

PROMPT = "A lighthouse on a rocky coast at sunset, oil painting"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(pipe, settings, cond, query, noise, batch_images: bool, batch_cfg: bool):
    """(wall s, CPU s) per image-step, and the latents."""
    synchronize(pipe.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    latents = denoise(pipe.runtime, settings, query, noise, cond.gen, cond.cfg_text, None,
                      batch_cfg=batch_cfg, batch_images=batch_images)
    synchronize(pipe.device)
    per = (settings.steps - 1) * noise.shape[0]
    return ((time.perf_counter() - start) / per, (time.process_time() - cpu_start) / per), latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "linear"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (the fastest counts)")
    parser.add_argument("--batch-cfg", default="off", choices=["off", "on"])
    parser.add_argument("--compute-dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"])
    parser.add_argument("--checkpoint", "--model", help="reuse this checkpoint folder (a test one or real weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = Path(args.checkpoint) if args.checkpoint else \
        make_test_checkpoint(Path(tempfile.mkdtemp()) / f"BAGEL-{args.preset}", args.preset, seed=0)
    pipe = BagelPipeline.from_pretrained(folder, precision=args.precision, device=args.device,
                                         compute_dtype=args.compute_dtype)
    defaults = GENERATE_DEFAULTS
    settings = SamplerSettings(args.steps, defaults.cfg_text_scale, 1.0, (0.0, 1.0), defaults.timestep_shift)
    cond = pipe.builder.build([PROMPT], None, use_vae=True, generator=None)
    query = pipe.runtime.generation_query(args.size, args.size)
    noise = torch.randn((args.batch, query.num_tokens, pipe.config.patch_latent_dim),
                        generator=torch.Generator().manual_seed(0))
    batch_cfg = args.batch_cfg == "on"
    print(f"device: {device_name(pipe.device)} ({pipe.device}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.precision} weights, compute {pipe.compute_dtype}; "
          f"preset {args.preset if not args.checkpoint else folder} (LM hidden {pipe.config.llm.hidden_size}, "
          f"{pipe.config.llm.num_hidden_layers} layers)")
    print(f"T2I {args.size}x{args.size} ({query.num_tokens} latent tokens), batch {args.batch}, "
          f"{args.steps - 1} evaluations with text CFG (2 branches), batched CFG {args.batch_cfg}")
    run(pipe, SamplerSettings(2), cond, query, noise, True, batch_cfg)  # warm up kernels
    timings = {False: [], True: []}
    outputs = {}
    for _ in range(args.rounds):  # interleaved: other processes may share the machine; the fastest counts
        for batch_images in (False, True):
            (wall, cpu), latents = run(pipe, settings, cond, query, noise, batch_images, batch_cfg)
            timings[batch_images].append((wall, cpu))
            outputs[batch_images] = latents
            print(f"  batch_images={batch_images}: {wall:.4f} s wall, {cpu:.4f} s CPU per image-step",
                  file=sys.stderr, flush=True)
    diff = float((outputs[False] - outputs[True]).abs().max())
    for label, batched in (("one LM call per image", False), ("one LM call per step ", True)):
        rounds = timings[batched]
        print(f"{label}: {min(w for w, _ in rounds):.4f} s wall, {min(c for _, c in rounds):.4f} s CPU per "
              f"image-step (fastest of {len(rounds)}; wall rounds " + " ".join(f"{w:.4f}" for w, _ in rounds) + ")")
    speed = [min(x[i] for x in timings[False]) / min(x[i] for x in timings[True]) for i in (0, 1)]
    print(f"speed-up of batch_images: {speed[0]:.2f}x wall, {speed[1]:.2f}x CPU time; "
          f"max abs latent difference {diff:.2e}")


if __name__ == "__main__":
    main()
