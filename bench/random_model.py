"""A BAGEL with random weights made directly on a device, in a given precision, without any weights file.

The skeleton is built on the meta device (``loading.build_skeleton``), then every leaf module gets random
tensors created on ``build_device`` (a GPU makes 14.6 B values in seconds), the precision's Linears are
quantized there by the core's own factory (``quantization.linear_factory``: the code the loader runs), and the
finished leaf is moved to ``store_device`` (the host, where ComfyUI keeps offloaded weights) at once, so the
build device never holds more than one module. Values follow ``testing``'s random checkpoints: weights
``randn / sqrt(fan_in)``, norm weights ``1 + 0.02 randn``, biases ``0.02 randn``, the real sin-cos tables.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from bagel_model.config import BagelConfig
from bagel_model.checkpoint.loading import build_skeleton, set_submodule
from bagel_model.model.embeddings import sincos_2d_table
from bagel_model.checkpoint.quantization import QUANTIZED_PRECISIONS, linear_factory, storage_dtype
from bagel_model.model.ops import TorchOps


def _random(name: str, shape: tuple, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    if name.endswith("pos_embed"):
        return sincos_2d_table(shape[1], math.isqrt(shape[0])).to(device)
    if len(shape) == 1:
        base = torch.ones(shape, device=device) if name.endswith("weight") else torch.zeros(shape, device=device)
        return base + 0.02 * torch.randn(shape, device=device, generator=generator)
    values = torch.randn(shape, device=device, generator=generator)
    return values.div_(math.sqrt(math.prod(shape[1:])))


def _fill(module: nn.Module, dtype: torch.dtype, build_device: torch.device, store_device: torch.device,
          generator: torch.Generator, factory=None) -> None:
    for name, leaf in list(module.named_modules()):
        own = dict(leaf.named_parameters(recurse=False)) | dict(leaf.named_buffers(recurse=False))
        if not own:
            continue
        tensors = {attr: _random(f"{name}.{attr}", tuple(t.shape), build_device, generator).to(dtype)
                   for attr, t in own.items()}
        replacement = factory(name, leaf, tensors) if factory else None
        if replacement is not None:
            set_submodule(module, name, replacement.to(store_device))
            continue
        params = dict(leaf.named_parameters(recurse=False))
        for attr, tensor in tensors.items():
            tensor = tensor.to(store_device)
            setattr(leaf, attr, nn.Parameter(tensor, requires_grad=False) if attr in params else tensor)


def build_random_model(config: BagelConfig, precision: str, compute_dtype: torch.dtype,
                       build_device: torch.device, store_device: torch.device, seed: int = 0,
                       operations=TorchOps):
    """``(bagel, autoencoder, seconds)``: random weights in ``precision`` (autoencoder fp32) on ``store_device``,
    layers from the ``operations`` namespace (the one a host such as the ComfyUI nodes injects)."""
    start = time.perf_counter()
    generator = torch.Generator(build_device).manual_seed(seed)
    model, vae = build_skeleton(config, operations)
    factory = (linear_factory(precision, compute_dtype, operations=operations, quantize_device=build_device)
               if precision in QUANTIZED_PRECISIONS else None)
    with torch.no_grad():
        _fill(model, storage_dtype(precision), build_device, store_device, generator, factory)
        _fill(vae, torch.float32, build_device, store_device, generator)
    if build_device.type == "cuda":
        torch.cuda.synchronize(build_device)
    return model.eval(), vae.eval(), time.perf_counter() - start
