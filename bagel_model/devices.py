"""Device and compute-dtype selection from what the hardware can actually do."""
from __future__ import annotations

import logging
from functools import lru_cache

import torch

from .errors import BagelInputError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


ACCELERATORS = ("cuda", "xpu", "mps")  # tried in this order by device="auto"
_NAMES = {"cuda": "CUDA (or ROCm) GPU", "xpu": "Intel XPU", "mps": "Apple MPS device"}


def accelerator_available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "xpu":
        return hasattr(torch, "xpu") and torch.xpu.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return kind == "cpu"


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``: the first available of CUDA, XPU, MPS, else the CPU; or an explicit ``cpu``/``cuda[:N]``/
    ``xpu[:N]``/``mps``, refused with the reason when this PyTorch build cannot use it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device(next((kind for kind in ACCELERATORS if accelerator_available(kind)), "cpu"))
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", *ACCELERATORS):
        raise BagelInputError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda[:N]', 'xpu[:N]' or 'mps'.")
    if not accelerator_available(parsed.type):
        raise BagelInputError(
            f"device={device!r} was requested but this PyTorch build sees no {_NAMES[parsed.type]} "
            f"(torch {torch.__version__}); use device='cpu' or install a PyTorch build for that device.")
    return parsed


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
    """``auto``: bf16 where the device computes it natively (CUDA compute capability 8.0+ i.e. Ampere and newer,
    XPUs that report bf16, a CPU with AVX512-BF16/AMX), else fp16 on accelerators and fp32 on CPUs. Pre-Ampere
    GPUs only emulate bf16 (slowly), so they get fp16. (ComfyUI nodes pass ComfyUI's own choice instead.)"""
    if name != "auto":
        if name not in DTYPES:
            raise BagelInputError(f"compute_dtype {name!r} is not one of auto, bf16, fp16, fp32.")
        return DTYPES[name]
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "xpu":
        return torch.bfloat16 if torch.xpu.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16  # bf16 on MPS needs macOS 14+ and is not faster there
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
