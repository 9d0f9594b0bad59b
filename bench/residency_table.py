"""Estimated residency during denoising at real BAGEL dims: per precision x task x device budget, the working
memory, what of the gen / und experts stays resident and what is streamed per denoising step.

Usage: python bench/residency_table.py [--budgets 8 12 16 24] [--size 1024] [--no-batch-cfg]
Analytic (bagel_model.checkpoint.residency.denoise_residency, from the memory estimate): nothing is measured, every row
is labelled ESTIMATED. The budget is the device memory free when the call starts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bagel_model.config import BagelConfig  # noqa: E402
from bagel_model.checkpoint.quantization import PRECISIONS  # noqa: E402
from bagel_model.checkpoint.residency import residency_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[8, 12, 16, 24], help="GiB free")
    parser.add_argument("--size", type=int, default=1024, help="image side (t2i output, edit input)")
    parser.add_argument("--precisions", nargs="+", default=[p for p in PRECISIONS if p != "fp32"])
    parser.add_argument("--no-batch-cfg", action="store_true", help="one LM call per CFG branch")
    args = parser.parse_args()
    print("BAGEL-7B-MoT real dims, CUDA bf16 compute; denoise phase; gen expert resident first, und expert next")
    rows = residency_table(BagelConfig(), args.precisions, tuple(args.budgets), size=args.size,
                           batch_cfg=False if args.no_batch_cfg else None)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
