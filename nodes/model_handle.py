"""The object that travels along BAGEL_MOT_MODEL links.

It pairs the core `BagelPipeline` with ComfyUI model patchers, one per weight group of BAGEL
(bagel_model/checkpoint/residency.py: gen expert, und expert + embeddings + lm_head, ViT, autoencoder), so ComfyUI's
memory manager owns every weight: the model is built on the offload device and nothing moves to the GPU
except through ComfyUI. Before each phase of a call the pipeline's phase hook asks ComfyUI to load that
phase's groups (`load_models_gpu`) with the working memory of this call (its mode and image sizes, from the
core's memory estimate); ComfyUI then keeps as much of them resident as fits and streams the rest per
forward (every layer is a cast op, nodes/comfy_ops.py). During denoising only the gen expert is requested:
ComfyUI frees room for it by offloading the und expert first, which then serves the image-marker rows
from wherever it is. "Free model and node cache" and eviction by other models offload every group.

Under Dynamic VRAM (ComfyUI 0.33+ with comfy-aimdo: ``CoreModelPatcher`` is ``ModelPatcherDynamic``) ComfyUI
faults each layer in when it is used and streams in the order each group's ``get_dynamic_vram__units()``
gives: one decoder (or SigLIP) layer after the other, as a forward uses them.
"""
import logging
import re

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension

from bagel_model.checkpoint.memory import estimate_memory
from bagel_model.checkpoint.residency import GROUPS, PHASE_GROUPS, weight_groups
from bagel_model.devices import resolve_batch_images

from .comfy_model.base_model import BagelMoTBaseModel
from .comfy_model.inpaint_mask import check_inpaint_mask
from .comfy_model.patcher import bagel_patcher_class

logger = logging.getLogger(__name__)

MODEL_TYPE = "BAGEL_MOT_MODEL"

# A repeated block whose layers one forward uses together: a decoder layer (either expert), a SigLIP layer.
_BLOCK = re.compile(r"^(language_model\.model\.layers\.\d+|vit_model\.vision_model\.encoder\.layers\.\d+)\.")
# Used after the decoder layers: the final norms, lm_head and the latent output projection.
_AFTER_DECODER = re.compile(r"^(language_model\.model\.norm|language_model\.lm_head|llm2vae)")


def patcher_class():
    """The class ComfyUI builds its own models with: ``CoreModelPatcher`` (``ModelPatcherDynamic`` when main.py
    enabled Dynamic VRAM, which it decides after custom nodes may have been imported: read at each load),
    ``ModelPatcher`` on ComfyUI 0.3.64, which has no CoreModelPatcher."""
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def dynamic_vram_units(layers: list[tuple[str, torch.nn.Module]]) -> list[tuple[torch.nn.Module, ...]]:
    """The group's layers in the order a forward uses them, as ComfyUI's Dynamic VRAM streaming units: one
    unit per decoder (or SigLIP) layer, holding that layer's modules of this group, in layer order; before
    them every other layer in model order (embeddings, ViT input, latent input), after them the final norms,
    lm_head and llm2vae."""
    before, blocks, after = {}, {}, {}
    for name, layer in layers:
        block = _BLOCK.match(name)
        if block:
            blocks.setdefault(block.group(1), []).append(layer)
        else:
            (after if _AFTER_DECODER.match(name) else before)[name] = [layer]
    return [tuple(modules) for part in (before, blocks, after) for modules in part.values()]


class WeightGroup(torch.nn.Module):
    """Root module of one patcher: the group's layers (shared with the core model, not copied).

    ModelPatcher writes bookkeeping attributes (device, model_loaded_weight_memory, ...) onto the module it
    manages; a root of our own keeps them off the core's modules."""

    def __init__(self, name: str, layers: list[tuple[str, torch.nn.Module]]):
        super().__init__()
        self.group = name
        self.layers = torch.nn.ModuleDict({qualified.replace(".", "/"): layer for qualified, layer in layers})
        self._units = dynamic_vram_units(layers)  # a plain list: not registered again as submodules

    def get_dynamic_vram__units(self):
        """ComfyUI's Dynamic VRAM (0.33+: ModelPatcherDynamic.load) streams the units it gets here in this
        order: ``(units, last_units)``, each a list of modules or tuples of modules."""
        return list(self._units), []


def unload_patchers_of(roots: list) -> None:
    """Unloads (and unpatches) every loaded ComfyUI patcher whose model is one of ``roots``, clones included."""
    for index in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[index]
        patcher = loaded.model
        if patcher is not None and any(patcher.model is root for root in roots):
            loaded.model_unload()
            mm.current_loaded_models.pop(index)


def _largest_layer_bytes(groups: dict) -> int:
    return max(sum(t.numel() * t.element_size() for t in layer.state_dict().values())
               for layers in groups.values() for _, layer in layers)


class BagelMoTModel:
    """A loaded BAGEL checkpoint as ComfyUI sees it."""

    def __init__(self, pipeline, folder: str, precision: str, dynamic: bool = True):
        self.pipeline = pipeline
        self.folder = folder
        self.precision = precision
        groups = weight_groups(pipeline.model.bagel, pipeline.model.vae)
        load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
        patcher = patcher_class() if dynamic else comfy.model_patcher.ModelPatcher
        self.patchers = {name: patcher(WeightGroup(name, groups[name]), load_device=load_device,
                                       offload_device=offload_device) for name in GROUPS}
        # A layer of a group that is not loaded is copied to the GPU for each forward: room for one.
        self.stream_bytes = _largest_layer_bytes(groups)
        self.working_memory_bytes = 0
        pipeline.compute_on(load_device)
        pipeline.phase_hook = self.load_phase
        self.comfy_model = self._comfy_model_patcher(groups, patcher, load_device, offload_device)

    def _comfy_model_patcher(self, groups: dict, patcher, load_device, offload_device):
        """The MODEL output: ComfyUI's sampling over the same layers (no copy of any weight). Its patcher and
        the group patchers never hold the layers at the same time: each unloads the other before it loads, so a
        LoRA patched in for sampling is never seen by the BAGEL nodes, and memory is counted once."""
        layers = [layer for name in GROUPS if name != "vae" for layer in groups[name]]
        base = BagelMoTBaseModel(self.pipeline, device=offload_device, dynamic_units=dynamic_vram_units(layers))
        base.before_load = self._unload_groups
        # ModelPatcherDynamic hands a CPU load device a plain ModelPatcher (not our subclass): ask for that one.
        kind = comfy.model_patcher.ModelPatcher if torch.device(load_device).type == "cpu" else patcher
        model = bagel_patcher_class(kind)(base, load_device=load_device, offload_device=offload_device)
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, "bagel_mot_groups",
                                   self._before_sampling)
        return model

    def _unload_groups(self) -> None:
        unload_patchers_of([patcher.model for patcher in self.patchers.values()])

    def _before_sampling(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, *args, **kwargs):
        """ComfyUI's OUTER_SAMPLE. On 0.3.64 the mask is still the one the LATENT carried (resized next); 0.33
        resizes it before this wrapper, so there only the BAGEL guider (its own ``sample``) can check it."""
        check_inpaint_mask(denoise_mask, noise, self.pipeline.config.ae.downsample)
        self._unload_groups()
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, *args, **kwargs)

    @property
    def patcher(self):
        """The und-expert patcher (text and understanding), the group every call uses."""
        return self.patchers["und"]

    def working_memory(self, task: str, width: int = 1024, height: int = 1024, input_size=None,
                       generated_tokens: int = 0, num_images: int = 1) -> int:
        """KV caches + activation peak of one ``task`` call (core estimate; the activations times the images
        the core denoises in one LM call) + one streamed layer."""
        pipe = self.pipeline
        estimate = estimate_memory(pipe.config, self.precision, task, width, height, input_size,
                                   device=str(pipe.device), compute_dtype=pipe.compute_dtype,
                                   generated_tokens=generated_tokens, _with_alternatives=False)
        together = num_images if resolve_batch_images(None, pipe.device) else 1
        return estimate.kv_cache_bytes + together * estimate.activation_bytes + self.stream_bytes

    def ready_pipeline(self, task: str = "t2i", width: int = 1024, height: int = 1024, input_size=None,
                       generated_tokens: int = 0, num_images: int = 1):
        """Records the working memory of the coming call and returns the pipeline; its phases load the
        weights they use through ComfyUI (``load_phase``). The defaults (a 1024x1024 text-to-image call)
        are an upper bound for callers that do not know their call's size."""
        self.working_memory_bytes = self.working_memory(task, width, height, input_size, generated_tokens,
                                                        num_images)
        return self.pipeline

    def load_phase(self, phase: str) -> None:
        """Asks ComfyUI to make the groups of ``phase`` resident (as much as fits next to the working memory)."""
        patchers = [self.patchers[name] for name in PHASE_GROUPS[phase]]
        logger.debug("BAGEL phase %s: loading %s with %.2f GiB working memory", phase, PHASE_GROUPS[phase],
                     self.working_memory_bytes / 1024 ** 3)
        unload_patchers_of([self.comfy_model.model])
        mm.load_models_gpu(patchers, memory_required=self.working_memory_bytes)

    def __repr__(self) -> str:
        return (f"BagelMoTModel(folder={self.folder!r}, precision={self.precision!r}, "
                f"format={getattr(self.pipeline, 'checkpoint_format', '')!r})")
