"""Loader node: a checkpoint folder from models/bagel + a precision -> BAGEL_MOT_MODEL."""
import importlib.util
import logging
import os

import torch

import comfy.model_management as mm

from bagel_model.checkpoint.dfloat11 import dfloat11_problem
from bagel_model.checkpoint.folder_check import describe_problems, incomplete_files
from bagel_model.checkpoint.formats import DFLOAT11, describe_checkpoint
from bagel_model.checkpoint.quantization import storage_dtype
from bagel_model.devices import resolve_compute_dtype
from bagel_model.errors import BagelCheckpointError

from . import model_folders
from .comfy_ops import bagel_operations
from .compute_dtype import comfy_compute_dtype
from .download import download_checkpoint
from .memory_check import check_fits
from .comfy_model.text_encoder import bagel_clip
from .model_handle import MODEL_TYPE, BagelMoTModel
from .precision_choice import AUTO, resolve_precision
from .vae_bridge import checkpoint_vae

logger = logging.getLogger(__name__)

# New choices are appended (saved workflows store the value, not the index, but the order is what users see).
PRECISIONS = ("bf16", "fp16", "fp32", "nf4", "int8", "fp8_e4m3fn", AUTO)
QUANTIZED = ("nf4", "int8")  # need bitsandbytes
QUANTIZE_ROOM_BYTES = 2 * 1024 ** 3  # bitsandbytes quantizes one Linear on the GPU: weight + fp16 copy + result
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _precision_problem(precision) -> str | None:
    if precision is None:
        return None
    if precision not in PRECISIONS:
        return f"precision '{precision}' is not one of {', '.join(PRECISIONS)}."
    if precision in QUANTIZED and importlib.util.find_spec("bitsandbytes") is None:
        return (
            f"precision '{precision}' needs the bitsandbytes package; install it with "
            "'python -m pip install bitsandbytes' in ComfyUI's Python, or pick bf16/fp16."
        )
    return None


def _folder_problem(model_folder, download_if_missing, precision=None) -> str | None:
    """What keeps ``model_folder`` from loading. ``download_if_missing`` None means "not known yet": at
    validation only model_folder is seen (see VALIDATE_INPUTS), so a missing or incomplete download folder is
    left to the run, which knows the switch."""
    if model_folder is None:
        return None
    may_download = model_folder == model_folders.DOWNLOAD_FOLDER_NAME and download_if_missing is not False
    path = model_folders.find_model_folder(model_folder) or model_folders.find_partial_folder(model_folder)
    if path is None:
        return None if may_download else model_folders.missing_folder_message(model_folder)
    problems = incomplete_files(path) if os.path.isdir(path) else {}
    if problems:
        return None if may_download else model_folders.incomplete_folder_message(model_folder, path,
                                                                                  describe_problems(problems))
    return _format_problem(path, model_folder, precision)


def _format_problem(path: str, model_folder: str, precision) -> str | None:
    """What keeps a checkpoint of another format from loading (a single file's missing tokenizer or
    autoencoder, a DFloat11 folder, a precision its stored weights cannot give), found from headers only."""
    try:
        source = describe_checkpoint(path, model_folders.vae_dirs())
    except BagelCheckpointError as exc:
        return str(exc)
    if source.kind == DFLOAT11:
        return dfloat11_problem(source.path, torch.cuda.is_available())
    if source.held_precision and precision not in (None, AUTO, source.held_precision):
        return (f"BAGEL '{model_folder}' stores its weights in {source.held_precision}; choose precision "
                f"'{source.held_precision}' or 'auto' for it, or a bf16 checkpoint for '{precision}'.")
    return None


class BagelMoTModelLoader:
    DESCRIPTION = (
        "Loads a BAGEL-7B-MoT checkpoint folder from models/bagel. ComfyUI moves it to the GPU "
        "when a BAGEL node runs and offloads it when other models need the memory."
    )
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = (MODEL_TYPE, "VAE", "MODEL", "CLIP")
    RETURN_NAMES = ("bagel_model", "vae", "model", "clip")
    OUTPUT_TOOLTIPS = ("The loaded BAGEL model.",
                       "The checkpoint's own FLUX autoencoder as a core VAE, for VAE Decode/Encode of the "
                       "LATENT outputs (the same as loading its ae.safetensors with Load VAE).",
                       "The same BAGEL weights as a ComfyUI MODEL for KSampler, SamplerCustomAdvanced, guiders, "
                       "LoRA loaders and model patches (FLUX latents, flow sampling with shift 3).",
                       "BAGEL's tokenizer as a CLIP for the stock CLIP Text Encode: the prompt is read into the "
                       "context by the MODEL once per run; the empty string is the context without text.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_folder": (model_folders.dropdown_choices(), {
                    "tooltip": "A checkpoint in models/bagel (or a 'bagel' path from extra_model_paths.yaml): "
                               "a folder (official, fine-tune, sharded, pre-quantized), 'folder/file' for "
                               "another weights file in a folder (e.g. ema-FP8.safetensors), or a single "
                               ".safetensors/.gguf file (its FLUX ae.safetensors from models/vae). The log "
                               "names the format, precision and every file read."}),
                "precision": (list(PRECISIONS), {
                    "default": AUTO,
                    "tooltip": "Weight format. auto picks the best that runs on this GPU (bf16, then "
                               "fp8_e4m3fn, int8, nf4; the log says why) and keeps a pre-quantized folder's "
                               "own format. bf16 is the reference; fp8_e4m3fn halves it; nf4 and int8 need "
                               "the bitsandbytes package."}),
                "download_if_missing": ("BOOLEAN", {
                    "default": False,
                    "label_on": "download from Hugging Face",
                    "label_off": "never download",
                    "tooltip": f"Download {model_folders.HF_REPO_ID} (~29 GB) into models/bagel/"
                               f"{model_folders.DOWNLOAD_FOLDER_NAME} when that folder is selected "
                               "and missing."}),
            }
        }

    # Only model_folder: ComfyUI repeats a VALIDATE_INPUTS message once for every argument it takes, so one
    # mistake would show as one error per argument. precision and download_if_missing keep ComfyUI's own
    # checks here; what depends on them (bitsandbytes, a stored precision, the download switch) is checked
    # first thing in load(), before any weight is read.
    @classmethod
    def VALIDATE_INPUTS(cls, model_folder=None):
        return _folder_problem(model_folder, download_if_missing=None) or True

    def load(self, model_folder, precision, download_if_missing=False):
        handle, vae = load_bagel(model_folder, precision, download_if_missing)
        model = handle.comfy_model
        # MultiGPU CFG Split and non-dynamic clones rebuild the MODEL from the same folder with this.
        model.cached_patcher_init = (load_model_patcher, (model_folder, handle.precision))
        return (handle, vae, model, bagel_clip(handle.pipeline.tokenizer))


def load_model_patcher(model_folder: str, precision: str, disable_dynamic: bool = False):
    """A fresh MODEL patcher of ``model_folder`` (its own copy of the weights): ComfyUI's
    ``cached_patcher_init`` factory."""
    handle, _ = load_bagel(model_folder, precision, False, dynamic=not disable_dynamic)
    model = handle.comfy_model
    model.cached_patcher_init = (load_model_patcher, (model_folder, precision))
    return model


def load_bagel(model_folder, precision, download_if_missing=False, dynamic=True):
    """The BAGEL model (BAGEL_MOT_MODEL, which owns the MODEL patcher) and the checkpoint's VAE."""
    from bagel_model import BagelPipeline

    problem = _folder_problem(model_folder, download_if_missing, precision) or _precision_problem(precision)
    if problem:
        raise ValueError(problem)
    path = model_folders.find_model_folder(model_folder) or model_folders.find_partial_folder(model_folder)
    if path is None or (os.path.isdir(path) and incomplete_files(path)):  # download_if_missing is on
        path = download_checkpoint(path or model_folders.download_target_dir())
    source = describe_checkpoint(path, model_folders.vae_dirs())
    logger.info("BAGEL '%s': %s; it reads %s", model_folder, source.describe(),
                ", ".join(str(f) for f in source.files()))
    precision, _ = resolve_precision(source, model_folder, precision)
    check_fits(source, model_folder, precision)
    device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    compute_dtype = resolve_compute_dtype(comfy_compute_dtype(device), device)
    logger.info("Loading BAGEL checkpoint %s in %s onto %s (computing on %s in %s).", path, precision,
                offload_device, device, compute_dtype)
    # ComfyUI owns the memory: the weights are kept on its offload device and its patchers move or stream
    # them to the GPU when a BAGEL node runs (model_handle.py). Only NF4/INT8 quantization touches the
    # GPU during the load, one Linear at a time, after asking ComfyUI for room.
    if precision in QUANTIZED and device.type != "cpu":
        mm.free_memory(QUANTIZE_ROOM_BYTES, device)
    pipeline = BagelPipeline.from_pretrained(
        path, precision=precision, device=str(device), storage_device=str(offload_device),
        compute_dtype=_DTYPE_NAMES[compute_dtype], check_memory=False,
        operations=bagel_operations(storage_dtype(precision), compute_dtype), vae_dirs=model_folders.vae_dirs())
    vae = checkpoint_vae(source.ae_path, pipeline.config.ae)
    return BagelMoTModel(pipeline, model_folder, precision, dynamic=dynamic), vae


NODE_CLASS_MAPPINGS = {"BagelMoTModelLoader": BagelMoTModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"BagelMoTModelLoader": "BAGEL-MoT Model Loader"}
