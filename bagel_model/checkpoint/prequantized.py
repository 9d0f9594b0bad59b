"""Pre-quantized BAGEL folders: save a loaded NF4/INT8/FP8 model, detect such a folder, load it without
re-quantizing.

Layout of a pre-quantized folder (everything a normal folder has, except ``ema.safetensors``):

* ``quantization_config.json`` — the marker: format name/version, precision, weights file, policy, versions.
* ``ema.<precision>.safetensors`` — every ``Bagel`` tensor. A quantized Linear ``<name>`` stores bitsandbytes'
  own serialisation: NF4 ``<name>.weight`` (packed uint8) + ``<name>.weight.absmax`` / ``.quant_map`` /
  ``.quant_state.bitsandbytes__nf4`` (packed metadata); INT8 ``<name>.weight`` (int8) + ``<name>.SCB`` (fp32
  row scales); FP8 ``<name>.weight`` (float8_e4m3fn) + ``<name>.scale_weight`` (fp32 scalar). Biases and every
  other tensor are stored in the precision's storage dtype (bf16).
* ``ae.safetensors``, the JSON configs and the tokenizer files, copied unchanged.

Loading reads only these tensors: no re-quantization, no read of the original 29 GB file.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import BagelCheckpointError, BagelInputError
from ..model.ops import Linear, TorchOps
from .fp8 import Fp8Linear, fill_fp8_linear, fp8_linear_tensors, is_fp8_linear
from .folder import FORMAT_NAME, FORMAT_VERSION, MARKER_FILE, weights_file_name
from .loading import assign_tensors, keys_by_layer, set_submodule
from .quantization import (BITSANDBYTES_PRECISIONS, INT8_OUTLIER_THRESHOLD, NF4_BLOCKSIZE, QUANTIZED_PRECISIONS,
                           _linear_classes, import_bitsandbytes, is_quantized_linear, storage_dtype)
from .tensor_store import open_store, store_header
from .safetensors_writer import write_safetensors

log = logging.getLogger(__name__)

_NF4_STATE_KEY = "weight.quant_state.bitsandbytes__nf4"
_COPIED_FILES = ("llm_config.json", "vit_config.json", "ae_config.json", "ae.safetensors", "vocab.json",
                 "merges.txt", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def quantized_linear_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Stored form of one quantized Linear (bitsandbytes' serialisation, or fp8 + scale), keys relative to
    the module."""
    if is_fp8_linear(module):
        return fp8_linear_tensors(module)
    _, nf4_cls, int8_cls = _linear_classes()
    if isinstance(module, nf4_cls):
        state = module.quant_state()
        tensors = {"weight": module.weight.data}
        for key, value in state.as_dict(packed=True).items():
            # Every layer shares one quant_map tensor; safetensors needs each entry to own its storage.
            tensors["weight." + key] = value.clone()
    elif isinstance(module, int8_cls):
        tensors = {"weight": module.weight.data, "SCB": module.SCB}
    else:
        raise TypeError(f"{type(module).__name__} is not a quantized Linear.")
    if module.bias is not None:
        tensors["bias"] = module.bias.data
    return tensors


def quantized_linear_from_tensors(name: str, tensors: dict[str, torch.Tensor], device: torch.device,
                                  compute_dtype: torch.dtype, operations=TorchOps) -> nn.Module:
    """Rebuilds a quantized Linear from ``quantized_linear_tensors`` output, on ``device``; its class is
    ``operations.castable`` of ours."""
    bias = tensors.get("bias")
    if "scale_weight" in tensors:
        out_features, in_features = tensors["weight"].shape
        module = operations.castable(Fp8Linear)(in_features, out_features, bias=bias is not None, device="meta")
        module.compute_dtype = compute_dtype
        return fill_fp8_linear(module, tensors["weight"].to(device), tensors["scale_weight"].to(device),
                               None if bias is None else bias.to(device))
    bnb, nf4_cls, int8_cls = _linear_classes()
    if _NF4_STATE_KEY in tensors:
        shape = _nf4_shape(tensors)
        stats = {k[len("weight."):]: v for k, v in tensors.items() if k.startswith("weight.")}
        state = bnb.functional.QuantState.from_dict(qs_dict=stats, device=device)
        if state.nested or state.quant_type != "nf4" or state.blocksize != NF4_BLOCKSIZE:
            raise BagelCheckpointError(f"{name} holds a {state.quant_type} state with blocks of {state.blocksize}"
                                       f"{' (nested)' if state.nested else ''}; this version reads NF4 blocks of "
                                       f"{NF4_BLOCKSIZE}. Quantize the original folder again.")
        module = operations.castable(nf4_cls)(shape[1], shape[0], state.dtype, "meta")
        module.compute_dtype = compute_dtype
        module.weight = nn.Parameter(tensors["weight"].to(device), requires_grad=False)
        module.absmax, module.quant_map = state.absmax, state.code
    elif "SCB" in tensors:
        out_features, in_features = tensors["weight"].shape
        module = operations.castable(int8_cls)(in_features, out_features, INT8_OUTLIER_THRESHOLD, "meta")
        module.compute_dtype = compute_dtype
        module.weight = nn.Parameter(tensors["weight"].to(device), requires_grad=False)
        module.SCB = tensors["SCB"].to(device)
    else:
        raise BagelCheckpointError(f"{name} has neither NF4, INT8 nor FP8 quantization tensors.")
    module.bias = None if bias is None else nn.Parameter(bias.to(device), requires_grad=False)
    return module.eval()


def _nf4_shape(tensors: dict) -> tuple[int, int]:
    from bitsandbytes.utils import unpack_tensor_to_dict

    return tuple(unpack_tensor_to_dict(tensors[_NF4_STATE_KEY])["shape"])


def model_tensors_for_saving(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(key, tensor) for every persistent tensor of ``model``, quantized Linears in serialised form."""
    items: list[tuple[str, torch.Tensor]] = []
    quantized_prefixes = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in quantized_prefixes):
            continue
        if is_quantized_linear(module):
            quantized_prefixes.append(name + ".")
            items.extend((f"{name}.{k}", v) for k, v in quantized_linear_tensors(module).items())
            continue
        # The layer's own state dict entries: checkpoint names (PositionTable), persistent buffers only.
        own = [(k, t) for k, t in module.state_dict(keep_vars=True).items() if "." not in k]
        items.extend((f"{name}.{k}" if name else k, t.data) for k, t in own)
    return items


def save_quantized(model: nn.Module, source_folder: str | Path, out_dir: str | Path, precision: str,
                   policy: str = "default") -> Path:
    """Writes a pre-quantized folder for ``model`` (a ``Bagel`` loaded in ``precision``) into ``out_dir``.

    ``source_folder`` is the folder the model was loaded from; its configs, autoencoder and tokenizer files
    are copied. The marker is written last, so a folder whose save was interrupted is never detected as
    pre-quantized.
    """
    if precision not in QUANTIZED_PRECISIONS:
        raise BagelInputError(f"save_quantized needs precision {', '.join(QUANTIZED_PRECISIONS)}, not "
                              f"{precision!r}; load the model with one of them first.")
    source, out_dir = Path(source_folder), Path(out_dir)
    if not source.is_dir():
        raise BagelInputError(f"{source} is a single checkpoint file; a pre-quantized folder copies the configs, "
                              f"tokenizer and autoencoder of a folder. Put the file in a BAGEL folder with "
                              f"those files (or load that folder) and save again.")
    if out_dir.exists() and out_dir.resolve() == source.resolve():
        raise BagelInputError(f"The output folder {out_dir} is the model folder itself; choose a new folder.")
    count = sum(_is_layer_of(module, precision) for module in model.modules())
    if count == 0:
        raise BagelInputError(f"The model holds no {precision} Linear; load it with precision={precision!r} "
                              f"before saving it as a pre-quantized {precision} folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER_FILE).unlink(missing_ok=True)
    weights = out_dir / weights_file_name(precision)
    size = write_safetensors(weights, model_tensors_for_saving(model),
                             metadata={"format": FORMAT_NAME, "precision": precision})
    for name in _COPIED_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
    marker = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "precision": precision,
              "weights_file": weights.name, "policy": policy, "quantized_linears": count,
              "storage_dtype": str(storage_dtype(precision)).removeprefix("torch."),
              "torch_version": torch.__version__, "source_folder": source.name}
    if precision in BITSANDBYTES_PRECISIONS:
        marker["bitsandbytes_version"] = import_bitsandbytes(precision).__version__
    partial = out_dir / (MARKER_FILE + ".partial")
    partial.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    partial.replace(out_dir / MARKER_FILE)
    log.info("Saved %d %s Linears and the rest of the model to %s (%.2f GB)", count, precision, weights,
             size / 1e9)
    return out_dir


def _is_layer_of(module: nn.Module, precision: str) -> bool:
    if precision == "fp8_e4m3fn":
        return is_fp8_linear(module)
    if not is_quantized_linear(module) or is_fp8_linear(module):
        return False
    _, nf4_cls, int8_cls = _linear_classes()
    return isinstance(module, nf4_cls if precision == "nf4" else int8_cls)


_QUANTIZED_SUFFIXES = ("weight", "bias", "SCB", "scale_weight", "weight.absmax", "weight.quant_map",
                       _NF4_STATE_KEY)
_QUANTIZED_MARKS = ("SCB", "scale_weight", _NF4_STATE_KEY)  # a Linear stored with one of these is quantized


def load_prequantized_weights(module: nn.Module, path: Path, device: torch.device, precision: str,
                              compute_dtype: torch.dtype, operations=TorchOps, expected: dict | None = None) -> nn.Module:
    """Fills a meta-device ``Bagel`` from a pre-quantized weights file (strict: every key used, none missing).
    ``expected``: {key: shape} of the full-precision checkpoint (``loading.checkpoint_layout``; default: the
    module's state dict), for the tensors that are not quantized Linears."""
    header = store_header(path)  # a file, or a TensorStore (community fp8/int8 files, checkpoint/formats.py)
    if expected is None:
        expected = {k: tuple(t.shape) for k, t in module.state_dict().items()}
    by_layer = keys_by_layer(expected)
    consumed: set[str] = set()
    try:
        with open_store(path) as reader:
            for name, leaf in list(module.named_modules()):
                prefix = f"{name}." if name else ""
                if isinstance(leaf, Linear) and any(prefix + mark in header for mark in _QUANTIZED_MARKS):
                    keys = [prefix + s for s in _QUANTIZED_SUFFIXES if prefix + s in header]
                    tensors = {k[len(prefix):]: reader.get_tensor(k) for k in keys}
                    set_submodule(module, name, quantized_linear_from_tensors(name, tensors, device,
                                                                              compute_dtype, operations))
                    consumed.update(keys)
                    continue
                attrs = by_layer.get(name, [])
                _assign_plain_tensors(leaf, prefix, attrs, expected, header, reader, device,
                                      storage_dtype(precision), path)
                consumed.update(prefix + attr for attr in attrs)
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        # Errors of the file itself (unreadable, missing key, broken NF4 state); an OOM propagates unchanged.
        if isinstance(exc, (BagelCheckpointError, BagelInputError)):
            raise
        raise BagelCheckpointError(
            f"Reading {path} failed ({exc}); the file is probably corrupt: quantize the original folder "
            f"again with `python -m bagel_model quantize`.") from exc
    unexpected = sorted(set(header) - consumed)
    if unexpected:
        raise BagelCheckpointError(
            f"{path} holds {len(unexpected)} tensor(s) the model does not have, e.g. {unexpected[:3]}; the "
            f"JSON configs next to it do not match it. Quantize the original folder again.")
    return module


def _assign_plain_tensors(leaf: nn.Module, prefix: str, attrs: list[str], expected: dict, header: dict, reader,
                          device: torch.device, dtype: torch.dtype, path: Path) -> None:
    tensors = {}
    for attr in attrs:
        key = prefix + attr
        if key not in header:
            raise BagelCheckpointError(
                f"{path} has no tensor {key}; the file is incomplete. Quantize the original folder again.")
        if tuple(header[key]["shape"]) != tuple(expected[key]):
            raise BagelCheckpointError(
                f"{key} in {path} has shape {tuple(header[key]['shape'])} but the configs need "
                f"{tuple(expected[key])}; the folder mixes files of different models.")
        tensor = reader.get_tensor(key)
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[attr] = tensor.to(device)
    if tensors:
        assign_tensors(leaf, tensors)
