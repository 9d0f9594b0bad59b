"""Streams the weights of any ``CheckpointSource`` (formats.py) into a meta-device skeleton.

Full-precision weights (any file layout, GGUF dequantized per tensor) go through ``load_module_weights`` with
the precision's converter or quantizer, as the official folder does; weights stored quantized (our pre-quantized
folders, community FP8/INT8 files) are read as stored into our streamable layers by
``load_prequantized_weights`` — nothing is re-quantized and nothing passes through bf16 on the device.
"""
from __future__ import annotations

import logging

import torch

from ..errors import BagelCheckpointError, BagelInputError
from ..model.ops import Linear, TorchOps
from .community_quant import CommunityQuantStore
from .dfloat11 import refuse_dfloat11
from .formats import DFLOAT11, GGUF, CheckpointSource
from .loading import build_skeleton, checkpoint_layout, load_module_weights
from .prequantized import load_prequantized_weights
from .quantization import QUANTIZED_PRECISIONS, linear_factory, storage_dtype

log = logging.getLogger(__name__)


def check_source_precision(source: CheckpointSource, precision: str) -> None:
    """Refuses a precision the stored weights cannot give (a file stored in fp8 cannot load as nf4), and DF11."""
    if source.kind == DFLOAT11:
        refuse_dfloat11(source.path, torch.cuda.is_available())
    if source.marker is not None and source.held_precision != precision:
        raise BagelInputError(
            f"{source.path} is a pre-quantized {source.held_precision} folder; load it with "
            f"precision={source.held_precision!r}, or load the original BAGEL folder to use {precision}.")
    if source.held_precision is not None and source.held_precision != precision:
        raise BagelInputError(
            f"{source.path} stores its weights in {source.held_precision} ({source.describe()}); load it with "
            f"precision={source.held_precision!r} (or auto), or load the bf16 checkpoint to use {precision}.")
    if source.ae_path is None or not source.ae_path.is_file():
        raise BagelCheckpointError(f"The autoencoder {source.ae_path} of {source.path} is missing; copy "
                                   f"ae.safetensors from ByteDance-Seed/BAGEL-7B-MoT there.")


def load_source(source: CheckpointSource, config, precision: str, device: torch.device,
                compute_dtype: torch.dtype, *, policy: str = "default", operations=TorchOps,
                compute_device: torch.device | None = None):
    """``(bagel, autoencoder)`` of ``source`` on ``device`` in ``precision`` (checked by the caller)."""
    model, vae = build_skeleton(config, operations)
    # The keys a checkpoint must hold are the core layout's: a host's layers may be built without tensors.
    model_keys, vae_keys = checkpoint_layout(config)
    # One plain file is read by path, exactly as before formats existed; other layouts through their store.
    plain = source.marker is not None or (len(source.weights) == 1 and not source.prefix and source.kind != GGUF)
    store = source.weights[0] if plain else source.store()
    if source.held_precision is not None:
        if source.marker is None:
            linears = {name for name, module in model.named_modules() if isinstance(module, Linear)}
            store = CommunityQuantStore(source.store(), source.held_precision, linears)
        load_prequantized_weights(model, store, device, precision, compute_dtype, operations, model_keys)
    else:
        factory = (linear_factory(precision, compute_dtype, policy, operations=operations,
                                  quantize_device=compute_device or device)
                   if precision in QUANTIZED_PRECISIONS else None)
        if source.kind == GGUF:
            log.info("Dequantizing %s (tensor types %s) to %s while loading", source.path,
                     source.store().tensor_types(), storage_dtype(precision))
        load_module_weights(model, store, device, storage_dtype(precision), factory, model_keys)
    load_module_weights(vae, source.ae_path, device, torch.float32, expected=vae_keys)
    return model.eval(), vae.eval()
