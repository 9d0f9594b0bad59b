"""Memory estimate for a checkpoint + precision, logged at load and used to refuse early.

The reference load is a 1024x1024 text-to-image run on ComfyUI's device. ComfyUI can unload other
models, so the bound is the device's total memory, not what happens to be free right now.
"""
import logging

import comfy.model_management as mm

logger = logging.getLogger(__name__)

GIB = 1024 ** 3


def _estimate(folder_path: str, precision: str, device):
    from bagel_model.config import BagelConfig
    from bagel_model.memory import estimate_memory

    return estimate_memory(BagelConfig.from_folder(folder_path), precision, device=str(device))


def check_fits(folder_path: str, folder_name: str, precision: str) -> tuple[int, int]:
    """Logs the estimate; raises ValueError with numbers when it cannot fit on ComfyUI's device.

    Returns (weight_bytes, working_bytes) for the ModelPatcher and load_models_gpu.
    """
    device = mm.get_torch_device()
    estimate = _estimate(folder_path, precision, device)
    capacity = int(mm.get_total_memory(device))
    logger.info("BAGEL '%s': %s; %s has %.1f GiB in total.", folder_name, estimate.summary(), device,
                capacity / GIB)
    if estimate.total_bytes > capacity:
        fitting = [f"{other} (~{total / GIB:.1f} GiB)" for other, total in estimate.total_by_precision.items()
                   if other != precision and total <= capacity]
        advice = ("Choose a precision that fits: " + ", ".join(fitting) + ".") if fitting else (
            "No precision fits this device; use a machine with more memory.")
        raise ValueError(
            f"BAGEL '{folder_name}' in {precision} needs about {estimate.total_bytes / GIB:.1f} GiB for a "
            f"1024x1024 image ({estimate.weights_bytes / GIB:.1f} GiB weights), but {device} has "
            f"{capacity / GIB:.1f} GiB in total. {advice}"
        )
    return estimate.weights_bytes, estimate.total_bytes - estimate.weights_bytes
