"""Strict, streamed loading of a BAGEL folder onto a skeleton built on the meta device.

``ema.safetensors`` is memory-mapped and read module by module: each tensor is converted (or handed to a
quantizer) and moved to its device at once, so the full state dict never exists in host memory.

The keys a folder must hold are those of the core skeleton (``TorchOps`` layers: ``checkpoint_layout``), not
of the skeleton being filled: a host's layers may be built without tensors until they are loaded (ComfyUI's
ops under Dynamic VRAM). Each layer receives its tensors with ``load_state_dict(..., assign=True)``, so a layer
class decides how it takes them (the host's lazy layers, ``PositionTable``'s checkpoint name).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..config import BagelConfig
from ..errors import BagelCheckpointError
from ..model.autoencoder import AutoEncoder
from ..model.bagel import Bagel
from ..model.ops import TorchOps
from .folder import AE_FILE, WEIGHTS_FILE, read_config
from .tensor_store import store_header

log = logging.getLogger(__name__)

# (qualified module name, module, its tensors already on the target device) -> replacement module or None.
LinearFactory = Callable[[str, nn.Module, dict], "nn.Module | None"]


def build_skeleton(config: BagelConfig, operations=TorchOps) -> tuple[Bagel, AutoEncoder]:
    """Both modules with every parameter on the meta device (no memory, no random init), their layers taken
    from the ``operations`` namespace."""
    with torch.device("meta"):
        return Bagel(config, operations), AutoEncoder(config.ae, operations)


@functools.lru_cache(maxsize=8)
def checkpoint_layout(config: BagelConfig) -> tuple[dict, dict]:
    """``({key: shape} of ema.safetensors, {key: shape} of ae.safetensors)`` for ``config``: the state dicts of
    the core skeleton. Treat the dicts as read-only (cached)."""
    model, vae = build_skeleton(config)
    return ({k: tuple(t.shape) for k, t in model.state_dict().items()},
            {k: tuple(t.shape) for k, t in vae.state_dict().items()})


def check_keys(expected: dict, header: dict, path: Path) -> None:
    """Raises naming the first missing/unexpected key or wrong shape; the folder is in the message.
    ``expected``: {key: shape} (``checkpoint_layout``)."""
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    for name in sorted(set(expected) & set(header)):
        if tuple(header[name]["shape"]) != tuple(expected[name]):
            problems.append(f"{name} has shape {tuple(header[name]['shape'])} but the configs in "
                            f"{path.parent} need {tuple(expected[name])}")
            break
    if problems:
        raise BagelCheckpointError(
            f"{path} does not match the model described by the JSON configs in {path.parent}: "
            + "; ".join(problems) + ". Check that every file of the folder comes from the same BAGEL download.")


def keys_by_layer(keys) -> dict[str, list[str]]:
    """{layer name: [attribute key, ...]} of checkpoint keys ``<layer>.<attr>``."""
    layers: dict[str, list[str]] = {}
    for key in keys:
        layer, _, attr = key.rpartition(".")
        layers.setdefault(layer, []).append(attr)
    return layers


def assign_tensors(layer: nn.Module, tensors: dict) -> None:
    """Gives ``layer`` its tensors (keys relative to the layer, checkpoint names), by assignment: no copy, the
    layer class maps names and builds what it built lazily. Strict; never trained, so no gradients."""
    layer.load_state_dict(tensors, strict=True, assign=True)
    for param in layer.parameters(recurse=False):
        param.requires_grad_(False)


def load_module_weights(module: nn.Module, path: Path, device: torch.device, dtype: torch.dtype | None,
                        linear_factory: LinearFactory | None = None, expected: dict | None = None) -> nn.Module:
    """Fills a meta-device ``module`` from ``path`` (strict). Returns the (possibly replaced) module.

    ``expected``: {key: shape} the file must hold (default: ``module``'s own state dict, which is right for a
    skeleton of core layers). Float tensors are converted to ``dtype`` (None keeps the stored dtype). Each
    layer's tensors are read together so a ``linear_factory`` (quantization) can replace a whole Linear at once.
    """
    header = store_header(path)  # a file, or a TensorStore (shards, renamed or converted checkpoints)
    if expected is None:
        expected = {k: tuple(t.shape) for k, t in module.state_dict().items()}
    check_keys(expected, header, path)
    by_layer = keys_by_layer(expected)
    unfilled = set(by_layer)
    try:
        for name, leaf in list(module.named_modules()):
            attrs = by_layer.get(name)
            if not attrs:
                continue
            unfilled.discard(name)
            # One mapping per module: get_tensor returns views into a private mapping of the whole file and
            # every page read stays resident while the mapping lives, so a single mapping for the whole load
            # would grow the host RSS to the file size (29 GB) even when the weights go to a GPU or get
            # quantized. Closing it after each module keeps the host footprint at one module's tensors.
            with _open(path) as reader:
                tensors = {k: _convert(reader.get_tensor(_key(name, k)), device, dtype) for k in attrs}
            replacement = linear_factory(name, leaf, tensors) if linear_factory else None
            if replacement is not None:
                set_submodule(module, name, replacement)
                continue
            assign_tensors(leaf, tensors)
    except (OSError, SafetensorError) as exc:  # the file itself; anything else (an OOM) propagates unchanged
        if isinstance(exc, BagelCheckpointError):
            raise
        raise BagelCheckpointError(
            f"Reading {path} failed ({exc}); the file is probably corrupt: delete it and download it again.") \
            from exc
    if unfilled:  # the skeleton lacks layers the checkpoint layout has: a host namespace built another model
        raise BagelCheckpointError(f"The model built for {path} has no layer(s) {sorted(unfilled)[:3]}; the "
                                   f"layer classes passed as `operations` do not build BAGEL's modules.")
    return module


def _open(weights):
    """A reader of one safetensors file (a path) or of a TensorStore (checkpoint/tensor_store.py)."""
    return safe_open(str(weights), framework="pt", device="cpu") if isinstance(weights, (str, Path)) \
        else weights.reader()


def _key(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def _convert(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    mapped = tensor
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    tensor = tensor.to(device)
    # Still a view into the file mapping (same dtype, CPU target): own the bytes so the mapping can close.
    return tensor.clone() if tensor is mapped else tensor


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def required_files(folder: Path) -> None:
    for name in (WEIGHTS_FILE, AE_FILE):
        if not (folder / name).is_file():
            raise BagelCheckpointError(
                f"{name} is missing in the model folder {folder}. Download ByteDance-Seed/BAGEL-7B-MoT "
                f"completely (about 29 GB) into this folder, or choose another folder.")


def load_bagel(folder: str | Path, device: torch.device, dtype: torch.dtype,
               linear_factory: LinearFactory | None = None,
               operations=TorchOps) -> tuple[BagelConfig, Bagel, AutoEncoder]:
    """Builds and strictly loads the model and the autoencoder (kept in fp32, as the official app does)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BagelCheckpointError(f"Model folder {folder} does not exist.")
    config = read_config(folder)
    required_files(folder)
    model, vae = build_skeleton(config, operations)
    model_keys, vae_keys = checkpoint_layout(config)
    log.info("Loading %s to %s as %s", folder / WEIGHTS_FILE, device, dtype)
    load_module_weights(model, folder / WEIGHTS_FILE, device, dtype, linear_factory, model_keys)
    load_module_weights(vae, folder / AE_FILE, device, torch.float32, expected=vae_keys)
    return config, model.eval(), vae.eval()
