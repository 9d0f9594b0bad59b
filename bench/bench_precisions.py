"""Per precision on this machine: load time, peak RSS while loading, resident weight bytes, s/step, ms/token,
output difference against bf16; then the memory estimate at real dimensions (1024² T2I and 1024² edit).

Usage: python bench/bench_precisions.py [--model DIR] [--steps 4] [--size 256] [--tokens 16] [--policies]
       [--precisions bf16,fp8_e4m3fn]
Without --model a `small` random checkpoint is made in a temporary folder. Each precision loads in its own
process so its peak RSS is its own. ``--policies`` also measures the "every Linear" policy (the official one)
for nf4/int8/fp8_e4m3fn; ``--precisions`` limits the run (bf16, the reference, always runs first). Numbers are measured (the real-dimension table is an estimate and says so); nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bagel_model import make_test_checkpoint  # noqa: E402
from bagel_model.config import BagelConfig  # noqa: E402
from bagel_model.checkpoint.memory import GiB, estimate_memory, official_weight_bytes, process_peak_rss_bytes  # noqa: E402

PRECISIONS = ("bf16", "fp16", "fp32", "nf4", "int8", "fp8_e4m3fn")


class StepTimer:
    def __init__(self):
        self.marks = {"denoise": [], "text": []}

    def __call__(self, stage: str, step: int, total: int) -> None:
        self.marks[stage].append(time.perf_counter())

    def per_step(self, stage: str) -> float:
        marks = self.marks[stage]
        return (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else float("nan")


def worker(args) -> None:
    """One precision in a fresh process; prints a JSON line and saves the latents for the comparison."""
    import psutil
    from PIL import Image

    if args.precision in ("nf4", "int8"):
        import bitsandbytes  # noqa: F401  (its import is not part of the load)
    from bagel_model import BagelPipeline
    from bagel_model.devices import resolve_compute_dtype
    from bagel_model.checkpoint.memory import measured_weight_bytes
    from bagel_model.checkpoint.precision_loading import load_with_precision
    from bagel_model.text.tokenizer import Qwen2Tokenizer

    device = torch.device("cpu")
    cdtype = resolve_compute_dtype(args.compute_dtype, device)
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    tokenizer = Qwen2Tokenizer.from_folder(args.model)
    _, model, vae = load_with_precision(args.model, args.precision, device, cdtype, policy=args.policy)
    pipe = BagelPipeline(model, vae, tokenizer, cdtype, Path(args.model))
    load_s = time.perf_counter() - start
    load_peak = process_peak_rss_bytes()
    result = {"precision": args.precision, "policy": args.policy, "compute_dtype": str(cdtype),
              "load_s": load_s, "baseline_rss": baseline, "load_peak_rss": load_peak,
              "weights": measured_weight_bytes(model), "ae_weights": measured_weight_bytes(vae)}
    image = Image.new("RGB", (args.size, args.size), (120, 160, 200))
    with torch.no_grad():
        # Warm-up at the same shapes: first calls pay one-off kernel selection / torch.compile costs.
        pipe.generate_image("warm up", width=args.size, height=args.size, steps=3, seed=0)
        pipe.edit_image([image], "warm up", steps=3, seed=0)
        pipe.understand([image], "warm up", max_new_tokens=3)
        timer = StepTimer()
        t2i = pipe.generate_image("a red cube on a blue sphere", width=args.size, height=args.size,
                                  steps=args.steps, seed=1, callback=timer)
        result["t2i_s_per_step"] = timer.per_step("denoise")
        timer = StepTimer()
        edit = pipe.edit_image([image], "make the sky purple", steps=args.steps, seed=1, callback=timer)
        result["edit_s_per_step"] = timer.per_step("denoise")
        timer = StepTimer()
        und = pipe.understand([image], "Describe the image.", max_new_tokens=args.tokens, callback=timer)
        result["ms_per_token"] = 1000 * timer.per_step("text")
    result["tokens"] = und.token_ids
    save_file({"t2i": t2i.latents[0].contiguous(), "edit": edit.latents[0].contiguous()}, args.latents)
    print(json.dumps(result))


def run_worker(model: Path, precision: str, policy: str, args, latents: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--model", str(model), "--precision", precision,
           "--policy", policy, "--steps", str(args.steps), "--size", str(args.size), "--tokens",
           str(args.tokens), "--compute-dtype", args.compute_dtype, "--latents", str(latents)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{precision}/{policy} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def print_measured(rows: list[dict], reference: dict, ref_latents: dict, folder: Path, args) -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; model {folder}; compute {rows[0]['compute_dtype']}; T2I/edit "
          f"{args.size}², {args.steps} steps (= {args.steps - 1} evaluations); {args.tokens} tokens")
    head = ("precision", "policy", "load s", "peak RSS load MB", "RSS over final", "weights MB", "T2I s/step",
            "edit s/step", "ms/token", "T2I rel.diff", "edit rel.diff", "tokens = bf16")
    print(" | ".join(head))
    for row in rows:
        lat = row["latents"]
        same = sum(a == b for a, b in zip(row["tokens"], reference["tokens"]))
        print(" | ".join([
            row["precision"], row["policy"], f"{row['load_s']:.2f}", f"{row['load_peak_rss'] / 1e6:.0f}",
            f"{(row['load_peak_rss'] - row['baseline_rss']) / 1e6 - (row['weights'] + row['ae_weights']) / 1e6:.0f}",
            f"{row['weights'] / 1e6:.1f}", f"{row['t2i_s_per_step']:.3f}", f"{row['edit_s_per_step']:.3f}",
            f"{row['ms_per_token']:.1f}", f"{relative_difference(lat['t2i'], ref_latents['t2i']):.4f}",
            f"{relative_difference(lat['edit'], ref_latents['edit']):.4f}",
            f"{same}/{len(reference['tokens'])}"]))


def print_real_dims_table() -> None:
    config = BagelConfig()
    print("\nESTIMATE (not measured) for the real BAGEL-7B-MoT, CUDA, bf16 compute, GiB "
          "(weights include the 0.31 GiB fp32 autoencoder):")
    print("precision | weights (ours) | weights (official mode) | T2I 1024² total | KV | activations | "
          "edit 1024² total | KV | activations")
    for precision in PRECISIONS:
        t2i = estimate_memory(config, precision, "t2i", 1024, 1024, device="cuda")
        edit = estimate_memory(config, precision, "edit", 1024, 1024, input_size=(1024, 1024), device="cuda")
        official = official_weight_bytes(config, precision) + t2i.autoencoder_bytes
        print(f"{precision} | {t2i.weights_bytes / GiB:.2f} | {official / GiB:.2f} | {t2i.total_bytes / GiB:.2f} | "
              f"{t2i.kv_cache_bytes / GiB:.2f} | {t2i.activation_bytes / GiB:.2f} | {edit.total_bytes / GiB:.2f} | "
              f"{edit.kv_cache_bytes / GiB:.2f} | {edit.activation_bytes / GiB:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--compute-dtype", default="auto")
    parser.add_argument("--policies", action="store_true", help="also measure the all-linear policy")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated subset")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--latents", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    scratch = Path(tempfile.mkdtemp())
    folder = Path(args.model) if args.model else make_test_checkpoint(scratch / "small", "small", seed=0)
    chosen = ["bf16"] + [p for p in args.precisions.split(",") if p in PRECISIONS and p != "bf16"]
    runs = [(p, "default") for p in chosen]
    if args.policies:
        runs += [(p, "all-linear") for p in chosen if p in ("nf4", "int8", "fp8_e4m3fn")]
    rows = []
    for precision, policy in runs:
        latents = scratch / f"{precision}-{policy}.safetensors"
        row = run_worker(folder, precision, policy, args, latents)
        row["latents"] = load_file(str(latents))
        rows.append(row)
    print_measured(rows, rows[0], rows[0]["latents"], folder, args)
    print_real_dims_table()


if __name__ == "__main__":
    main()
