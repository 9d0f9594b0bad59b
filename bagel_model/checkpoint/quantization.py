"""Weight precisions, the choice of which Linears are quantized, and the bitsandbytes NF4 / INT8 Linears.

Precisions: ``bf16``, ``fp16``, ``fp32`` store every tensor in that dtype; ``nf4`` and ``int8`` store the Linears
selected by the quantization policy with bitsandbytes (``Linear4bit`` NF4, ``Linear8bitLt`` LLM.int8 with
outlier threshold 6.0), ``fp8_e4m3fn`` stores them as float8 with a per-tensor scale (``fp8.py``, plain
torch), and all three keep every other tensor in bf16, the dtype of ``ema.safetensors`` (lossless, and half of
the fp32 the official INT8 mode uses for them).

Policy (see docs/quantization.md for the measurements behind it): the decoder Linears of both experts (98.6 %
of the parameters that are Linear weights) and the SigLIP encoder Linears are quantized. ``lm_head``, the
connector, the time embedder, ``vae2llm`` / ``llm2vae`` and the ViT patch Linear stay in full precision: they
are small (lm_head aside, 31 M parameters in total) and sit where an error is not averaged away (the logits
that pick each text token, the velocity the sampler integrates, the image features entering the LM).

bitsandbytes is imported lazily: the full-precision paths never need it.
"""
from __future__ import annotations

import functools
import logging
import re

import torch
from torch import nn

from ..errors import BagelInputError
from ..model.ops import CastAtUse, Linear, TorchOps
from .fp8 import Fp8Linear, is_fp8_linear, make_fp8_linear

log = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp16", "fp32", "nf4", "int8", "fp8_e4m3fn")
QUANTIZED_PRECISIONS = ("nf4", "int8", "fp8_e4m3fn")  # the policy's Linears are stored in a smaller format
BITSANDBYTES_PRECISIONS = ("nf4", "int8")
# 0.48 is the first release whose NF4 and INT8 Linears both run on the CPU backend, but 0.48.x and 0.49.x read
# the NF4 weight in the wrong orientation there (relative error ~1.5 on a square layer, a shape error on the
# others; measured with 0.49.2 on the CPU). 0.50.0 and 0.50.2 are right (measured).
MIN_BITSANDBYTES = (0, 50, 0)
# The load probe: a non-square Linear (a square one hides a transposed weight) and the largest relative error
# of its output against the full-precision product that a correct build stays under (measured on the CPU:
# NF4 0.086-0.090, INT8 0.009 for Gaussian weights; a transposed NF4 weight gives ~1.5).
PROBE_SHAPE = (48, 128)
PROBE_MAX_ERROR = {"nf4": 0.25, "int8": 0.05}
NF4_BLOCKSIZE = 64
INT8_OUTLIER_THRESHOLD = 6.0

_STORAGE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                   "nf4": torch.bfloat16, "int8": torch.bfloat16, "fp8_e4m3fn": torch.bfloat16}

# Module groups, by qualified module name inside ``Bagel`` (attribute names equal the checkpoint keys).
_GROUP_PATTERNS = {
    "decoder": r"language_model\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj(_moe_gen)?"
               r"|mlp(_moe_gen)?\.(gate|up|down)_proj)",
    "vit": r"vit_model\.vision_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])",
    "vit_patch": r"vit_model\.vision_model\.embeddings\.patch_embedding",
    "lm_head": r"language_model\.lm_head",
    "connector": r"connector\.fc[12]",
    "time_embedder": r"time_embedder\.mlp\.\d+",
    "latent_io": r"vae2llm|llm2vae",
}
_GROUP_REGEX = {group: re.compile(pattern + r"$") for group, pattern in _GROUP_PATTERNS.items()}

# "default" is ours; "all-linear" is what the official NF4/INT8 modes do (every nn.Linear of Bagel).
POLICIES = {
    "default": frozenset({"decoder", "vit"}),
    "all-linear": frozenset(_GROUP_PATTERNS),
}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise BagelInputError(
            f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)} "
            f"(nf4/int8 need the bitsandbytes package; 'auto' is resolved by the loader before this check).")
    return precision


def storage_dtype(precision: str) -> torch.dtype:
    """Dtype of every tensor that is not a quantized Linear weight."""
    return _STORAGE_DTYPES[check_precision(precision)]


def module_group(module_name: str) -> str | None:
    """The policy group a Linear belongs to, or None for a name that is no known Linear."""
    for group, regex in _GROUP_REGEX.items():
        if regex.match(module_name):
            return group
    return None


def should_quantize(module_name: str, precision: str, policy: str = "default") -> bool:
    """True when ``module_name`` (a Linear of ``Bagel``) is stored quantized (bitsandbytes or fp8) in this
    precision."""
    if check_precision(precision) not in QUANTIZED_PRECISIONS:
        return False
    if policy not in POLICIES:
        raise BagelInputError(f"Unknown quantization policy {policy!r}; use one of {', '.join(POLICIES)}.")
    return module_group(module_name) in POLICIES[policy]


class _DropMessages(logging.Filter):
    """Drops bitsandbytes log lines that are expected with our settings and would only alarm users."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(fragment in message for fragment in self.fragments)


@functools.lru_cache(maxsize=None)
def _silence_expected_bitsandbytes_logs() -> None:
    # LLM.int8 casts fp32/bf16 activations to fp16 by design and logs it on every call.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(
        _DropMessages("MatMul8bitLt: inputs will be cast"))
    # The optional "kernels" hub package only speeds up the AVX512-BF16 repacked path, which we do not use.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        _DropMessages("Failed to load CPU gemm_4bit_forward"))


def import_bitsandbytes(precision: str):
    """Imports bitsandbytes, or raises an error that says how to install a version that works."""
    _silence_expected_bitsandbytes_logs()
    try:
        import bitsandbytes
    except ImportError as exc:
        raise BagelInputError(
            f"precision={precision!r} needs the bitsandbytes package, which is not installed: run "
            f"`pip install bitsandbytes>=0.50` (tested with 0.50.0 and 0.50.2), or use precision='bf16'/'fp16'.") \
            from exc
    version = tuple(int(p) for p in re.findall(r"\d+", bitsandbytes.__version__)[:3])
    if version < MIN_BITSANDBYTES:
        raise BagelInputError(
            f"precision={precision!r} needs bitsandbytes >= 0.50 (0.48/0.49 compute NF4 Linears with a wrongly "
            f"oriented weight); {bitsandbytes.__version__} is installed: run `pip install -U 'bitsandbytes>=0.50'`.")
    return bitsandbytes


@functools.lru_cache(maxsize=None)
def _linear_classes():
    """The two quantized Linear classes, defined once bitsandbytes is importable.

    Both keep every tensor they need as a parameter or buffer of their own (NF4: packed weight, block scales,
    code; INT8: int8 weight and ``SCB`` row scales), so ``module.to(device)`` moves all of their memory (the
    bitsandbytes modules keep some in side objects), and both read those tensors on the input's device per call
    (the ops.CastAtUse contract): ``weight`` and ``bias`` through ``use_weights``, which a host overrides to
    stream them with its own transfer code (ComfyUI's cast: ``operations.castable``), the side tensors through
    ``fetch``. A host's cast moves only ``weight``/``bias``; the side tensors are small next to the weight for
    INT8 (one fp32 per row) but 1/8 of the packed weight for NF4 (one fp32 per 64 values): a host that keeps
    buffers resident (ComfyUI's Dynamic VRAM) keeps those.
    """
    bnb = import_bitsandbytes("nf4")

    class NF4Linear(CastAtUse, nn.Module):
        """NF4 Linear (bitsandbytes' ``matmul_4bit``, blocks of ``NF4_BLOCKSIZE``) with the ops.Linear contract:
        input cast to ``compute_dtype``, output in it. The packed weight, the block scales (``absmax``) and the
        16-value code (``quant_map``) are plain tensors of the module; the ``QuantState`` is built per call.

        Not ``Linear4bit``: its forward repacks the weight for AVX512-BF16 CPUs on first use (rounding absmax
        to bf16 and computing in bf16 whatever the compute dtype) and converts the stored bias in place, and
        its ``Params4bit`` keeps the scales in a side object that moving to some devices (meta) cannot handle.
        """

        compute_dtype: torch.dtype = torch.float32
        ledger_precision = "nf4"

        def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.bfloat16,
                     device=None):
            super().__init__()
            self.in_features, self.out_features, self.weight_dtype = in_features, out_features, dtype
            values = in_features * out_features
            self.weight = nn.Parameter(torch.empty(((values + 1) // 2, 1), dtype=torch.uint8, device=device),
                                       requires_grad=False)
            self.register_buffer("absmax", torch.empty(-(-values // NF4_BLOCKSIZE), dtype=torch.float32,
                                                       device=device))
            self.register_buffer("quant_map", torch.empty(16, dtype=torch.float32, device=device))
            self.bias = None

        def quant_state(self, device: torch.device | None = None):
            """bitsandbytes' state of this weight (``weight_dtype``: the dtype it was quantized from), on ``device``."""
            device = device or self.absmax.device
            return bnb.functional.QuantState(
                absmax=self.fetch("absmax", device), shape=torch.Size((self.out_features, self.in_features)),
                code=self.fetch("quant_map", device), blocksize=NF4_BLOCKSIZE, quant_type="nf4",
                dtype=self.weight_dtype)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.to(self.compute_dtype)
            with self.use_weights(x, None, x.dtype) as (weight, bias):
                return bnb.matmul_4bit(x, weight, bias=bias, quant_state=self.quant_state(x.device))

    class Int8Linear(CastAtUse, nn.Module):
        """LLM.int8 Linear (bitsandbytes' matmul, outlier threshold ``threshold``) with the ops.Linear
        contract. Unlike ``Linear8bitLt`` it keeps no tensors in a matmul state object (which ``.to()`` of a
        parent module does not move, so an offloaded model kept its device copy); the state is built per
        call from the module's own ``weight`` and ``SCB``."""

        compute_dtype: torch.dtype = torch.float32
        ledger_precision = "int8"

        def __init__(self, in_features: int, out_features: int, threshold: float, device=None):
            super().__init__()
            self.in_features, self.out_features, self.threshold = in_features, out_features, threshold
            self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                                       requires_grad=False)
            self.register_buffer("SCB", torch.empty(out_features, dtype=torch.float32, device=device))
            self.bias = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.to(self.compute_dtype)
            with self.use_weights(x, None, x.dtype) as (weight, bias):
                state = bnb.MatmulLtState()
                state.CB, state.SCB = weight, self.fetch("SCB", x.device)
                state.threshold, state.has_fp16_weights, state.is_training = self.threshold, False, False
                out = bnb.matmul(x, state.CB, bias=bias, state=state)
            return out.to(self.compute_dtype)

    return bnb, NF4Linear, Int8Linear


def is_quantized_linear(module: nn.Module) -> bool:
    """An NF4, INT8 or FP8 layer made by the loader (never a plain ``ops.Linear``)."""
    if is_fp8_linear(module):
        return True
    if not any(type(module).__name__ == n for n in ("NF4Linear", "Int8Linear")):
        return False
    _, nf4_cls, int8_cls = _linear_classes()
    return isinstance(module, (nf4_cls, int8_cls))


# bitsandbytes' CPU quantizers make ~17 bytes of temporaries per value (fp32 copy, scaled values, int32
# bucket ids); for a 68 M-value decoder MLP weight that is 1.1 GB at once, and the freed blocks fragment the
# heap. Quantizing slices of this many values gives the same bytes (NF4 blocks and INT8 rows are
# independent) with ~70 MB of temporaries.
_CPU_CHUNK_VALUES = 1 << 22


def _nf4_cpu(bnb, weight: torch.Tensor):
    """NF4 packed values and state of ``weight`` quantized slice by slice; equal to ``quantize_4bit`` at once."""
    flat = weight.reshape(-1)
    total = flat.numel()
    step = max(NF4_BLOCKSIZE, _CPU_CHUNK_VALUES // NF4_BLOCKSIZE * NF4_BLOCKSIZE)  # whole blocks, even length
    packed = torch.empty(((total + 1) // 2, 1), dtype=torch.uint8)
    absmax = torch.empty(-(-total // NF4_BLOCKSIZE), dtype=torch.float32)
    for start in range(0, total, step):
        chunk_packed, chunk_state = bnb.functional.quantize_4bit(
            flat[start:start + step].contiguous(), blocksize=NF4_BLOCKSIZE, compress_statistics=False,
            quant_type="nf4")
        packed[start // 2:start // 2 + chunk_packed.shape[0]] = chunk_packed
        absmax[start // NF4_BLOCKSIZE:start // NF4_BLOCKSIZE + chunk_state.absmax.numel()] = chunk_state.absmax
    state = bnb.functional.QuantState(absmax=absmax, shape=weight.shape, code=chunk_state.code,
                                      blocksize=NF4_BLOCKSIZE, quant_type="nf4", dtype=weight.dtype)
    return packed, state


def _int8_cpu(bnb, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 values and row scales of ``weight`` quantized rows at a time; equal to ``Int8Params._quantize("cpu")``."""
    out_features, in_features = weight.shape
    rows = max(1, _CPU_CHUNK_VALUES // in_features)
    values = torch.empty(out_features, in_features, dtype=torch.int8)
    scales = torch.empty(out_features, dtype=torch.float32)
    for start in range(0, out_features, rows):
        chunk_values, chunk_scales, _ = bnb.functional.int8_vectorwise_quant(
            weight[start:start + rows].contiguous().to(torch.float16))
        values[start:start + rows] = chunk_values
        scales[start:start + rows] = chunk_scales
    return values, scales


def make_quantized_linear(name: str, weight: torch.Tensor, bias: torch.Tensor | None, precision: str,
                          device: torch.device | str, compute_dtype: torch.dtype, *, operations=TorchOps,
                          store_on: torch.device | str | None = None) -> nn.Module:
    """Quantizes one Linear's (weight, bias) on ``device`` and returns the bitsandbytes module, kept on
    ``store_on`` (default: ``device``). Its class is ``operations.castable`` of ours.

    The weight is moved to ``device`` first so a CUDA target quantizes on the GPU and the host never holds
    more than this one tensor. The bias is kept in the storage dtype of the precision (bf16).
    """
    bnb, nf4_cls, int8_cls = _linear_classes()
    device = torch.device(device)
    out_features, in_features = weight.shape
    weight = weight.to(device)
    bias = None if bias is None else nn.Parameter(bias.to(device, storage_dtype(precision)), requires_grad=False)
    try:
        if precision == "nf4":
            module = operations.castable(nf4_cls)(in_features, out_features, weight.dtype, "meta")
            module.compute_dtype = compute_dtype
            if device.type == "cpu":
                packed, state = _nf4_cpu(bnb, weight)
            else:
                packed, state = bnb.functional.quantize_4bit(weight.contiguous(), blocksize=NF4_BLOCKSIZE,
                                                             compress_statistics=False, quant_type="nf4")
            module.weight = nn.Parameter(packed, requires_grad=False)
            module.absmax, module.quant_map = state.absmax, state.code
        elif precision == "int8":
            module = operations.castable(int8_cls)(in_features, out_features, INT8_OUTLIER_THRESHOLD, "meta")
            module.compute_dtype = compute_dtype
            if device.type == "cpu":
                values, scales = _int8_cpu(bnb, weight)
            else:
                values, scales, _ = bnb.functional.int8_vectorwise_quant(weight.contiguous().to(torch.float16))
            module.weight = nn.Parameter(values, requires_grad=False)
            module.SCB = scales
        else:
            raise BagelInputError(f"make_quantized_linear got precision {precision!r}; only nf4/int8 quantize.")
    except RuntimeError as exc:  # includes "not implemented for this device" errors (a subclass)
        if isinstance(exc, torch.OutOfMemoryError):  # out of memory, not a bitsandbytes problem: keep it
            raise
        raise BagelInputError(
            f"bitsandbytes could not quantize {name} to {precision} on {device} ({exc}). Install a "
            f"bitsandbytes build for this device (`pip install -U bitsandbytes`) or use precision='bf16'.") \
            from exc
    module.bias = bias
    return module.eval() if store_on is None else module.to(store_on).eval()


def linear_factory(precision: str, compute_dtype: torch.dtype, policy: str = "default", *, operations=TorchOps,
                   quantize_device: torch.device | None = None):
    """Adapter for ``loading.load_module_weights``: (name, module, tensors on device) -> replacement or None.

    ``quantize_device`` (default: where the tensors arrive) is where bitsandbytes quantizes; the result is kept
    where the tensors arrived (a GPU quantizes a host-resident model one Linear at a time). FP8 is quantized
    where the tensors arrive (plain torch, cheap anywhere); its class is ``operations.castable(Fp8Linear)``."""

    def factory(name: str, module: nn.Module, tensors: dict) -> nn.Module | None:
        if not isinstance(module, Linear) or not should_quantize(name, precision, policy):
            return None
        if precision == "fp8_e4m3fn":
            return make_fp8_linear(tensors["weight"], tensors.get("bias"), compute_dtype,
                                   operations.castable(Fp8Linear))
        home = tensors["weight"].device
        return make_quantized_linear(name, tensors["weight"], tensors.get("bias"), precision,
                                     quantize_device or home, compute_dtype, operations=operations, store_on=home)

    return factory


def probe_device(precision: str, device: torch.device | str, compute_dtype: torch.dtype) -> None:
    """Quantizes and runs a small non-square Linear on ``device`` and checks its output against the full-precision
    product, so an unsupported setup or a wrong bitsandbytes build fails before the big read."""
    if precision not in BITSANDBYTES_PRECISIONS:
        return
    out_features, in_features = PROBE_SHAPE
    weight = torch.randn(PROBE_SHAPE, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    x = torch.randn(3, in_features, generator=torch.Generator().manual_seed(1))
    module = make_quantized_linear("probe", weight, None, precision, device, compute_dtype)
    version = getattr(_linear_classes()[0], "__version__", "?")
    try:
        with torch.no_grad():
            out = module(x.to(device, compute_dtype))
    except RuntimeError as exc:  # includes "not implemented for this device" errors (a subclass)
        if isinstance(exc, torch.OutOfMemoryError):  # out of memory, not a bitsandbytes problem: keep it
            raise
        raise BagelInputError(
            f"The installed bitsandbytes {version} cannot run a {out_features}x{in_features} {precision} Linear on "
            f"{device} with compute dtype {compute_dtype} ({exc}). Install a bitsandbytes build for this device "
            f"(`pip install -U 'bitsandbytes>=0.50'`), pick another compute dtype, or use precision='bf16'.") \
            from exc
    if out.dtype != compute_dtype or out.shape != (3, out_features) or not torch.isfinite(out).all():
        raise BagelInputError(
            f"bitsandbytes {version} {precision} on {device} returned {out.dtype} {tuple(out.shape)} / non-finite "
            f"values for a test Linear; use precision='bf16' or update bitsandbytes (>= 0.50).")
    reference = x @ weight.float().T
    error = float((out.float().cpu() - reference).norm() / reference.norm())
    if error > PROBE_MAX_ERROR[precision]:
        raise BagelInputError(
            f"bitsandbytes {version} computes wrong {precision} results on {device}: relative error {error:.2f} "
            f"on a {out_features}x{in_features} test Linear (a correct build stays under "
            f"{PROBE_MAX_ERROR[precision]}; 0.48/0.49 read NF4 weights transposed). Install "
            f"`pip install -U 'bitsandbytes>=0.50'` or use precision='bf16'/'fp8_e4m3fn'.")
