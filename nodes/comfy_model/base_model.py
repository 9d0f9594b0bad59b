"""BAGEL as a ComfyUI MODEL: a ``comfy.model_base.BaseModel`` for a flow model with ComfyUI's FLUX latent format.

* ``diffusion_model`` is the core's ``Bagel`` module itself (the same layers the BAGEL nodes use: one copy of the
  weights), so the state-dict keys are the checkpoint's keys under ``diffusion_model.`` and the stock LoRA
  loaders, model merging and weight patches reach every expert.
* ``extra_conds`` prefills each conditioning's context once per sampling run (ComfyUI calls it once per
  conditioning after loading and patching the model): the prefix sees the run's LoRAs; the steps never
  recompute it.
* The forward runs through ComfyUI's DIFFUSION_MODEL wrapper executor (EasyCache, LazyCache and other model
  patches attach there) and returns BAGEL's velocity in x's layout; CONST turns it into ``x − σ·v``.

Time and latents: BAGEL's t is ComfyUI's sigma (1 = noise) and its velocity is noise − x₀, so ComfyUI's Euler
step on ``x − σ·v`` is BAGEL's update. ComfyUI's sampler latents are ``process_in`` of a LATENT, i.e. BAGEL's
scaled latents ``scale·(z − shift)`` with the checkpoint's own autoencoder factors (FLUX's for BAGEL-7B-MoT).
"""
import logging
import weakref

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.patcher_extension
import comfy.supported_models_base

from bagel_model.checkpoint.memory import denoise_call_bytes
from bagel_model.generation.context_request import ContextRequest, prefill_request
from bagel_model.generation.latent_velocity import check_latent_size, context_on, latent_velocities

from .conds import PREFIX_KEY, BagelPrefixCond
from .context import CONTEXT_KEY, context_of

logger = logging.getLogger(__name__)

TIMESTEP_SHIFT = 3.0  # BAGEL's default timestep_shift: ComfyUI's flow shift of the same formula


class BagelLatentFormat(comfy.latent_formats.Flux):
    """FLUX's latent format with the checkpoint's own autoencoder factors (FLUX's for the real checkpoint)."""

    def __init__(self, ae_config):
        super().__init__()
        self.scale_factor = ae_config.scale_factor
        self.shift_factor = ae_config.shift_factor
        self.latent_channels = ae_config.z_channels


class BagelModelConfig(comfy.supported_models_base.BASE):
    unet_config = {"disable_unet_model_creation": True}  # the core builds the network
    sampling_settings = {"shift": TIMESTEP_SHIFT, "multiplier": 1000}
    latent_format = comfy.latent_formats.Flux


class BagelMoTBaseModel(comfy.model_base.BaseModel):
    def __init__(self, pipeline, device=None, dynamic_units=()):
        config = BagelModelConfig(BagelModelConfig.unet_config)
        config.latent_format = BagelLatentFormat(pipeline.config.ae)
        super().__init__(config, comfy.model_base.ModelType.FLOW, device=device)
        self.diffusion_model = pipeline.model.bagel
        # Plain attributes (not submodules): the runtime computes with ``diffusion_model``'s own layers; the
        # autoencoder that encodes context images is the pipeline's (the loader's VAE output wraps the same file).
        self.bagel_core = (pipeline.runtime, pipeline.tokenizer)
        self.precision = getattr(pipeline, "precision", "")
        self._dynamic_units = list(dynamic_units)
        self.memory_usage_factor = 1.0
        # Called before this model loads outside a sampler (the think node); the loader makes it offload the
        # BAGEL nodes' patchers of the same layers.
        self.before_load = lambda: None
        # Contexts copied to another device (MultiGPU), per prefilled cache: copied once per run, not per step.
        self._moved = weakref.WeakKeyDictionary()

    @property
    def runtime(self):
        return self.bagel_core[0]

    def get_dtype(self):
        """The compute dtype (the weights may be stored quantized or in another float type)."""
        return self.runtime.dtype

    def get_dynamic_vram__units(self):
        """Dynamic VRAM streams these in order: one decoder (or SigLIP) layer after the other."""
        return list(self._dynamic_units), []

    # ---- once per sampling run ----------------------------------------------------------------------

    def extra_conds(self, **kwargs):
        request = context_of(kwargs, kwargs.get("prompt_type", "a"))
        if kwargs.get("hooks") is not None:
            # Hook keyframes change the weights between steps, after this prefill: refuse rather than use a
            # prefix computed with other weights than the steps.
            raise ValueError("BAGEL's MODEL does not take per-conditioning hooks (hook LoRAs/keyframes): its "
                             "context is prefilled once per run. Apply LoRAs to the model with LoraLoaderModelOnly.")
        noise = kwargs["noise"]
        self.check_latent(noise)
        seed = kwargs.get("seed")
        generator = None
        if request.images:
            # The VAE posterior of context images is sampled from the run's seed, as the Edit node does.
            generator = torch.Generator("cpu").manual_seed(int(seed or 0) % (2 ** 64))
        with torch.no_grad():
            context = prefill_request(self.runtime, self.bagel_core[1], request, generator)
        logger.debug("BAGEL prefix of %d tokens prefilled for the %s conditioning", context.length,
                     kwargs.get("prompt_type"))
        return {PREFIX_KEY: BagelPrefixCond([context])}

    def check_latent(self, latent: torch.Tensor) -> None:
        channels = self.latent_format.latent_channels
        if latent.ndim != 4 or latent.shape[1] != channels:
            raise ValueError(
                f"BAGEL denoises {channels}-channel FLUX latents [B,{channels},H/8,W/8]; this LATENT is shaped "
                f"{list(latent.shape)}. Make it with EmptySD3LatentImage, or VAE Encode with the BAGEL-MoT Model "
                "Loader's vae.")
        patch = self.runtime.config.latent_patch_size
        if latent.shape[2] % patch or latent.shape[3] % patch:
            side, down = self.runtime.config.latent_downsample, self.runtime.config.ae.downsample
            height, width = int(latent.shape[2]), int(latent.shape[3])
            raise ValueError(
                f"BAGEL packs 2x2 latent patches, so its LATENT needs an even size; this one is {width}x{height} "
                f"(an image of {width * down}x{height * down}). Use image sizes that are multiples of {side}: "
                f"for EmptySD3LatentImage set width and height to multiples of {side}; before VAE Encode, scale or "
                f"crop the image to a multiple of {side} (e.g. Upscale Image or ImageCrop).")
        check_latent_size(self.runtime.config, int(latent.shape[2]), int(latent.shape[3]))

    def extra_conds_shapes(self, **kwargs):
        request = kwargs.get(CONTEXT_KEY)
        if not isinstance(request, ContextRequest):
            return {}
        return {PREFIX_KEY: [1, self._estimated_tokens(request)]}

    def _estimated_tokens(self, request: ContextRequest) -> int:
        runtime, tokenizer = self.bagel_core
        texts = request.texts + tuple(t for t in (request.system_prompt, request.plan) if t)
        tokens = sum(len(tokenizer.encode(text)) + 3 for text in texts)
        patch = runtime.config.vit.patch_size
        for image in request.images:
            width, height = runtime.vae_rule(image).size
            vae_tokens = (width // runtime.config.latent_downsample) * (height // runtime.config.latent_downsample)
            tokens += vae_tokens + (width // patch) * (height // patch) + 4
        return tokens

    def memory_required(self, input_shape, cond_shapes={}):
        """One denoising LM call over the rows, plus the K/V of the contexts they attend to."""
        config = self.runtime.config
        rows = int(input_shape[0])
        latent_tokens = (int(input_shape[2]) // config.latent_patch_size) * (int(input_shape[3]) //
                                                                              config.latent_patch_size)
        shapes = list(cond_shapes.get(PREFIX_KEY, []))
        longest = max((int(shape[1]) for shape in shapes), default=0)
        llm = config.llm
        kv_bytes = 2 * llm.num_hidden_layers * llm.num_key_value_heads * llm.head_dim * \
            comfy.model_management.dtype_size(self.get_dtype())
        return denoise_call_bytes(config, latent_tokens, longest, rows, self.get_dtype()) + \
            kv_bytes * sum(int(shape[1]) for shape in shapes)

    # ---- every step ---------------------------------------------------------------------------------

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        contexts = kwargs.get(PREFIX_KEY)
        if contexts is None:
            raise ValueError("BAGEL's MODEL got a step without a BAGEL context: every conditioning of this sampler "
                             "must come from a CLIP Text Encode with the BAGEL-MoT Model Loader's clip.")
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        velocity = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._diffusion_forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                     transformer_options),
        ).execute(xc, sigma, contexts, transformer_options)
        return self.model_sampling.calculate_denoised(sigma, velocity.float(), x)

    def _context_on(self, context, device):
        copies = self._moved.setdefault(context.cache, {})
        key = (device, context.length, context.rope)
        if key not in copies:
            copies[key] = context_on(context, device)
        return copies[key]

    def _diffusion_forward(self, x, sigma, contexts, transformer_options):
        """Velocity (x's layout) of every row against its own context; rows at the same sigma (all of them, in
        every stock sampler) share one LM call."""
        runtime = self.runtime
        if len(contexts) != x.shape[0]:
            raise ValueError(f"BAGEL got {x.shape[0]} latent rows but {len(contexts)} contexts; each row needs "
                             "its conditioning's context.")
        if runtime.device != x.device:  # a MultiGPU clone computes where its rows are
            runtime.device = x.device
        contexts = [self._context_on(context, x.device) for context in contexts]
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)
        out = torch.empty(x.shape, dtype=runtime.dtype, device=x.device)
        for value in torch.unique(sigma):
            rows = (sigma == value).nonzero().flatten().tolist()
            velocity = latent_velocities(runtime, [contexts[row] for row in rows], x[rows], value.to(torch.float32))
            out[rows] = velocity.to(x.device, out.dtype)
        return out
