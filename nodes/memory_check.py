"""Memory estimate for a checkpoint + precision, logged at load and used to refuse early.

The load is refused only when even a 512x512 text-to-image run cannot fit on ComfyUI's device (the core
loader's rule); when 1024x1024 will not fit, a warning says so. ComfyUI can unload other models, so the bound
is the device's total memory, not what happens to be free right now.
"""
import logging

import comfy.model_management as mm

logger = logging.getLogger(__name__)

GIB = 1024 ** 3


def _estimate(folder_path: str, precision: str, device, side: int):
    from bagel_model.config import BagelConfig
    from bagel_model.checkpoint.memory import estimate_memory

    return estimate_memory(BagelConfig.from_folder(folder_path), precision, width=side, height=side,
                           device=str(device))


def check_fits(folder_path: str, folder_name: str, precision: str,
               allow_streaming: bool = False) -> tuple[int, int]:
    """Logs the estimate; raises ValueError with numbers when it cannot fit on ComfyUI's device.

    ``allow_streaming``: the weights that do not fit are streamed by ComfyUI (the ``auto`` precision chose it
    so), so only the log is written. Returns (weight_bytes, working_bytes) for the ModelPatcher and
    load_models_gpu.
    """
    device = mm.get_torch_device()
    large = _estimate(folder_path, precision, device, 1024)
    estimate = _estimate(folder_path, precision, device, 512)
    capacity = int(mm.get_total_memory(device))
    logger.info("BAGEL '%s': %s; %s has %.1f GiB in total.", folder_name, large.summary(), device,
                capacity / GIB)
    if allow_streaming:
        return large.weights_bytes, large.total_bytes - large.weights_bytes
    if large.total_bytes > capacity >= estimate.total_bytes:
        logger.warning("BAGEL '%s' in %s needs about %.1f GiB for 1024x1024 but %s has %.1f GiB: use "
                       "smaller images or another precision.", folder_name, precision,
                       large.total_bytes / GIB, device, capacity / GIB)
    if estimate.total_bytes > capacity:
        fitting = [f"{other} (~{total / GIB:.1f} GiB)" for other, total in estimate.total_by_precision.items()
                   if other != precision and total <= capacity]
        advice = ("Choose a precision that fits: " + ", ".join(fitting) + ".") if fitting else (
            "No precision fits this device; use a machine with more memory.")
        raise ValueError(
            f"BAGEL '{folder_name}' in {precision} needs about {estimate.total_bytes / GIB:.1f} GiB even for a "
            f"512x512 image ({estimate.weights_bytes / GIB:.1f} GiB weights), but {device} has "
            f"{capacity / GIB:.1f} GiB in total. {advice}"
        )
    return large.weights_bytes, min(large.total_bytes, capacity) - large.weights_bytes
