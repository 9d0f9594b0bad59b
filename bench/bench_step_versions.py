"""s/step of two checkouts of the project, alternating, each step timed in its own process.

Every round runs ``bench/step_time.py`` once per checkout (the order alternates between rounds, so a load
change on a shared machine hits both), for each mode and compute dtype; each run loads the same checkpoint,
builds the contexts, warms up with one step and times ``--reps`` steps. Reported per (mode, dtype, checkout):
the median over all rounds of each round's median step, in CPU seconds (one thread: the least disturbed by
other jobs) and wall seconds, and the speed-up of the new checkout over the old one. The final latents of
both checkouts are printed too (sum and max), so a change of arithmetic shows.

Usage:
    git worktree add ../base-a7b92fe a7b92fe
    python bench/bench_step_versions.py --old ../base-a7b92fe [--new .] [--checkpoint DIR] [--rounds 3]
        [--modes t2i edit] [--dtypes fp32 bf16] [--reps 2] [--size 256]
Without --checkpoint a ``linear`` preset checkpoint is written to a temporary folder by the new checkout's CLI.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_once(root: Path, args, mode: str, dtype: str) -> dict:
    env = dict(os.environ, BAGEL_BENCH_ROOT=str(root))
    command = [sys.executable, str(HERE / "step_time.py"), "--checkpoint", str(args.checkpoint), "--mode", mode,
               "--compute-dtype", dtype, "--reps", str(args.reps), "--size", str(args.size),
               "--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"step_time.py failed for {root} ({mode}, {dtype}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_checkpoint(new_root: Path) -> Path:
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "bagel-bench-linear"
    if not (folder / "ema.safetensors").is_file():
        subprocess.run([sys.executable, "-m", "bagel_model", "make-test-checkpoint", str(folder), "--preset", "linear"],
                       check=True, cwd=new_root)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="checkout of the baseline commit (git worktree)")
    parser.add_argument("--new", default=str(HERE.parent))
    parser.add_argument("--checkpoint")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["t2i", "edit"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32"])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    roots = {"old": Path(args.old).resolve(), "new": Path(args.new).resolve()}
    args.checkpoint = args.checkpoint or make_checkpoint(roots["new"])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()}; {args.threads} thread(s) per run; old {roots['old']}, new {roots['new']}")
    results: dict = {}
    for round_index in range(args.rounds):
        order = ["old", "new"] if round_index % 2 == 0 else ["new", "old"]
        for mode in args.modes:
            for dtype in args.dtypes:
                for which in order:
                    out = run_once(roots[which], args, mode, dtype)
                    results.setdefault((mode, dtype, which), []).append(out)
                    print(f"  round {round_index + 1} {mode} {dtype} {which}: CPU s/step "
                          f"{', '.join(f'{x:.3f}' for x in out['cpu'])} (load {os.getloadavg()[0]:.1f})",
                          file=sys.stderr, flush=True)
    report(results, args)


def report(results: dict, args) -> None:
    print(f"\n{args.rounds} rounds, {args.reps} timed steps per run; median of the runs' medians")
    print("| mode | compute | old s/step CPU (wall) | new s/step CPU (wall) | speed-up (CPU) | per-round CPU old / new "
          "| latents old / new (sum, max) |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for dtype in args.dtypes:
            runs = {which: results[(mode, dtype, which)] for which in ("old", "new")}
            cpu = {w: [statistics.median(r["cpu"]) for r in runs[w]] for w in runs}
            wall = {w: [statistics.median(r["wall"]) for r in runs[w]] for w in runs}
            old, new = statistics.median(cpu["old"]), statistics.median(cpu["new"])
            rounds = " ; ".join(f"{a:.3f} / {b:.3f}" for a, b in zip(cpu["old"], cpu["new"]))
            latents = " / ".join(f"{runs[w][0]['latent_sum']:.4f}, {runs[w][0]['latent_absmax']:.4f}" for w in runs)
            print(f"| {mode} | {dtype} | {old:.3f} ({statistics.median(wall['old']):.3f}) | {new:.3f} "
                  f"({statistics.median(wall['new']):.3f}) | {old / new:.3f}x | {rounds} | {latents} |")
    print(f"\ncontexts: {results[(args.modes[0], args.dtypes[0], 'new')][0]['describe']}")


if __name__ == "__main__":
    main()
