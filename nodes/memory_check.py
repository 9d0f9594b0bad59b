"""Memory estimate for a checkpoint + precision, logged at load and used to refuse early.

ComfyUI streams whatever part of the weights does not fit on its device (every BAGEL layer is a cast op), so
the device only has to hold the working memory of a call (KV caches, activations, one streamed layer) next
to ComfyUI's reserve; the weights themselves must fit in the offload device's memory (host RAM). The load is
refused only when even a 512x512 text-to-image run cannot work; a log line says how much of the model is
expected to stream at 1024x1024. ComfyUI can unload other models, so the bound is the device's total
memory, not what happens to be free right now.
"""
import logging

import comfy.model_management as mm

from bagel_model.checkpoint.memory import estimate_memory
from bagel_model.checkpoint.residency import COMFY_MIN_INFERENCE, COMFY_RESERVE

logger = logging.getLogger(__name__)

GIB = 1024 ** 3


def _estimate(config, precision: str, device, side: int):
    return estimate_memory(config, precision, width=side, height=side, device=str(device))


def _working(estimate) -> int:
    return max(estimate.kv_cache_bytes + estimate.activation_bytes, COMFY_MIN_INFERENCE) + COMFY_RESERVE


def check_fits(source, folder_name: str, precision: str) -> tuple[int, int]:
    """Logs the estimate; raises ValueError with numbers when it cannot work on ComfyUI's devices.

    Returns (weight_bytes, working_bytes of a 1024x1024 text-to-image call)."""
    config = source.read_config()  # a CheckpointSource (bagel_model/checkpoint/formats.py)
    device, offload = mm.get_torch_device(), mm.unet_offload_device()
    large, small = _estimate(config, precision, device, 1024), _estimate(config, precision, device, 512)
    capacity, host = int(mm.get_total_memory(device)), int(mm.get_total_memory(offload))
    logger.info("BAGEL '%s': %s; %s has %.1f GiB in total.", folder_name, large.summary(), device,
                capacity / GIB)
    if _working(small) > capacity:
        raise ValueError(
            f"BAGEL '{folder_name}' in {precision} needs about {_working(small) / GIB:.1f} GiB of working memory "
            f"even for a 512x512 image (weights {small.weights_bytes / GIB:.1f} GiB can stream), but {device} "
            f"has {capacity / GIB:.1f} GiB in total. Use a device with more memory.")
    if large.weights_bytes > host:
        raise ValueError(
            f"BAGEL '{folder_name}' in {precision} keeps {large.weights_bytes / GIB:.1f} GiB of weights in "
            f"{offload} memory, which has {host / GIB:.1f} GiB in total. Choose a smaller precision (nf4 or "
            "int8) or a machine with more RAM.")
    spare = capacity - _working(large)
    if large.weights_bytes > spare:
        logger.info("BAGEL '%s' in %s: about %.1f GiB of the %.1f GiB of weights will not fit next to a "
                    "1024x1024 call on %s; ComfyUI streams them from %s (estimated).", folder_name, precision,
                    (large.weights_bytes - max(spare, 0)) / GIB, large.weights_bytes / GIB, device, offload)
    return large.weights_bytes, _working(large)
