"""The object that travels along BAGEL_MOT_MODEL links.

It pairs the core `BagelPipeline` with a `comfy.model_patcher.ModelPatcher`, so ComfyUI's memory
manager loads the weights onto its device before each use, offloads them when other models need
the memory, and drops them on "Free model and node cache".
"""
import logging

import torch

import comfy.model_management as mm
import comfy.model_patcher

logger = logging.getLogger(__name__)

MODEL_TYPE = "BAGEL_MOT_MODEL"


class _PatcherRoot(torch.nn.Module):
    """Root module handed to ModelPatcher.

    ModelPatcher writes bookkeeping attributes (device, model_loaded_weight_memory, ...) onto the
    module it manages; a root of our own keeps them off the core's modules.
    """

    def __init__(self, weights: torch.nn.Module):
        super().__init__()
        self.weights = weights


class BagelMoTModel:
    """A loaded BAGEL checkpoint as ComfyUI sees it."""

    def __init__(self, pipeline, folder: str, precision: str, working_memory_bytes: int = 0,
                 weight_bytes: int = 0):
        self.pipeline = pipeline
        self.folder = folder
        self.precision = precision
        # Activations/KV cache the run needs on top of the weights; passed to ComfyUI so it frees
        # that much before loading (0 = ComfyUI's own minimum).
        self.working_memory_bytes = int(working_memory_bytes)
        self.patcher = comfy.model_patcher.ModelPatcher(
            _PatcherRoot(pipeline.model),
            load_device=mm.get_torch_device(),
            offload_device=mm.unet_offload_device(),
            size=int(weight_bytes),
        )

    def ready_pipeline(self):
        """Loads the weights onto ComfyUI's device (offloading others) and returns the pipeline.

        force_full_load: BAGEL uses plain torch layers, which ComfyUI cannot stream partially.
        """
        mm.load_models_gpu([self.patcher], memory_required=self.working_memory_bytes,
                           force_full_load=True)
        return self.pipeline

    def __repr__(self) -> str:
        return f"BagelMoTModel(folder={self.folder!r}, precision={self.precision!r})"
