"""The measuring parts of bench/gpu_check.py: what ComfyUI streams and loads per node call (``Meter``), a
simulated card size (``Budget``), the deadline inside a node call, and enabling Dynamic VRAM the way ComfyUI
0.33's main.py does (comfy-aimdo)."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch

GiB = 1024 ** 3


class DeadlineReached(RuntimeError):
    """Raised inside a node call (from its progress callback) once ``--max-minutes`` is over."""


def dynamic_vram_available(root: Path) -> bool:
    """comfy-aimdo is importable and this ComfyUI has the Dynamic VRAM patcher (0.33+)."""
    if importlib.util.find_spec("comfy_aimdo") is None:
        return False
    source = root / "comfy" / "model_patcher.py"
    return source.is_file() and "class ModelPatcherDynamic" in source.read_text(encoding="utf-8")


def enable_dynamic_vram(mm) -> bool:
    """What ComfyUI 0.33's main.py does when Dynamic VRAM is on (before any model patcher is made)."""
    import comfy.memory_management
    import comfy.model_patcher
    import comfy_aimdo.control

    for kwargs in ({"simple_vram_headroom": None, "nvml_pressure": True}, {"simple_vram_headroom": None}, {}):
        try:
            comfy_aimdo.control.init(**kwargs)
            break
        except TypeError:  # older comfy-aimdo protocols take fewer arguments
            continue
    devices = mm.get_all_torch_devices()
    try:
        ok = comfy_aimdo.control.init_devices((d.index, 0) for d in devices)
    except TypeError:
        ok = comfy_aimdo.control.init_devices(d.index for d in devices)
    if ok:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
    return bool(ok)


class Meter:
    """Reads the transfer ledger (bagel_model/model/transfer_ledger.py: every weight byte our layers, the
    NF4/INT8 Linears and ComfyUI's cast ops copy from the storage device) per progress report, times
    ``load_models_gpu`` and stops a node call past ``deadline`` (epoch seconds)."""

    def __init__(self, mm, comfy_utils, deadline: float = float("inf"), ledger=None):
        if ledger is None:
            from bagel_model.model.transfer_ledger import ledger
        self.ledger = ledger
        self.deadline = deadline
        self.load_seconds = 0.0
        self.events: list[tuple[float, int]] = []
        real_load = mm.load_models_gpu

        def timed_load(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real_load(*args, **kwargs)
            finally:
                self.load_seconds += time.perf_counter() - start

        mm.load_models_gpu = timed_load
        comfy_utils.set_progress_bar_global_hook(self.progress)

    @property
    def streamed(self) -> int:
        return self.ledger.total()

    def progress(self, value, total, preview, node_id=None) -> None:
        self.events.append((time.perf_counter(), self.streamed))
        if time.time() > self.deadline:
            raise DeadlineReached("--max-minutes reached during the node call")

    def reset(self) -> None:
        self.ledger.reset()
        self.load_seconds, self.events = 0.0, []

    def per_step(self) -> tuple[float, float]:
        """(seconds, bytes streamed) per progress step, between the first and the last report."""
        if len(self.events) < 2:
            return float("nan"), float("nan")
        (t0, b0), (t1, b1) = self.events[0], self.events[-1]
        steps = len(self.events) - 1
        return (t1 - t0) / steps, (b1 - b0) / steps


class Budget:
    """Caps the CUDA allocator at ``gib`` and shows ComfyUI a card of that size (total and free memory)."""

    def __init__(self, mm, device: torch.device, gib: float | None):
        self.mm, self.device, self.gib = mm, device, gib
        self.saved = (mm.get_total_memory, mm.get_free_memory)

    def __enter__(self):
        mm, device = self.mm, self.device
        mm.unload_all_models()
        mm.soft_empty_cache()
        if self.gib is None or device.type != "cuda":
            return self
        limit = int(self.gib * GiB)
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)  # needs an indexed device
        real_total, real_free = self.saved

        def total_memory(dev=None, torch_total_too=False):
            if dev is not None and torch.device(dev).type != "cuda":
                return real_total(dev, torch_total_too)
            return (limit, limit) if torch_total_too else limit

        def free_memory(dev=None, torch_free_too=False):
            if dev is not None and torch.device(dev).type != "cuda":
                return real_free(dev, torch_free_too)
            torch_free = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            free = max(0, limit - torch.cuda.memory_reserved(device)) + torch_free
            return (free, torch_free) if torch_free_too else free

        mm.get_total_memory, mm.get_free_memory = total_memory, free_memory
        return self

    def __exit__(self, *exc):
        self.mm.get_total_memory, self.mm.get_free_memory = self.saved
        self.mm.unload_all_models()
        self.mm.soft_empty_cache()
        if self.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
