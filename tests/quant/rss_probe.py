"""Run in a fresh process: load a folder in one precision on the CPU and print the host memory figures (JSON).

Peak RSS is the kernel's high-water mark of this process (VmHWM), so nothing between samples is missed.
"""
import json
import sys

import psutil
import torch

import bitsandbytes  # noqa: F401  imported before the baseline so its own footprint is not counted as loading

from bagel_model.devices import resolve_compute_dtype
from bagel_model.checkpoint.memory import measured_weight_bytes, process_peak_rss_bytes
from bagel_model.checkpoint.precision_loading import load_with_precision


def main(folder: str, precision: str) -> None:
    device = torch.device("cpu")
    baseline = psutil.Process().memory_info().rss
    _, model, vae = load_with_precision(folder, precision, device, resolve_compute_dtype("auto", device))
    peak = process_peak_rss_bytes()
    final = psutil.Process().memory_info().rss
    print(json.dumps({"baseline": baseline, "peak": peak, "final": final,
                      "weights": measured_weight_bytes(model) + measured_weight_bytes(vae)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
