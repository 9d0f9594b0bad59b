"""The loader's ``auto`` precision: ComfyUI's memory numbers fed to the core's documented rule.

The rule itself (bf16 when it fits or at least half of it stays resident while ComfyUI streams the rest, then
fp8_e4m3fn, int8, nf4; a pre-quantized folder keeps its precision) lives in
``bagel_model.checkpoint.auto_precision.choose_precision`` and is tested there with injected numbers. Here:

* the budget of a GPU is its total memory (ComfyUI evicts other models to make room; the same bound as the
  load check in memory_check.py) minus ``minimum_inference_memory()``, which ComfyUI keeps free;
* on the CPU it is the RAM available now (other programs hold the rest; nothing is evicted for us);
* ComfyUI streams weights that do not fit (partial loading) unless it runs with ``--highvram``/``--gpu-only``
  or without a GPU; the streamed part stays in host RAM, so the host's available RAM bounds it.
"""
import logging

import comfy.model_management as mm
import torch

logger = logging.getLogger(__name__)

AUTO = "auto"
# vram states in which load_models_gpu partially loads a model that does not fit (it streams the rest).
_PARTIAL_LOAD_STATES = ("LOW_VRAM", "NORMAL_VRAM", "NO_VRAM")


def comfy_streams_weights(device: torch.device) -> bool:
    return device.type != "cpu" and mm.vram_state.name in _PARTIAL_LOAD_STATES


def comfy_device_memory(device: torch.device):
    """ComfyUI's view of ``device`` as the core's ``DeviceMemory``."""
    from bagel_model.checkpoint.auto_precision import DeviceMemory

    cpu = torch.device("cpu")
    if device.type == "cpu":
        return DeviceMemory(int(mm.get_free_memory(cpu)), 0, streaming=False)
    return DeviceMemory(int(mm.get_total_memory(device)), int(mm.minimum_inference_memory()),
                        streaming=comfy_streams_weights(device),
                        host_available_bytes=int(mm.get_free_memory(cpu)))


def resolve_precision(source, folder_name: str, precision: str):
    """``precision`` unchanged, or for ``auto`` the core's choice for ComfyUI's device; logs why.

    Returns ``(precision, choice)``; ``choice`` (a ``PrecisionChoice``) is None for an explicit precision.
    """
    if precision != AUTO:
        return precision, None
    from bagel_model.checkpoint.auto_precision import choose_precision, log_choice, runnable_candidates
    from bagel_model.devices import resolve_compute_dtype

    device = mm.get_torch_device()
    config = source.read_config()
    choice = choose_precision(config, comfy_device_memory(device), device=str(device),
                              compute_dtype=resolve_compute_dtype("auto", device),
                              candidates=runnable_candidates(), prequantized=source.held_precision)
    log_choice(choice, f"BAGEL '{folder_name}'")
    return choice.precision, choice
