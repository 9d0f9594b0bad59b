"""Profile of one denoising step (text to image and edit): time per op kind, bytes copied, FLOPs, GEMM fraction.

For each compute dtype and mode, in one run:
* s/step: median wall and CPU time of ``--reps`` plain steps (``bench/step_time.py``: one Euler step with every
  CFG branch on, the pipeline's own contexts);
* time per op kind of one more step, every ATen kernel timed on its own (``bench/step_ops.py``): GEMM,
  attention, norms, RoPE, activations, gather/scatter/cat, dtype casts, rest; "Python & dispatch" is the plain
  step's CPU time minus all kernels' time;
* bytes written by copies (gather/scatter/cat) and by dtype casts per step;
* the FLOPs counted from the shapes of every matrix multiply and attention call of the step (2·M·K·N per GEMM,
  4·Nq·Nk·d per attention head);
* the machine's GEMM throughput at the step's own shapes, measured in the same run in bf16 and fp32 (best of
  ``--gemm-reps`` per shape), and the fraction of it the step reaches: the time the step's GEMMs would take at
  that throughput divided by the step's CPU time (1.0 = a step that is nothing but its GEMMs at full speed).

One thread by default (the CPU time of one thread is the least disturbed by other jobs on a shared machine).
``BAGEL_BENCH_ROOT=<checkout>`` profiles another commit's code with this script (the "before" table).

Usage: python bench/profile_step.py [--checkpoint DIR] [--modes t2i edit] [--dtypes fp32 bf16] [--size 256]
Without --checkpoint a ``linear`` preset checkpoint (hidden 1024, intermediate 2816, 6 layers) is written to a
temporary folder by this checkout's CLI.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from step_time import MODES, ROOT, StepSetup, time_steps
from step_ops import KINDS, record_step

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
REFERENCE_SHAPE = (512, 1024, 2816)  # M, K, N of the reference GEMM


def make_linear_checkpoint() -> Path:
    folder = Path(tempfile.mkdtemp()) / "BAGEL-linear"
    subprocess.run([sys.executable, "-m", "bagel_model", "make-test-checkpoint", str(folder), "--preset", "linear"],
                   check=True, cwd=Path(__file__).resolve().parents[1])
    return folder


def gemm_seconds(batch: int, m: int, k: int, n: int, dtype: torch.dtype, reps: int) -> float:
    """Best time of one (M, K) x (K, N) product (a Linear's ``addmm``; ``bmm`` when batched)."""
    gen = torch.Generator().manual_seed(0)
    if batch == 1:
        x, w, b = (torch.randn(m, k, generator=gen).to(dtype), torch.randn(n, k, generator=gen).to(dtype),
                   torch.randn(n, generator=gen).to(dtype))
        run = lambda: F.linear(x, w, b)  # noqa: E731
    else:
        x, w = torch.randn(batch, m, k, generator=gen).to(dtype), torch.randn(batch, k, n, generator=gen).to(dtype)
        run = lambda: torch.bmm(x, w)  # noqa: E731
    run()
    best = float("inf")
    for _ in range(reps):
        start = time.thread_time()  # one thread: its CPU time, least disturbed by other jobs
        run()
        best = min(best, time.thread_time() - start)
    return best


class GemmThroughput:
    """Measured seconds per GEMM shape and dtype (each shape measured once per run)."""

    def __init__(self, reps: int):
        self.reps, self.cache = reps, {}

    def seconds(self, shape: tuple, dtype: torch.dtype) -> float:
        key = (*shape, dtype)
        if key not in self.cache:
            self.cache[key] = gemm_seconds(*shape, dtype, self.reps)
        return self.cache[key]

    def ideal(self, gemm_calls: dict, dtype: torch.dtype) -> float:
        """Seconds the step's GEMMs take at the measured throughput in ``dtype``."""
        return sum(calls * self.seconds(shape[:4], dtype) for shape, calls in gemm_calls.items())


def profile_one(args, mode: str, dtype_name: str, gemms: GemmThroughput) -> dict:
    setup = StepSetup(args.checkpoint, mode, args.size, dtype_name, batch_cfg=args.batch_cfg)
    walls, cpus = time_steps(setup, args.reps)
    record = record_step(setup.step)
    cpu = statistics.median(cpus)
    gemm_flops = record.flops["GEMM"]
    row = {"mode": mode, "dtype": dtype_name, "describe": setup.describe(), "wall": statistics.median(walls),
           "cpu": cpu, "walls": walls, "cpus": cpus, "record": record, "gemm_flops": gemm_flops,
           "attention_flops": record.flops["attention"]}
    for name, dtype in DTYPES.items():
        row[f"ideal_{name}"] = gemms.ideal(record.gemm_calls, dtype)
    row["fraction"] = row[f"ideal_{dtype_name}"] / cpu
    return row


def print_row(row: dict, top_ops: int) -> None:
    record, cpu = row["record"], row["cpu"]
    print(f"\n== {row['describe']}")
    print(f"  plain step: median {row['wall']:.3f} s wall, {cpu:.3f} s CPU "
          f"(wall {', '.join(f'{x:.3f}' for x in row['walls'])}; CPU {', '.join(f'{x:.3f}' for x in row['cpus'])})")
    for kind in KINDS:
        print(f"  {kind:20s} {1000 * record.seconds[kind]:9.1f} ms  {100 * record.seconds[kind] / cpu:5.1f} %  "
              f"{record.calls[kind]:6d} kernels")
    python = cpu - record.kernel_seconds()
    print(f"  {'Python & dispatch':20s} {1000 * python:9.1f} ms  {100 * python / cpu:5.1f} %")
    print(f"  bytes written: copies {record.bytes_written['gather/scatter/cat'] / 2 ** 20:.1f} MiB, "
          f"casts {record.bytes_written['dtype casts'] / 2 ** 20:.1f} MiB")
    print(f"  FLOPs: GEMM {row['gemm_flops'] / 1e9:.2f} G, attention {row['attention_flops'] / 1e9:.2f} G; "
          f"achieved {row['gemm_flops'] / cpu / 1e9:.1f} GEMM-GFLOP/s")
    top = sorted(record.per_op.items(), key=lambda item: -item[1][0])[:top_ops]
    for (kind, op), (seconds, calls, written) in top:
        print(f"    {op:45s} {kind:20s} {1000 * seconds:9.1f} ms {calls:6d} calls {written / 2 ** 20:9.1f} MiB out")
    print(f"  its GEMMs at the measured throughput: {row['ideal_fp32']:.3f} s fp32, {row['ideal_bf16']:.3f} s bf16 "
          f"-> step reaches {100 * row['fraction']:.1f} % of the measured {row['dtype']} GEMM throughput")
    print_floor(row)


def print_floor(row: dict) -> None:
    """What is left to win besides the matrix arithmetic: the GEMM and attention kernels of the recorded step are
    the least a step can take without faster kernels, so removing every other kind of work makes this step at
    most step / floor faster. Attention counted as if it ran at the step's measured GEMM rate shows how much of
    the gap is the attention kernel's own speed (arithmetic, not overhead)."""
    record, cpu = row["record"], row["cpu"]
    floor = record.seconds["GEMM"] + record.seconds["attention"]
    ideal = row[f"ideal_{row['dtype']}"]
    attention_at_gemm_rate = row["attention_flops"] * ideal / row["gemm_flops"]
    print(f"  GEMM + attention kernels: {floor:.3f} s ({100 * floor / cpu:.1f} % of the step): without any other "
          f"work this step would be at most {cpu / floor:.3f}x faster")
    print(f"  GEMMs and attention FLOPs at the measured {row['dtype']} GEMM throughput: "
          f"{ideal + attention_at_gemm_rate:.3f} s -> {100 * (ideal + attention_at_gemm_rate) / cpu:.1f} % of the step")


def markdown(rows: list[dict]) -> str:
    """One row per (mode, dtype): ms per op kind of the recorded step and its share of all of them (kernels plus
    the Python & dispatch estimate, clipped at 0 when timing noise makes it negative)."""
    head = ["mode, compute", "s/step CPU"] + list(KINDS) + ["Python & dispatch", "kernels", "copies MiB",
                                                             "casts MiB", "GEMM GFLOP", "GEMM fraction"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        record, cpu = row["record"], row["cpu"]
        python = max(0.0, cpu - record.kernel_seconds())
        total = record.kernel_seconds() + python
        times = [record.seconds[k] for k in KINDS] + [python]
        shares = [f"{1000 * t:.0f} ms ({100 * t / total:.1f} %)" for t in times]
        cells = [f"{row['mode']}, {row['dtype']}", f"{cpu:.3f}", *shares, str(sum(record.calls.values())),
                 f"{record.bytes_written['gather/scatter/cat'] / 2 ** 20:.1f}",
                 f"{record.bytes_written['dtype casts'] / 2 ** 20:.1f}", f"{row['gemm_flops'] / 1e9:.2f}",
                 f"{100 * row['fraction']:.1f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gemm-reps", type=int, default=3)
    parser.add_argument("--batch-cfg", action="store_true")
    parser.add_argument("--top-ops", type=int, default=0, help="also list the N kernels that took longest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.checkpoint = args.checkpoint or make_linear_checkpoint()
    print(f"code: {ROOT}; machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    gemms = GemmThroughput(args.gemm_reps)
    for name, dtype in DTYPES.items():
        seconds = gemms.seconds((1, *REFERENCE_SHAPE), dtype)
        print(f"GEMM {REFERENCE_SHAPE[0]}x{REFERENCE_SHAPE[1]} @ {REFERENCE_SHAPE[1]}x{REFERENCE_SHAPE[2]} {name}: "
              f"{2 * REFERENCE_SHAPE[0] * REFERENCE_SHAPE[1] * REFERENCE_SHAPE[2] / seconds / 1e9:.1f} GFLOP/s")
    rows = [profile_one(args, mode, dtype, gemms) for dtype in args.dtypes for mode in args.modes]
    for row in rows:
        print_row(row, args.top_ops)
    print("\n" + markdown(rows))


if __name__ == "__main__":
    main()
