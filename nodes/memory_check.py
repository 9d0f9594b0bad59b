"""Memory estimate for a checkpoint + precision, logged at load and used to refuse early.

The numbers come from the core (`bagel_model.memory.estimate_memory`); if the installed core does
not provide it, loading goes ahead without a check and says so in the log.
"""
import logging

import comfy.model_management as mm

logger = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp16", "fp32", "nf4", "int8")
GIB = 1024 ** 3


def _estimate(config, precision: str):
    from bagel_model import memory as core_memory  # optional part of the core

    return core_memory.estimate_memory(config, precision)


def estimate_for_folder(folder_path: str, precision: str):
    """(weight_bytes, working_bytes) for loading `folder_path` in `precision`, or None if unknown."""
    try:
        from bagel_model.config import BagelConfig

        config = BagelConfig.from_folder(folder_path)
        estimate = _estimate(config, precision)
    except (ImportError, AttributeError) as error:
        logger.info("BAGEL memory estimate unavailable in this core version (%s); loading unchecked.", error)
        return None
    return int(estimate.weight_bytes), int(estimate.working_bytes)


def _device_capacity_bytes(device) -> int:
    return int(mm.get_total_memory(device))


def check_fits(folder_path: str, folder_name: str, precision: str):
    """Logs the estimate; raises ValueError with numbers when it cannot fit on ComfyUI's device.

    Returns (weight_bytes, working_bytes), or (0, 0) when no estimate is available.
    """
    estimate = estimate_for_folder(folder_path, precision)
    if estimate is None:
        return 0, 0
    weight_bytes, working_bytes = estimate
    device = mm.get_torch_device()
    capacity = _device_capacity_bytes(device)
    needed = weight_bytes + working_bytes
    logger.info(
        "BAGEL %s in %s: about %.1f GiB weights + %.1f GiB working memory; %s has %.1f GiB.",
        folder_name, precision, weight_bytes / GIB, working_bytes / GIB, device, capacity / GIB,
    )
    if needed > capacity:
        raise ValueError(
            f"BAGEL '{folder_name}' in {precision} needs about {needed / GIB:.1f} GiB "
            f"({weight_bytes / GIB:.1f} GiB weights + {working_bytes / GIB:.1f} GiB working memory), "
            f"but {device} has {capacity / GIB:.1f} GiB in total. "
            f"{_cheaper_choices(folder_path, precision, capacity)}"
        )
    return weight_bytes, working_bytes


def _cheaper_choices(folder_path: str, precision: str, capacity: int) -> str:
    fitting = []
    for other in PRECISIONS:
        if other == precision:
            continue
        estimate = estimate_for_folder(folder_path, other)
        if estimate and sum(estimate) <= capacity:
            fitting.append(f"{other} (~{sum(estimate) / GIB:.1f} GiB)")
    if not fitting:
        return "No precision fits this device; use a machine with more memory."
    return "Choose a precision that fits: " + ", ".join(fitting) + "."
