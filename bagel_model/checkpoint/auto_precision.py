"""``precision="auto"``: the best weight precision that runs on a device, chosen from the memory estimate.

The rule (a pure function of the configs and the device's memory numbers, so tests inject the numbers):

1. A pre-quantized folder loads in the precision it holds (nothing to choose; no re-quantization).
2. Otherwise the candidates are tried best first: ``bf16`` (the reference weights), ``fp8_e4m3fn``, ``int8``,
   ``nf4``. For each, the estimate of a 1024x1024 text-to-image call gives the weights ``W`` (autoencoder
   included) and the working memory ``A`` (KV cache + activation peak). The room for resident weights is
   ``R = total - reserved - A`` (``reserved``: what the memory manager keeps free, e.g. ComfyUI's minimum
   inference memory).
   * ``W <= R``: the precision fits entirely: take it.
   * else, when a memory manager streams weights (``streaming``) and the precision's layers are streamable,
     the part of the two experts that does not fit in ``R`` during denoising (gen expert resident first, then
     und; ViT, autoencoder and the text I/O are evicted) is copied to the device once per LM call, i.e. once
     per denoising step with the CFG branches batched: ``S``, the streamed bytes per step of the residency plan
     (``residency.split_denoise_weights``, the same numbers as the residency table and the README VRAM table).
     That is *acceptable* when at least half of the weights stay resident (``W - R <= W / 2``,
     ``MAX_STREAMED_FRACTION``) and the host can hold the streamed part (``host_available``, when given): take
     it. (``S <= W - R``: the evicted ViT/autoencoder/text I/O are not read while denoising.)
   * else try the next candidate.
3. When no candidate qualifies, the smallest one (``nf4``) is returned with that reason: streaming more than
   half of it when it is streamable and some room is left (slow, but it runs), else as it is, and the loader's
   memory check then refuses it with numbers if even a 512x512 call cannot run.

Why half: what is streamed crosses the bus on every step; for half of BAGEL's bf16 weights (13.8 GiB) that is
about 0.55 s per step at PCIe 4.0 x16's ~25 GB/s, the same order as the compute of a 1024² step on a fast
24 GB card (~0.7 s on an RTX 4090, several seconds on 12-16 GB cards), so a step at most roughly doubles on
the fastest cards and slows far less on slower ones. Streaming more than half the model makes the transfer
dominate, and the next precision (about half the bytes) fits with far less or no streaming. These transfer and
compute figures are planning numbers from docs, not measurements (bench/gpu_check.py measures them).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import BagelConfig
from .formats import describe_checkpoint
from .memory import GiB, available_memory, estimate_memory
from .quantization import BITSANDBYTES_PRECISIONS, PRECISIONS
from .residency import denoise_residency

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_ORDER = ("bf16", "fp8_e4m3fn", "int8", "nf4")
# Precisions whose layers a memory manager can keep on the host and stream: every layer of the core casts at
# use (model/ops.py, fp8.py, the NF4/INT8 Linears of quantization.py); a host that cannot stream some passes
# its own set.
STREAMABLE = frozenset(PRECISIONS)
MAX_STREAMED_FRACTION = 0.5
REFERENCE_CALL = {"task": "t2i", "width": 1024, "height": 1024}


@dataclass(frozen=True)
class DeviceMemory:
    """Memory numbers of the compute device, as the caller measured them."""

    total_bytes: int  # device memory in total (a memory manager can evict other models to get it)
    reserved_bytes: int = 0  # kept free by the memory manager
    streaming: bool = False  # whether weights that do not fit are kept on the host and streamed
    host_available_bytes: int | None = None  # host RAM for the streamed part (None: not checked)


@dataclass(frozen=True)
class PrecisionOption:
    precision: str
    weights_bytes: int
    working_bytes: int
    resident_room_bytes: int
    streamed_bytes: int  # per denoising step (residency plan); 0 when the weights fit entirely
    verdict: str  # "fits", "streams", or why it was rejected

    @property
    def acceptable(self) -> bool:
        return self.verdict in ("fits", "streams")

    def describe(self) -> str:
        text = (f"{self.precision}: weights {self.weights_bytes / GiB:.2f} GiB + working "
                f"{self.working_bytes / GiB:.2f} GiB, room for weights {self.resident_room_bytes / GiB:.2f} GiB")
        if self.verdict == "streams":
            return text + f" -> streams {self.streamed_bytes / GiB:.2f} GiB per step"
        return text + f" -> {self.verdict}"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    reason: str
    options: tuple[PrecisionOption, ...] = ()
    streams: bool = False  # the chosen precision relies on the memory manager streaming part of its weights


def evaluate_precision(config: BagelConfig, precision: str, memory: DeviceMemory, *, device: str,
                       compute_dtype: torch.dtype | None, streamable: frozenset | set,
                       call: dict | None = None) -> PrecisionOption:
    """Whether ``precision`` fits, streams acceptably, or is rejected on this device (rule in the module doc).

    ``call``: the ``estimate_memory`` task arguments of the call to plan for (default ``REFERENCE_CALL``)."""
    estimate = estimate_memory(config, precision, device=device, compute_dtype=compute_dtype,
                               **(call or REFERENCE_CALL))
    weights = estimate.weights_bytes
    working = estimate.kv_cache_bytes + estimate.activation_bytes
    room = memory.total_bytes - memory.reserved_bytes - working
    streamed = 0 if weights <= room else _streamed_per_step(config, precision, memory, device, compute_dtype,
                                                            call or REFERENCE_CALL)
    if weights <= room:
        verdict = "fits"
    elif not memory.streaming:
        verdict = "does not fit (no streaming on this device)"
    elif precision not in streamable:
        verdict = "does not fit and its layers cannot be streamed here"
    elif weights - room > MAX_STREAMED_FRACTION * weights:
        verdict = (f"would keep only {max(room, 0) / weights:.0%} of its weights resident and stream "
                   f"{streamed / GiB:.2f} GiB per step (at least {1 - MAX_STREAMED_FRACTION:.0%} must stay resident)")
    elif memory.host_available_bytes is not None and weights - room > memory.host_available_bytes:
        verdict = (f"the {(weights - room) / GiB:.2f} GiB kept on the host exceed the host's "
                   f"{memory.host_available_bytes / GiB:.2f} GiB available")
    else:
        verdict = "streams"
    return PrecisionOption(precision, weights, working, room, streamed, verdict)


def _streamed_per_step(config: BagelConfig, precision: str, memory: DeviceMemory, device: str,
                       compute_dtype: torch.dtype | None, call: dict) -> int:
    """Bytes of the experts copied per denoising step on this card: the residency plan's figure (the residency
    table and the README VRAM table print the same), for a memory manager that streams (ComfyUI's reserve)."""
    plan = denoise_residency(config, precision, memory.total_bytes, call.get("task", "t2i"),
                             call.get("width", 1024), call.get("height", 1024), device=device,
                             compute_dtype=compute_dtype)
    return plan.streamed_per_step


def choose_precision(config: BagelConfig, memory: DeviceMemory, *, device: str = "cuda",
                     compute_dtype: torch.dtype | None = None, candidates: tuple[str, ...] = AUTO_ORDER,
                     streamable: frozenset | set = STREAMABLE, prequantized: str | None = None) -> PrecisionChoice:
    """The precision ``auto`` resolves to (rule in the module docstring). ``candidates`` lets the caller drop
    precisions that cannot run (e.g. nf4/int8 without bitsandbytes); their order is kept."""
    if prequantized is not None:
        return PrecisionChoice(prequantized, f"the folder is pre-quantized in {prequantized}")
    if not candidates:
        raise ValueError("choose_precision needs at least one candidate precision")
    options = tuple(evaluate_precision(config, p, memory, device=device, compute_dtype=compute_dtype,
                                       streamable=streamable) for p in candidates)
    budget = (f"{memory.total_bytes / GiB:.1f} GiB on {device}, {memory.reserved_bytes / GiB:.1f} GiB reserved, "
              f"1024x1024 text-to-image")
    for option in options:
        if option.acceptable:
            how = ("its weights fit entirely" if option.verdict == "fits" else
                   f"{option.streamed_bytes / GiB:.2f} GiB of {option.weights_bytes / GiB:.2f} GiB streamed per step")
            return PrecisionChoice(option.precision, f"{how} ({budget})", options, option.verdict == "streams")
    smallest = min(options, key=lambda o: o.weights_bytes)
    over_limit = smallest.verdict.startswith("would keep only") and smallest.resident_room_bytes > 0
    how = (f"streaming {smallest.streamed_bytes / GiB:.2f} GiB per step, over the limit: slow" if over_limit
           else "it may not fit")
    return PrecisionChoice(smallest.precision, f"no precision fits with acceptable streaming ({budget}); "
                                               f"{smallest.precision} is the smallest, {how}", options, over_limit)


def log_choice(choice: PrecisionChoice, where: str) -> None:
    """One INFO line with the pick and why, one per evaluated option."""
    log.info("precision auto for %s -> %s: %s", where, choice.precision, choice.reason)
    for option in choice.options:
        log.info("  %s", option.describe())


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def runnable_candidates(order: tuple[str, ...] = AUTO_ORDER) -> tuple[str, ...]:
    """``order`` without the bitsandbytes precisions when bitsandbytes is not installed."""
    return tuple(p for p in order if p not in BITSANDBYTES_PRECISIONS or bitsandbytes_installed())


def resolve_auto(folder: str | Path, device: torch.device, compute_dtype: torch.dtype,
                 available_bytes: int | None = None, vae_dirs=()) -> PrecisionChoice:
    """``auto`` for the core loader, which places every weight on ``device`` itself (no streaming): the budget
    is ``available_bytes`` or the memory free on ``device`` now. A checkpoint stored quantized (ours or a
    community fp8/int8 file) keeps its own precision."""
    source = describe_checkpoint(folder, vae_dirs)
    if source.held_precision is not None:
        choice = choose_precision(BagelConfig(), DeviceMemory(0), prequantized=source.held_precision)
    else:
        total = available_memory(device) if available_bytes is None else int(available_bytes)
        choice = choose_precision(source.read_config(), DeviceMemory(total), device=str(device),
                                  compute_dtype=compute_dtype, candidates=runnable_candidates())
    log_choice(choice, str(folder))
    return choice
