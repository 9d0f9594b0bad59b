"""Weight bytes read through the cast path per denoising step, and s/step, with the und expert streamed (the
usual partial load: gen expert resident, und expert offloaded), for T2I and edit, batched CFG on and off.

    python bench/bench_streamed_bytes.py [--preset small] [--size 256] [--steps 4]

Every decoder-layer und-expert tensor is served through its layer's ``stored`` (the one place a layer reads a
tensor, model/ops.py) and counted; nothing is moved between devices on a CPU, so s/step shows the compute and
per-call casts only. Prints the residency estimate next to it (checkpoint/residency.py). Runs on any checkout
that has ``weight_groups`` (to compare with an older commit: ``PYTHONPATH=<its tree> python this_file``).
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

if not any(Path(p, "bagel_model").is_dir() for p in sys.path if p):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bagel_model import BagelPipeline, make_test_checkpoint  # noqa: E402
from bagel_model.checkpoint.residency import group_bytes, weight_groups  # noqa: E402


class Counter:
    def __init__(self):
        self.bytes, self.marks = 0, []

    def __call__(self, stage: str, step: int, total: int) -> None:
        if stage == "denoise":
            self.marks.append((time.perf_counter(), self.bytes))

    def per_step(self) -> tuple[float, float]:
        (t0, b0), (t1, b1) = self.marks[0], self.marks[-1]  # from the end of step 1: steady state
        steps = len(self.marks) - 1
        return (t1 - t0) / steps, (b1 - b0) / steps


def stream_und_expert(pipe, counter: Counter) -> int:
    """Counts every read of a decoder-layer und tensor; returns their bytes (one full pass)."""
    total = 0
    for name, module in weight_groups(pipe.model.bagel, pipe.model.vae)["und"]:
        if ".layers." not in name:
            continue
        plain = module.stored
        total += sum(t.numel() * t.element_size() for t in module.state_dict().values())

        def stored(tensor_name, plain=plain):
            tensor = plain(tensor_name)
            if tensor is not None:
                counter.bytes += tensor.numel() * tensor.element_size()
            return tensor
        module.stored = stored
    return total


def run(pipe, task: str, size: int, steps: int, batch_cfg: bool, counter: Counter) -> tuple[float, float]:
    counter.marks = []
    image = Image.new("RGB", (size, size), (200, 30, 30))
    if task == "t2i":
        pipe.generate_image("a red cube", width=size, height=size, steps=steps, seed=0, cfg_interval=(0.0, 1.0),
                            batch_cfg=batch_cfg, callback=counter)
    else:
        pipe.edit_image([image], "make it blue", steps=steps, seed=0, batch_cfg=batch_cfg, callback=counter)
    return counter.per_step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_test_checkpoint(Path(tmp) / "ckpt", args.preset, seed=0)
        pipe = BagelPipeline.from_pretrained(folder, "bf16", device="cpu", compute_dtype="fp32")
        counter = Counter()
        one_pass = stream_und_expert(pipe, counter)
        print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; preset {args.preset}, bf16 weights, fp32 compute, {args.size}², "
              f"{args.steps} steps")
        print(f"und expert (decoder layers) one pass: {one_pass / 1e6:.2f} MB; und group estimate "
              f"{group_bytes(pipe.config, 'bf16')['und'] / 1e6:.2f} MB")
        for task in ("t2i", "edit"):
            for batch_cfg in (True, False):
                seconds, streamed = run(pipe, task, args.size, args.steps, batch_cfg, counter)
                print(f"  {task:4} batch_cfg={batch_cfg!s:5}: {streamed / 1e6:8.2f} MB streamed/step "
                      f"({streamed / one_pass:.1f} passes), {seconds:.3f} s/step")


if __name__ == "__main__":
    main()
