"""Autoencoder decode: plain vs banded (low-memory) pass, each in a fresh process.

Prints seconds, the peak resident-memory increase over the process before the pass (CPU: VmHWM; CUDA:
torch.cuda.max_memory_allocated) and the max abs difference of the banded output against the plain one.

Usage: python bench/bench_autoencoder.py [--model DIR] [--sizes 512 1024] [--device cpu]
(without --model a small test checkpoint with the full-size FLUX autoencoder is written to a temp folder)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bagel_model import make_test_checkpoint  # noqa: E402
from bagel_model.checkpoint.folder import read_config  # noqa: E402
from bagel_model.checkpoint.loading import build_skeleton, load_module_weights  # noqa: E402
from bagel_model.checkpoint.memory import process_peak_rss_bytes  # noqa: E402
from bagel_model.model import banded_autoencoder  # noqa: E402


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return process_peak_rss_bytes()


def worker(folder: str, size: int, device_name: str, banded: bool) -> dict:
    device = torch.device(device_name)
    config = read_config(folder)
    _, vae = build_skeleton(config)
    load_module_weights(vae, Path(folder) / "ae.safetensors", device, torch.float32)
    vae.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, config.ae.z_channels, size // 8, size // 8, generator=generator).to(device)
    run = (lambda: banded_autoencoder.decode(vae, x)) if banded else (lambda: vae.decode(x))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else peak_bytes(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    torch.save(out.cpu(), Path(folder).parent / f"ae_decode_{size}_{int(banded)}.pt")
    return {"seconds": seconds, "peak_increase": peak_bytes(device) - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        size, banded = int(args.worker[1]), args.worker[2] == "1"
        print(json.dumps(worker(args.worker[0], size, args.device, banded)))
        return
    folder = Path(args.model) if args.model else make_test_checkpoint(
        Path(tempfile.mkdtemp()) / "BAGEL-small", "small", seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, fp32 autoencoder")
    print(f"{'size':>5s} {'decode':7s} {'seconds':>8s} {'peak +MiB':>10s} {'max|diff|':>10s}")
    for size in args.sizes:
        outputs = {}
        for banded in (False, True):
            cmd = [sys.executable, __file__, "--device", args.device, "--worker", str(folder), str(size),
                   str(int(banded))]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            outputs[banded] = torch.load(folder.parent / f"ae_decode_{size}_{int(banded)}.pt")
            diff = (outputs[banded] - outputs[False]).abs().max().item()
            print(f"{size:5d} {'banded' if banded else 'plain':7s} {result['seconds']:8.2f} "
                  f"{result['peak_increase'] / 2 ** 20:10.0f} {diff:10.2e}", flush=True)

if __name__ == "__main__":
    main()
