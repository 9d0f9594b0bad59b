"""Core speed and memory on this machine: load time, s/denoise step (T2I 256², edit 512²), ms/token, peak RSS.

Usage: python bench/bench_core.py [--model DIR] [--compute-dtype auto|bf16|fp32] [--steps 10]
                                  [--device cpu|cuda] [--precision bf16|fp16|fp32|nf4|int8]
On CUDA it also prints the peak VRAM allocated by PyTorch (load, and whole run).
Without --model a `small` random checkpoint is made in a temporary folder. Prints one table; numbers are
measured, nothing is asserted.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bagel_model import BagelPipeline, make_test_checkpoint  # noqa: E402
from bagel_model.devices import cpu_has_native_bf16  # noqa: E402
from bagel_model.checkpoint.memory import process_peak_rss_bytes  # noqa: E402


class StepTimer:
    """Progress callback recording when each denoise step / token finishes (after the GPU has)."""

    def __init__(self, device: torch.device):
        self.marks: dict[str, list[float]] = {"denoise": [], "text": []}
        self.device = device

    def __call__(self, stage: str, step: int, total: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks[stage].append(time.perf_counter())

    def per_step(self, stage: str) -> float:
        marks = self.marks[stage]
        return (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else float("nan")


def peak_rss_mb() -> float:
    return process_peak_rss_bytes() / 2 ** 20


def vram_note(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    return f", peak VRAM allocated {torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--compute-dtype", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    folder = Path(args.model) if args.model else make_test_checkpoint(
        Path(tempfile.mkdtemp()) / "small", "small", seed=0)
    start = time.perf_counter()
    pipe = BagelPipeline.from_pretrained(folder, precision=args.precision, device=args.device,
                                         compute_dtype=args.compute_dtype)
    device = pipe.device
    load_s = time.perf_counter() - start
    rows = [("load", f"{load_s:.2f} s", f"peak RSS after load {peak_rss_mb():.0f} MB" + vram_note(device))]

    timer = StepTimer(device)
    pipe.generate_image("a red cube on a blue sphere", width=256, height=256, steps=args.steps, callback=timer)
    rows.append(("T2I 256² (cfg_text 4, 2 branches)", f"{timer.per_step('denoise'):.3f} s/step", ""))

    timer = StepTimer(device)
    image = Image.new("RGB", (512, 512), (120, 160, 200))
    pipe.edit_image([image], "make the sky purple", steps=args.steps, callback=timer)
    rows.append(("edit 512² (3 branches)", f"{timer.per_step('denoise'):.3f} s/step", ""))

    timer = StepTimer(device)
    pipe.understand([image], "Describe the image.", max_new_tokens=args.tokens, callback=timer)
    rows.append(("understand decode", f"{1000 * timer.per_step('text'):.1f} ms/token",
                 f"{len(timer.marks['text'])} tokens"))

    params = sum(p.numel() for p in pipe.model.parameters())
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"native bf16: {cpu_has_native_bf16()}, torch {torch.__version__}")
    print(f"model: {folder} ({params / 1e6:.1f} M parameters), {args.precision} weights on {device}, "
          f"compute dtype {pipe.compute_dtype}, {args.steps} steps")
    for name, value, note in rows:
        print(f"{name:36s} {value:>16s}  {note}")
    print(f"{'peak RSS (whole run)':36s} {peak_rss_mb():>13.0f} MB{vram_note(device)}")


if __name__ == "__main__":
    main()
