"""Memory needed by a BAGEL load and by one task, from the configs alone, and a clear refusal when it cannot fit.

Weights are exact byte counts of what the loader keeps resident (checked against measured bytes in
tests/quant). KV cache and activations are estimates of the peak of one call, built from the sequence lengths
the task produces (spec §3.6, §6, §9) and the dtypes the runtime uses. They cover the transient peaks too: a
growing KV cache (every layer's buffer with its growth room plus one layer's old buffer while it grows,
``kv_cache.peak_tokens``), one query block of fp32 attention scores (what SDPA's math fallback materialises;
``attention.SCORE_BLOCK_BYTES`` bounds it wherever that kernel runs; flash kernels hold less), and the LM prefill of an input image's ViT and VAE
blocks (~4.9 k and ~4.1 k tokens at 1024²), the largest LM call of understanding and editing.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field

import torch

from ..config import BagelConfig
from ..devices import resolve_batch_cfg
from ..errors import BagelError, BagelInputError
from ..model.attention import SCORE_BLOCK_BYTES
from ..model.kv_cache import peak_tokens
from .param_inventory import TensorSpec, autoencoder_parameter_count, bagel_tensors
from .quantization import NF4_BLOCKSIZE, PRECISIONS, QUANTIZED_PRECISIONS, check_precision, should_quantize

log = logging.getLogger(__name__)

TASKS = ("t2i", "edit", "understand", "think")
GiB = 1024 ** 3
# Storage bytes of the tensors a precision does not quantize.
_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "nf4": 2, "int8": 2, "fp8_e4m3fn": 2}
_AE_BYTES = 4  # the autoencoder stays fp32 whatever the precision (it is 0.3 GB and decodes to pixels)
_DEFAULT_CFG_BRANCHES = {"t2i": 2, "edit": 3, "understand": 1, "think": 1}
_SYSTEM_AND_FRAMING_TOKENS = 64  # system prompt (think modes) and <|im_start|>/<|im_end|> markers


class BagelMemoryError(BagelError, MemoryError):
    """The requested precision/task does not fit in the memory of the target device."""


@dataclass(frozen=True)
class MemoryEstimate:
    precision: str
    task: str
    device: str
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    autoencoder_bytes: int
    details: dict = field(default_factory=dict)
    total_by_precision: dict = field(default_factory=dict)  # same task, every precision

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes

    def summary(self) -> str:
        return (f"{self.precision} {self.task} on {self.device}: about {self.total_bytes / GiB:.2f} GiB "
                f"(weights {self.weights_bytes / GiB:.2f} GiB incl. autoencoder "
                f"{self.autoencoder_bytes / GiB:.2f} GiB, KV cache {self.kv_cache_bytes / GiB:.2f} GiB, "
                f"activations {self.activation_bytes / GiB:.2f} GiB)")


def _quantized_linear_bytes(weight: TensorSpec, precision: str) -> int:
    if precision == "nf4":  # packed 4-bit + one fp32 absmax per 64-value block + the 16-entry code
        return math.ceil(weight.numel / 2) + 4 * math.ceil(weight.numel / NF4_BLOCKSIZE) + 64
    if precision == "fp8_e4m3fn":  # one byte per value + the fp32 per-tensor scale
        return weight.numel + 4
    return weight.numel + 4 * weight.shape[0]  # int8 values + one fp32 scale per output row


def weight_bytes(config: BagelConfig, precision: str, policy: str = "default",
                 other_dtype_bytes: int | None = None) -> dict[str, int]:
    """Resident bytes of the ``Bagel`` weights: ``{"quantized", "full_precision", "total", ...}``.

    ``other_dtype_bytes`` overrides the storage of everything not quantized (the official INT8 mode keeps it
    in fp32, i.e. 4).
    """
    check_precision(precision)
    quantized = full = quantized_params = 0
    for spec in bagel_tensors(config):
        stored = tensor_bytes(spec, precision, policy, other_dtype_bytes)
        if spec.is_linear_weight and should_quantize(spec.linear, precision, policy):
            quantized += stored
            quantized_params += spec.numel
        else:
            full += stored
    return {"quantized": quantized, "full_precision": full, "total": quantized + full,
            "quantized_params": quantized_params}


def tensor_bytes(spec: TensorSpec, precision: str, policy: str = "default",
                 other_dtype_bytes: int | None = None) -> int:
    """Resident bytes of one ``Bagel`` tensor in ``precision`` (a quantized weight with its statistics)."""
    if spec.is_linear_weight and should_quantize(spec.linear, precision, policy):
        return _quantized_linear_bytes(spec, precision)
    return spec.numel * (other_dtype_bytes or _DTYPE_BYTES[precision])


def official_weight_bytes(config: BagelConfig, precision: str) -> int:
    """What the official app's mode holds: every Linear quantized; INT8 keeps the rest in fp32 (spec §8)."""
    if precision not in QUANTIZED_PRECISIONS:
        return weight_bytes(config, precision)["total"]
    other = 4 if precision == "int8" else 2
    return weight_bytes(config, precision, policy="all-linear", other_dtype_bytes=other)["total"]


def _vae_size(width: int, height: int, max_side: int, min_side: int = 512, stride: int = 16) -> tuple[int, int]:
    """Approximate VAE-transform size (spec §5.1 steps 1, 2 and 4) of an input image."""
    scale = min(max_side / max(width, height), 1.0)
    scale = max(scale, min_side / min(width, height))
    w, h = (max(stride, round(v * scale / stride) * stride) for v in (width, height))
    if max(w, h) > max_side:
        factor = max_side / max(w, h)
        w, h = (max(stride, round(v * factor / stride) * stride) for v in (w, h))
    return w, h


def _vit_tokens(config: BagelConfig, width: int, height: int) -> int:
    patch, side = config.vit.patch_size, config.vit_max_num_patch_per_side
    scale = min(side * patch / max(width, height), 1.0)
    return min(side, round(width * scale / patch)) * min(side, round(height * scale / patch))


def _context_tokens(config: BagelConfig, task: str, width: int, height: int, input_size, prompt_tokens: int,
                    generated_tokens: int) -> dict:
    """Cached tokens per context (spec §6.2-§6.6) and the query length of one denoising forward."""
    ds = config.latent_downsample
    prompt = prompt_tokens + _SYSTEM_AND_FRAMING_TOKENS
    if task in ("edit", "understand"):
        in_w, in_h = input_size or (width, height)
        vae_w, vae_h = _vae_size(in_w, in_h, config.max_image_side)
        vae_block = (vae_w // ds) * (vae_h // ds) + 2 if task == "edit" else 0
        vit_block = _vit_tokens(config, vae_w, vae_h) + 2
        images = vae_block + vit_block
        if task == "edit":
            width, height = vae_w, vae_h
    else:
        images = vae_block = vit_block = 0
    query = (width // ds) * (height // ds) + 2
    if task == "t2i":
        contexts = {"gen": prompt + generated_tokens, "cfg_text": 0, "cfg_img": prompt}
    elif task == "edit":
        contexts = {"gen": images + prompt + generated_tokens, "cfg_text": images, "cfg_img": prompt}
    else:  # understand / think: one context, decoding appends to a throw-away copy
        contexts = {"context": images + prompt, "decode_copy": images + prompt + generated_tokens}
        query = 0
    return {"contexts": contexts, "query_tokens": query, "image_size": (width, height),
            "image_blocks": (vae_block, vit_block), "image_tokens": images, "prompt_tokens": prompt}


# Live tensors counted below explain 248 MB of the 288 MB that 1024² T2I denoising (2 batched CFG branches)
# of the `small` preset (fp32 compute, CPU) measurably adds to the process peak; the rest is allocator slack
# and kernel workspaces, assumed to scale the same way.
_LM_OVERHEAD = 1.2


def _weight_copy_bytes(config: BagelConfig, precision: str, compute_bytes: int) -> int:
    """A Linear whose stored dtype differs from the compute dtype materialises its weight per call (ops.Linear
    casts it, bitsandbytes NF4 and fp8 dequantize it): the largest decoder weight (the MLP) in compute
    precision."""
    if precision not in ("nf4", "fp8_e4m3fn") and _DTYPE_BYTES[precision] == compute_bytes:
        return 0
    return config.llm.intermediate_size * config.llm.hidden_size * compute_bytes


def _lm_forward_bytes(config: BagelConfig, query: int, keys: int, b: int) -> int:
    """Peak of one decoder layer over ``query`` new tokens attending to ``keys`` keys (cached + new)."""
    llm = config.llm
    hidden, inter, d = llm.hidden_size, llm.intermediate_size, llm.head_dim
    heads, kv = llm.num_attention_heads, llm.num_key_value_heads
    residual = 6 * query * hidden * b  # residual, normed input, MoT gather/scatter buffers, attention output
    qkv = query * (heads + 2 * kv) * d * b + query * (heads + kv) * d * 4  # + fp32 Q/K for QK-norm/RoPE
    merged_kv = 2 * keys * kv * d * b + 2 * keys * heads * d * b  # merged cache + GQA-repeated K/V for SDPA
    mlp = 3 * query * inter * b  # gate, up, silu(gate)*up
    return int(_LM_OVERHEAD * (residual + qkv + merged_kv + mlp))


def _score_bytes(config: BagelConfig, query: int, keys: int) -> int:
    """fp32 scores and softmax of one query block (the branches of a batched call attend one after the other)."""
    return int(_LM_OVERHEAD * 2 * min(4 * config.llm.num_attention_heads * query * keys, SCORE_BLOCK_BYTES))


def _kv_cache_peak(contexts: dict, num_layers: int, kv_per_token: int) -> int:
    """Peak bytes of the caches of ``contexts`` (tokens each) while they grow (``kv_cache.peak_tokens``)."""
    per_layer_token = kv_per_token / num_layers
    return int(per_layer_token * sum(peak_tokens(n, num_layers) for n in contexts.values() if n))


# Peak of one FLUX autoencoder call, in full-resolution fp32 feature maps of the first level's width
# (ch x ch_mult[0] = 128 channels): measured on the CPU (real AE dims, fp32) as 4.37-4.48 kB per output pixel
# for decode at 512²-768² (the 256 -> 128 channel transition at full resolution) and 2.59 kB per input pixel
# for encode at 512². The banded decode (model/banded_autoencoder.py, the default on CUDA) measured +629 MiB at
# 512² and +1690 MiB at 1024² (bench/bench_autoencoder.py): 2.8 maps plus ~275 MiB of size-independent
# temporaries; rounded up to 3 maps + 300 MiB.
_AE_DECODE_MAPS = 9.0
_AE_BANDED_DECODE_MAPS = 3.0
_AE_BANDED_FIXED_BYTES = 300 * 2 ** 20
_AE_ENCODE_MAPS = 5.5


def _autoencoder_peak(config: BagelConfig, width: int, height: int, maps: float) -> int:
    return int(maps * width * height * config.ae.ch * config.ae.ch_mult[0] * _AE_BYTES)


def _vit_peak(config: BagelConfig, tokens: int, b: int) -> int:
    vit = config.vit
    return tokens * (6 * vit.hidden_size + 2 * vit.intermediate_size) * b + tokens * config.llm.hidden_size * 2 * b


def estimate_memory(config: BagelConfig, precision: str, task: str = "t2i", width: int = 1024,
                    height: int = 1024, input_size: tuple[int, int] | None = None,
                    cfg_branches: int | None = None, *, device: str = "cuda",
                    compute_dtype: torch.dtype | None = None, prompt_tokens: int = 128,
                    generated_tokens: int = 0, policy: str = "default", batch_cfg: bool | None = None,
                    _with_alternatives: bool = True) -> MemoryEstimate:
    """Bytes a ``precision`` load plus one ``task`` call need on ``device``.

    ``input_size`` is the (width, height) of the input image of edit/understand; ``generated_tokens`` the
    thinking/answer tokens (``max_new_tokens``); ``cfg_branches`` the branches evaluated per denoising step
    (default 2 for T2I, 3 for edit); with ``batch_cfg`` (None: the pipeline's default for ``device``) they run
    as one LM call, so the decoder activations scale with them.
    """
    check_precision(precision)
    if task not in TASKS:
        raise BagelInputError(f"Unknown task {task!r} for the memory estimate; use one of {', '.join(TASKS)}.")
    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    b = torch.empty(0, dtype=compute_dtype).element_size()
    tokens = _context_tokens(config, task, width, height, input_size, prompt_tokens, generated_tokens)
    llm = config.llm
    kv_per_token = 2 * llm.num_hidden_layers * llm.num_key_value_heads * llm.head_dim * b
    kv_bytes = _kv_cache_peak(tokens["contexts"], llm.num_hidden_layers, kv_per_token)
    largest_context = max(tokens["contexts"].values())
    query = tokens["query_tokens"] or 1
    batch_cfg = resolve_batch_cfg(batch_cfg, "cuda" if str(device).startswith("cuda") else "cpu")
    branches = (cfg_branches or _DEFAULT_CFG_BRANCHES[task]) if batch_cfg else 1
    lm_peak = (branches * _lm_forward_bytes(config, query, largest_context + query, b)
               + _score_bytes(config, query, largest_context + query) + _weight_copy_bytes(config, precision, b))
    logits = llm.vocab_size * 4 * max(1, query if task in ("understand", "think") else 1)
    w, h = tokens["image_size"]
    peaks = {"lm_layer": lm_peak + logits}
    if any(tokens["image_blocks"]):  # the LM call over an input image's largest block (ViT or VAE tokens)
        block, keys = max(tokens["image_blocks"]), tokens["image_tokens"] + tokens["prompt_tokens"]
        peaks["lm_image_prefill"] = (_lm_forward_bytes(config, block, keys, b) + _score_bytes(config, block, keys)
                                     + _weight_copy_bytes(config, precision, b))
    if task in ("t2i", "edit"):
        banded = str(device).startswith("cuda")  # BagelPipeline.decode_latent's default
        peaks["autoencoder_decode"] = (
            _autoencoder_peak(config, w, h, _AE_BANDED_DECODE_MAPS) + _AE_BANDED_FIXED_BYTES if banded
            else _autoencoder_peak(config, w, h, _AE_DECODE_MAPS))
    if task == "edit":
        peaks["autoencoder_encode"] = _autoencoder_peak(config, w, h, _AE_ENCODE_MAPS)
    if task in ("edit", "understand"):
        peaks["vit"] = _vit_peak(config, _vit_tokens(config, *(_vae_size(*(input_size or (w, h)),
                                                                         config.max_image_side))), b)
    weights = weight_bytes(config, precision, policy)
    ae = autoencoder_parameter_count(config.ae) * _AE_BYTES
    details = {"context_tokens": tokens["contexts"], "query_tokens": tokens["query_tokens"],
               "kv_bytes_per_token": kv_per_token, "peaks": peaks, "compute_dtype": str(compute_dtype),
               "cfg_branches": cfg_branches or _DEFAULT_CFG_BRANCHES[task], "weights": weights,
               "image_size": tokens["image_size"]}
    alternatives = {}
    if _with_alternatives:
        for other in PRECISIONS:
            alternatives[other] = estimate_memory(
                config, other, task, width, height, input_size, cfg_branches, device=device,
                compute_dtype=compute_dtype, prompt_tokens=prompt_tokens, generated_tokens=generated_tokens,
                policy=policy, batch_cfg=batch_cfg, _with_alternatives=False).total_bytes
    return MemoryEstimate(precision, task, str(device), weights["total"] + ae, kv_bytes, max(peaks.values()),
                          ae, details, alternatives)


def available_memory(device: torch.device | str) -> int:
    """Free bytes on ``device``: CUDA free memory plus PyTorch's cached but unused blocks, or the host's
    available RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil

    return int(psutil.virtual_memory().available)


def batch_cfg_fits(config: BagelConfig, device: torch.device | str, query_tokens: int, longest_context: int,
                   branches: int, compute_dtype: torch.dtype, free_bytes: int | None = None) -> bool:
    """Whether one LM call over ``branches`` stacked CFG branches fits in what is free on ``device`` now (the
    decoder-layer activations grow with the branches; weights and KV caches are already resident)."""
    if branches <= 1:
        return True
    b = torch.empty(0, dtype=compute_dtype).element_size()
    needed = branches * _lm_forward_bytes(config, query_tokens, longest_context + query_tokens, b)
    return needed <= (available_memory(device) if free_bytes is None else free_bytes)


def denoise_call_bytes(config: BagelConfig, query_tokens: int, longest_context: int, rows: int,
                       compute_dtype: torch.dtype) -> int:
    """Working memory of one denoising LM call over ``rows`` stacked (branch, image) rows of ``query_tokens``
    latent tokens each, against contexts of up to ``longest_context`` tokens (weights and caches excluded)."""
    b = torch.empty(0, dtype=compute_dtype).element_size()
    keys = longest_context + query_tokens + 2
    return max(1, rows) * _lm_forward_bytes(config, query_tokens + 2, keys, b) + _score_bytes(
        config, query_tokens + 2, keys)


def check_fits(estimate: MemoryEstimate, available_bytes: int | None, device: torch.device | str) -> None:
    """Raises BagelMemoryError with the numbers and a precision that would fit when ``estimate`` does not.

    ``available_bytes`` None measures the free memory of ``device`` now.
    """
    if available_bytes is None:
        available_bytes = available_memory(device)
    log.info("Memory plan: %s; %.2f GiB free on %s", estimate.summary(), available_bytes / GiB, device)
    if estimate.total_bytes <= available_bytes:
        return
    fitting = [p for p in ("bf16", "fp8_e4m3fn", "int8", "nf4")
               if estimate.total_by_precision.get(p, math.inf) <= available_bytes]
    if fitting:
        advice = (f"precision {fitting[0]!r} would fit (about "
                  f"{estimate.total_by_precision[fitting[0]] / GiB:.2f} GiB): pass precision={fitting[0]!r} "
                  f"(CLI --precision {fitting[0]})")
    else:
        advice = ("no precision fits this task on this device; free memory (close other programs/models), "
                  "use a smaller image size, or use a device with more memory")
    raise BagelMemoryError(
        f"Not enough memory on {device}: {estimate.summary()} but only {available_bytes / GiB:.2f} GiB is "
        f"free. {advice}.")


def _weight_tensors(module: torch.nn.Module):
    """Every tensor a module keeps for its weights, quantization statistics included."""
    for sub in module.modules():
        yield from sub.parameters(recurse=False)
        yield from sub.buffers(recurse=False)
        weight = getattr(sub, "weight", None)
        state = getattr(weight, "quant_state", None)  # NF4: absmax and the 16-entry code
        if state is not None:
            yield from (t for t in (state.absmax, state.code) if isinstance(t, torch.Tensor))
        for holder in (weight, getattr(sub, "state", None)):  # INT8: row scales, on the weight or the state
            scb = getattr(holder, "SCB", None)
            if isinstance(scb, torch.Tensor):
                yield scb


def measured_weight_bytes(module: torch.nn.Module) -> int:
    """Bytes actually held by ``module``'s weights (shared storages counted once); compare with weight_bytes."""
    seen, total = set(), 0
    for tensor in _weight_tensors(module):
        if tensor.device.type == "meta":
            continue
        key = (tensor.device, tensor.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def process_peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: ``VmHWM`` of /proc/self/status, which belongs to the
    process's own address space. (``getrusage().ru_maxrss`` is carried across ``exec`` from the parent's
    address space, so a subprocess started by a large parent — e.g. pytest holding models — reports the
    parent's peak.) Elsewhere ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not on Windows; only reached where /proc is missing

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
