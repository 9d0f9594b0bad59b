"""Denoise s/step with every weight resident vs every layer in ComfyUI's cast path (weights left on the offload
device and copied per forward), through the real ComfyUI patchers the nodes use. One run, one line per mode.

Usage: COMFYUI_PATH=/path/to/ComfyUI python bench/bench_cast_path.py [--preset small] [--size 256] [--steps 4]
                                                                   [--precision bf16] [--device cpu|cuda]
On a CPU the offload and compute devices are the same, so the cast path measures the per-call overhead of
ComfyUI's cast ops only; on a GPU it includes the host-to-device copies. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _import_comfy(device: str):
    comfy_path = os.environ.get("COMFYUI_PATH", "")
    if not (Path(comfy_path) / "comfy").is_dir():
        sys.exit("Set COMFYUI_PATH to a ComfyUI source folder (e.g. the vendored ComfyUI 0.3.64).")
    sys.path.insert(0, str(REPO))
    sys.path.append(comfy_path)  # after the repo: its `nodes/` package must win over ComfyUI's nodes.py
    from comfy.cli_args import args

    args.cpu = device == "cpu"  # as `main.py --cpu`, before comfy.model_management is imported
    import comfy.model_management as mm

    return mm


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class StepTimer:
    def __init__(self):
        self.marks = []

    def __call__(self, stage: str, step: int, total: int) -> None:
        if stage == "denoise":
            self.marks.append(time.perf_counter())

    def per_step(self) -> float:  # the first step includes one-off work (allocations, cast-op setup)
        gaps = [b - a for a, b in zip(self.marks, self.marks[1:])]
        return sum(gaps) / len(gaps)


def timed_run(pipe, size: int, steps: int, device) -> tuple[float, torch.Tensor]:
    timer = StepTimer()
    if device.type == "cuda":
        torch.cuda.synchronize()
    result = pipe.generate_image("a lighthouse at sunset", width=size, height=size, steps=steps, seed=0,
                                 callback=timer)
    return timer.per_step(), result.latents[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    mm = _import_comfy(args.device)
    from bagel_model import BagelPipeline, make_test_checkpoint
    from bagel_model.checkpoint.quantization import storage_dtype
    from nodes.comfy_ops import bagel_operations
    from nodes.model_handle import BagelMoTModel

    device, offload = mm.get_torch_device(), mm.unet_offload_device()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_test_checkpoint(Path(tmp) / "ckpt", args.preset, seed=0)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        pipe = BagelPipeline.from_pretrained(
            folder, args.precision, device=str(device), storage_device=str(offload), check_memory=False,
            compute_dtype={torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype],
            operations=bagel_operations(storage_dtype(args.precision), dtype))
        handle = BagelMoTModel(pipe, folder.name, args.precision)
        pipe.phase_hook = None  # residency is set by hand below, not by per-phase load requests
        patchers = list(handle.patchers.values())
        for patcher in patchers:
            patcher.load(device, full_load=True)
        resident, reference = timed_run(pipe, args.size, args.steps, device)
        for patcher in patchers:
            patcher.detach()
            patcher.load(device, lowvram_model_memory=1)  # every castable layer past the budget: cast path
        streamed_layers = sum(getattr(m, "comfy_cast_weights", False) for p in patchers for m in p.model.modules())
        streamed, latent = timed_run(pipe, args.size, args.steps, device)
    print(f"machine: {cpu_name()}, torch {torch.__version__}, device {device}, compute {dtype}")
    print(f"preset {args.preset}, {args.precision}, t2i {args.size}x{args.size}, {args.steps} steps "
          f"(s/step over steps 2..{args.steps})")
    print(f"  fully resident      : {resident:.3f} s/step")
    print(f"  every layer cast    : {streamed:.3f} s/step ({streamed / resident:.2f}x), {streamed_layers} layers "
          f"streamed, same latent: {torch.equal(latent, reference)}")


if __name__ == "__main__":
    main()
