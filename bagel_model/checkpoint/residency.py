"""Which weights each phase of a BAGEL call uses, and what stays resident on a device of a given size.

BAGEL's weights fall into five groups by who computes with them:

* ``gen``: the generation expert of every decoder layer (``*_moe_gen``) and the latent I/O (``vae2llm``,
  ``llm2vae``, ``time_embedder``, ``latent_pos_embed``);
* ``und``: the understanding expert of every decoder layer (the original Qwen2 weights and norms);
* ``text_io``: ``embed_tokens`` and ``lm_head`` (the token table is looked up row by row where it lives, so
  only ``lm_head``, read once per decoded token, needs to be resident; a denoising step reads neither);
* ``vit``: SigLIP, the connector and ``vit_pos_embed``;
* ``vae``: the autoencoder.

A denoising forward sends every latent token through ``gen`` and only the two image-marker tokens of each CFG
branch through ``und`` (spec §3.3), all marker rows of one LM call in one und-expert call, so a streamed und
expert is copied once per LM call (its rows run as one tensor, ``qwen2_mot.Block.split``); text prefill uses
``und`` and the token table (a request's two image-marker rows are looked up then, once), decoding ``und`` and
``lm_head``. So a memory manager that cannot hold everything should keep the phase's working group resident and
stream the other: ``PHASE_GROUPS`` names the groups each phase asks for, ``weight_groups`` gives the layers of
each group, and ``denoise_residency`` estimates, for a device budget, what is resident and what is streamed per
denoising step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import BagelConfig
from ..devices import resolve_batch_cfg
from .memory import GiB, estimate_memory, tensor_bytes
from .param_inventory import autoencoder_parameter_count, bagel_tensors

GROUPS = ("gen", "und", "text_io", "vit", "vae")
_TEXT_IO = ("language_model.model.embed_tokens", "language_model.lm_head")
# Tables looked up row by row where they live (ops.Embedding / PositionTable): a call copies the rows it needs,
# never the table, so they do not count as streamed whatever their residency.
_LOOKUP_TABLES = ("latent_pos_embed.", "vit_pos_embed.", "language_model.model.embed_tokens.")
_GEN_ROOTS = ("time_embedder", "vae2llm", "llm2vae", "latent_pos_embed")
_VIT_ROOTS = ("vit_model", "connector", "vit_pos_embed")

# Phase -> groups it computes with, in the order they should become resident. Each phase asks only for what
# its LM/encoder calls read: a ViT image block uses SigLIP + the und expert; a VAE image block (edit, and think
# with an input image, whose official context holds the VAE tokens) encodes with the autoencoder and sends its
# latent tokens through the gen expert (its two marker rows use the und expert, streamed if not resident).
# "denoise" lists only the gen expert: the und expert works there on a handful of marker rows and is streamed
# if it is not resident. Understanding, and think without an input image, never ask for gen or vae.
PHASE_GROUPS = {
    "prefill_text": ("und", "text_io"),
    "prefill_vit": ("und", "vit"),
    "prefill_vae": ("gen", "vae"),
    "decode_text": ("und", "text_io"),
    "denoise": ("gen",),
    "decode_image": ("vae",),
}

# ComfyUI 0.3.64 keeps this much free besides the working memory (comfy/model_management.py:
# minimum_inference_memory() = 0.8 GiB + the 0.4 GiB reserve on Linux; extra_mem = max(that, required + reserve)).
COMFY_MIN_INFERENCE = int(0.8 * GiB)
COMFY_RESERVE = 400 * 1024 ** 2


def group_of(name: str) -> str:
    """The group of a ``Bagel`` tensor or layer by its qualified name (autoencoder names are not Bagel's)."""
    root = name.split(".", 1)[0]
    if root == "language_model":
        if any(name == io or name.startswith(io + ".") for io in _TEXT_IO):
            return "text_io"
        return "gen" if "_moe_gen" in name else "und"
    if root in _GEN_ROOTS:
        return "gen"
    if root in _VIT_ROOTS:
        return "vit"
    raise ValueError(f"{name!r} is no BAGEL weight name")


def weight_groups(bagel: nn.Module, vae: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """The layers (modules that hold tensors themselves) of each group, with their qualified names."""
    groups: dict[str, list[tuple[str, nn.Module]]] = {group: [] for group in GROUPS}
    for root, prefix in ((bagel, ""), (vae, "vae.")):
        for name, module in root.named_modules():
            if next(module.parameters(recurse=False), None) is None and \
                    next(module.buffers(recurse=False), None) is None:
                continue
            groups["vae" if root is vae else group_of(name)].append((prefix + name, module))
    return groups


def group_bytes(config: BagelConfig, precision: str, policy: str = "default") -> dict[str, int]:
    """Resident bytes of each group in ``precision`` (the autoencoder is always fp32)."""
    sizes = dict.fromkeys(GROUPS, 0)
    for spec in bagel_tensors(config):
        sizes[group_of(spec.name)] += tensor_bytes(spec, precision, policy)
    sizes["vae"] = autoencoder_parameter_count(config.ae) * 4
    return sizes


def streamed_read_bytes(config: BagelConfig, precision: str, policy: str = "default") -> dict[str, int]:
    """Bytes of each group that a call reads whole through the cast path when the group is not resident:
    ``group_bytes`` without the row-lookup tables (the residency plan places those first: they cost nothing
    where they are)."""
    sizes = dict.fromkeys(GROUPS, 0)
    for spec in bagel_tensors(config):
        if not spec.name.startswith(_LOOKUP_TABLES):
            sizes[group_of(spec.name)] += tensor_bytes(spec, precision, policy)
    sizes["vae"] = autoencoder_parameter_count(config.ae) * 4
    return sizes


@dataclass(frozen=True)
class DenoiseResidency:
    """Estimated residency during denoising for one budget (bytes). ``streamed_per_step`` counts every LM
    call of a step (one with batched CFG, one per branch otherwise): each call reads every streamed gen/und
    layer once (the bytes tests/speed/test_expert_passes.py measures through the cast path)."""

    precision: str
    task: str
    budget: int
    working: int
    resident: dict
    streamed: dict
    calls_per_step: int

    @property
    def fits(self) -> bool:
        """False when even the working memory and ComfyUI's reserve exceed the budget."""
        return self.budget >= self.working + COMFY_RESERVE

    @property
    def streamed_per_step(self) -> int:
        return sum(self.streamed.values()) * self.calls_per_step


def denoise_residency(config: BagelConfig, precision: str, budget_bytes: int, task: str = "t2i",
                      width: int = 1024, height: int = 1024, *, device: str = "cuda",
                      compute_dtype: torch.dtype | None = None, batch_cfg: bool | None = None,
                      policy: str = "default") -> DenoiseResidency:
    """What stays resident during the denoising of one ``task`` call when ``budget_bytes`` are free at its
    start: ComfyUI keeps the working memory (KV caches + activation peak) and its reserve free, the gen
    expert fills the rest first, the und expert what remains; vit/vae are evicted. Estimated, to one-layer
    granularity (ComfyUI moves whole layers)."""
    estimate = estimate_memory(config, precision, task, width, height, device=device,
                               compute_dtype=compute_dtype, policy=policy, batch_cfg=batch_cfg,
                               _with_alternatives=False)
    working = estimate.kv_cache_bytes + estimate.activation_bytes
    weights_budget = max(0, budget_bytes - max(COMFY_MIN_INFERENCE + COMFY_RESERVE, working + COMFY_RESERVE))
    sizes, read = group_bytes(config, precision, policy), streamed_read_bytes(config, precision, policy)
    tables = {group: sizes[group] - read[group] for group in ("gen", "und")}
    resident, streamed = split_denoise_weights(read, weights_budget - sum(tables.values()))
    resident = {group: resident[group] + tables[group] for group in resident}
    calls = denoise_calls_per_step(estimate.details["cfg_branches"], device, batch_cfg)
    return DenoiseResidency(precision, task, budget_bytes, working, resident, streamed, calls)


def split_denoise_weights(sizes: dict[str, int], weights_room: int) -> tuple[dict, dict]:
    """(resident, streamed) bytes of the two experts (``sizes``: their streamable bytes) when ``weights_room``
    bytes can hold weights during denoising: the gen expert first (every latent row), the und expert what
    remains."""
    resident, streamed = {}, {}
    for group in ("gen", "und"):
        resident[group] = min(sizes[group], max(0, weights_room))
        streamed[group] = sizes[group] - resident[group]
        weights_room -= resident[group]
    return resident, streamed


def denoise_calls_per_step(branches: int, device: str, batch_cfg: bool | None) -> int:
    """LM calls per denoising step with ``branches`` CFG branches (1 with batched CFG)."""
    return 1 if resolve_batch_cfg(batch_cfg, "cuda" if device.startswith("cuda") else "cpu") else branches


def residency_table(config: BagelConfig, precisions, budgets_gib=(8, 12, 16, 24), tasks=("t2i", "edit"),
                    size: int = 1024, **kwargs) -> list[str]:
    """Rows of the estimated denoise residency table (GiB), one per precision x task x budget."""
    rows = ["precision task  size  budget | working | gen resident/streamed | und resident/streamed | "
            "streamed per step (calls)  [ESTIMATED]"]
    for precision in precisions:
        for task in tasks:
            for budget in budgets_gib:
                plan = denoise_residency(config, precision, int(budget * GiB), task, size, size, **kwargs)
                if not plan.fits:
                    rows.append(f"{precision:9} {task:5} {size:5} {budget:4} GiB | does not fit "
                                f"(working memory {plan.working / GiB:.1f} GiB)")
                    continue
                rows.append(
                    f"{precision:9} {task:5} {size:5} {budget:4} GiB | {plan.working / GiB:5.1f}   | "
                    f"{plan.resident['gen'] / GiB:5.1f} / {plan.streamed['gen'] / GiB:5.1f}         | "
                    f"{plan.resident['und'] / GiB:5.1f} / {plan.streamed['und'] / GiB:5.1f}         | "
                    f"{plan.streamed_per_step / GiB:5.1f} GiB ({plan.calls_per_step})")
    return rows
