"""Device and compute-dtype selection from what the hardware can actually do."""
from __future__ import annotations

import logging
from functools import lru_cache

import torch

from .errors import BagelInputError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BagelInputError(
            f"device={device!r} was requested but this PyTorch build sees no CUDA GPU "
            f"(torch {torch.__version__}); use device='cpu' or install a CUDA build of PyTorch.")
    if not (device == "cpu" or device.startswith("cuda")):
        raise BagelInputError(f"Unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'.")
    return torch.device(device)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 matmuls are emulated
    and several times slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    cpu_ext = getattr(torch._C, "_cpu", None)
    for name in checks:
        fn = getattr(cpu_ext, name, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            continue
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA (fp16 on GPUs without bf16); on a CPU bf16 only with native bf16 matmuls."""
    if name != "auto":
        if name not in DTYPES:
            raise BagelInputError(f"compute_dtype {name!r} is not one of auto, bf16, fp16, fp32.")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    native = cpu_has_native_bf16()
    log.info("CPU native bf16: %s -> compute dtype %s", native, "bf16" if native else "fp32")
    return torch.bfloat16 if native else torch.float32


def resolve_batch_cfg(batch_cfg: bool | None, device: torch.device | str) -> bool:
    """``None`` (auto): batch the CFG branches on CUDA only. On the CPUs we measured, one stacked LM call was
    0.9-1.0x the speed of one call per branch (same FLOPs, compute-bound, larger working set; docs/speed.md),
    while on a GPU one larger call fills the device and halves the kernel launches."""
    if batch_cfg is None:
        return torch.device(device).type == "cuda"
    return bool(batch_cfg)


def resolve_batch_images(batch_images: bool | None, device: torch.device | str) -> bool:
    """``None`` (auto): denoise the images of a batch in one LM call per step on CUDA only. On the CPU we
    measured (bench/bench_batch.py, docs/speed.md; ``small`` preset, one thread) it was 0.92x the speed of one
    call per image at 512² (2 images) and 1.17x at 256² (4 images): slower at the sizes people generate
    (512²-1024²), so off there. On a GPU one larger call fills the device (not measured by us, no GPU)."""
    if batch_images is None:
        return torch.device(device).type == "cuda"
    return bool(batch_images)
