"""Loads a BAGEL folder in a given precision: checks first (bitsandbytes, memory), then streams the weights.

Order matters for "nothing half-loaded, no surprise": everything that can be refused from the configs and the
installed packages is refused before the first tensor is read. Then the weights are either streamed from
``ema.safetensors`` (quantizing the policy's Linears on the target device as they arrive) or, for a
pre-quantized folder, read as stored.
"""
from __future__ import annotations

import ctypes
import logging
import time
from pathlib import Path

import torch

from ..config import BagelConfig
from ..devices import resolve_device
from ..errors import BagelInputError
from ..model.ops import TorchOps
from .folder import read_marker
from .formats import describe_checkpoint
from .memory import GiB, MemoryEstimate, available_memory, check_fits, estimate_memory
from .quantization import (BITSANDBYTES_PRECISIONS, QUANTIZED_PRECISIONS, check_precision, import_bitsandbytes,
                           probe_device, storage_dtype)
from .prequantized import save_quantized
from .source_loading import check_source_precision, load_source

log = logging.getLogger(__name__)


def _log_plan(folder: Path, precision: str, device: torch.device, estimate: MemoryEstimate, source: str) -> None:
    weights = estimate.details["weights"]
    if precision in QUANTIZED_PRECISIONS:
        log.info("Loading %s to %s: %.2f GiB of Linears as %s (%s), %.2f GiB of other tensors as %s, "
                 "autoencoder %.2f GiB fp32", source, device, weights["quantized"] / GiB, precision,
                 "bitsandbytes" if precision in BITSANDBYTES_PRECISIONS else "per-tensor scale, cast at use",
                 weights["full_precision"] / GiB, storage_dtype(precision), estimate.autoencoder_bytes / GiB)
    else:
        log.info("Loading %s to %s: %.2f GiB of weights as %s, autoencoder %.2f GiB fp32", source, device,
                 weights["total"] / GiB, precision, estimate.autoencoder_bytes / GiB)
    log.info("Memory plan for a 1024x1024 text-to-image call: %s", estimate.summary())


def _check_memory(config: BagelConfig, precision: str, device: torch.device, compute_dtype: torch.dtype,
                  policy: str, estimate_1024: MemoryEstimate, available_bytes: int | None) -> None:
    """Refuses a load that cannot even run a 512x512 text-to-image call; warns when 1024x1024 will not fit.

    Image sizes are chosen per call, so the load is only refused for what no call could survive.
    """
    if available_bytes is None:
        available_bytes = available_memory(device)
    minimal = estimate_memory(config, precision, "t2i", 512, 512, device=str(device), compute_dtype=compute_dtype,
                              policy=policy)
    check_fits(minimal, available_bytes, device)
    if estimate_1024.total_bytes > available_bytes:
        log.warning("%.2f GiB free on %s is enough for the weights and small images, but a 1024x1024 "
                    "text-to-image call needs about %.2f GiB (%s); use smaller images or another precision.",
                    available_bytes / GiB, device, estimate_1024.total_bytes / GiB, estimate_1024.summary())


def load_with_precision(folder: str | Path, precision: str, device: torch.device, compute_dtype: torch.dtype,
                        *, policy: str = "default", available_bytes: int | None = None,
                        check_memory: bool = True, operations=TorchOps,
                        compute_device: torch.device | None = None, vae_dirs=()):
    """Returns ``(config, bagel, autoencoder)`` loaded on ``device`` in ``precision``.

    ``folder``: any checkpoint path formats.py recognises (folder or file; ``vae_dirs``: where a single
    file's autoencoder may be).

    ``operations``: the layer namespace the model is built with (see model/ops.py; fp8 Linears are
    ``operations.castable(Fp8Linear)``). ``compute_device``: the device the model will compute on when it
    differs from the one that stores it (``device``: e.g. the host, for a memory manager that streams or moves
    the weights itself). The bitsandbytes probe, the memory check and the bitsandbytes quantization itself (one
    Linear at a time) run there.

    ``available_bytes`` is the memory budget for the fit check (None: measured free memory of ``device``);
    the load is refused when even a 512x512 text-to-image call would not fit. ``check_memory=False`` skips
    the refusal (the plan is still logged).
    """
    folder = Path(folder)
    check_precision(precision)
    source = describe_checkpoint(folder, vae_dirs)
    check_source_precision(source, precision)
    compute_device = compute_device or device
    if precision in BITSANDBYTES_PRECISIONS:
        import_bitsandbytes(precision)
        probe_device(precision, compute_device, compute_dtype)
    config = source.read_config()
    policy = policy if source.marker is None else source.marker.get("policy", policy)
    estimate = estimate_memory(config, precision, device=str(compute_device), compute_dtype=compute_dtype,
                               policy=policy)
    _log_plan(folder, precision, device, estimate, source.describe())
    if check_memory:
        _check_memory(config, precision, compute_device, compute_dtype, policy, estimate, available_bytes)
    start = time.perf_counter()
    model, vae = load_source(source, config, precision, device, compute_dtype, policy=policy,
                             operations=operations, compute_device=compute_device)
    _return_freed_heap_to_os()
    log.info("Weights of %s resident on %s after %.1f s", folder, device, time.perf_counter() - start)
    return config, model, vae


def _return_freed_heap_to_os() -> None:
    """Hands the loader's freed temporaries back to the OS (glibc keeps them mapped otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        pass


def quantize_folder(model_dir: str | Path, out_dir: str | Path, precision: str, device: str = "auto",
                    policy: str = "default") -> Path:
    """Streams ``model_dir`` into ``precision`` on ``device`` and writes the pre-quantized folder ``out_dir``."""
    if precision not in QUANTIZED_PRECISIONS:
        raise BagelInputError(f"quantize needs --precision {' or '.join(QUANTIZED_PRECISIONS)}, not "
                              f"{precision!r}.")
    if read_marker(model_dir) is not None:
        raise BagelInputError(f"{model_dir} is already pre-quantized; quantize the original BAGEL folder.")
    target = resolve_device(device)
    _, model, _ = load_with_precision(model_dir, precision, target, torch.float32, policy=policy)
    return save_quantized(model, model_dir, out_dir, precision, policy=policy)
