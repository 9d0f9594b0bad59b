"""The compute dtype of a BAGEL model inside ComfyUI: ComfyUI's own policy for its device.

ComfyUI decides per device (and from --force-fp32 / --force-fp16) whether bf16 or fp16 is worth it:
comfy.model_management.should_use_bf16 / should_use_fp16, which for example keep pre-Ampere NVIDIA GPUs off
bf16 (only emulated there). Those helpers answer "no" for every CPU because most CPUs emulate bf16; on the CPU
the core's own rule decides instead ("auto": bf16 only with native bf16 matmuls), unless fp32 is forced.
"""
import logging

import comfy.model_management as mm
from comfy.cli_args import args

logger = logging.getLogger(__name__)


def comfy_compute_dtype(device) -> str:
    """'bf16', 'fp16' or 'fp32' as ComfyUI would pick for `device`; 'auto' (the core's rule) on a CPU."""
    if mm.is_device_cpu(device):
        choice = "fp32" if mm.FORCE_FP32 else "auto"
    elif args.force_fp16:
        choice = "fp16"
    elif mm.should_use_bf16(device, prioritize_performance=True):
        choice = "bf16"
    elif mm.should_use_fp16(device, prioritize_performance=True):
        choice = "fp16"
    else:
        choice = "fp32"
    logger.info("BAGEL compute dtype on %s: %s (ComfyUI's policy%s).", device, choice,
                "; the core's CPU rule" if choice == "auto" else "")
    return choice
