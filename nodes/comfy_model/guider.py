"""BAGEL's full classifier-free guidance as a ComfyUI GUIDER.

Three branches, each a conditioning whose context the MODEL prefills once per run: ``positive`` (everything),
``negative`` (the context without the prompt text: images and system prompt kept) and ``without_images`` (the
texts only). The branches are named by their key here, never by ComfyUI's ``prompt_type`` (DualCFGGuider marks
its middle cond "negative"), and the context each conditioning describes is what makes it that branch.

Per step, the branches whose weight can change the result (BAGEL's rule: none outside the cfg interval, the
image branch only with text guidance) run in ONE model call (``calc_cond_batch`` concatenates BAGEL's conds
whatever their lengths). The MODEL returns ``x − σ·v``; the guider recovers each branch's velocity in the
compute dtype, combines them with the core's ``combine_cfg`` (renorm over BAGEL's packed 64-dimensional
tokens, per image) and hands ComfyUI ``x − σ·v_guided``.
"""
import torch

import comfy.samplers

from bagel_model.generation.context_request import ContextRequest
from bagel_model.generation.latent_velocity import pack_latents, unpack_latents
from bagel_model.generation.sampler import SamplerSettings, combine_cfg

from .context import conditioning_contexts, replace_contexts
from .inpaint_mask import check_inpaint_mask

BRANCHES = ("positive", "negative", "without_images")


def texts_only(request: ContextRequest) -> ContextRequest:
    """BAGEL's image-guidance context: the text segments (system prompt included), no image, no plan."""
    return ContextRequest(items=request.texts, system_prompt=request.system_prompt)


def _with_system_of(positive, conditioning, name: str):
    """A think run's system prompt belongs to every branch's context (BAGEL's CFG contexts keep it)."""
    system = conditioning_contexts(positive, "positive")[0].system_prompt
    if system is None:
        return conditioning
    return replace_contexts(conditioning, name, lambda request: request if request.system_prompt is not None
                            else request.with_system_prompt(system))


class BagelGuider(comfy.samplers.CFGGuider):
    def set_bagel(self, positive, negative, without_images, settings: SamplerSettings):
        """``without_images`` None: derived from ``positive`` (its texts only), as BAGEL builds it."""
        settings.validate()
        self.settings = settings
        conditioning_contexts(negative, "negative")  # a foreign conditioning fails here, before sampling
        # BAGEL's image-free context of a context without images is that context itself: reuse its velocity.
        self.images_branch_is_positive = without_images is None and not any(
            request.images for request in conditioning_contexts(positive, "positive"))
        if without_images is None:
            without_images = replace_contexts(positive, "positive", texts_only)
        conds = {"positive": positive}
        # Only branches that can weigh in are prefilled (BAGEL's rule: image guidance needs text guidance).
        if settings.cfg_text_scale > 1.0:
            conds["negative"] = _with_system_of(positive, negative, "negative")
            if settings.cfg_img_scale > 1.0 and not self.images_branch_is_positive:
                conds["without_images"] = _with_system_of(positive, without_images, "without_images")
        self.inner_set_conds(conds)
        self.cfg = settings.cfg_text_scale

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, *args, **kwargs):
        # ComfyUI 0.33 resizes the mask here, before any model hook could see it (0.3.64 checks it again in the
        # MODEL's OUTER_SAMPLE wrapper, which also covers the stock guiders there).
        check_inpaint_mask(denoise_mask, noise, self.model_patcher.model.runtime.config.ae.downsample)
        return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, *args, **kwargs)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        sigma = timestep.reshape(-1)[0].to(torch.float32)
        text_scale, img_scale = self.settings.scales_at(sigma.cpu())
        names = ["positive"]
        if text_scale > 1.0:
            names.append("negative")
            if img_scale > 1.0 and "without_images" in self.conds:
                names.append("without_images")
        denoised = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds.get(n) for n in names], x,
                                                  timestep, model_options)
        if len(names) == 1 or float(sigma) == 0.0:
            return denoised[0]
        velocities = [self._velocity(x, d, sigma) for d in denoised]
        guided = self._combine(x, velocities, text_scale, img_scale)
        return x - guided.float() * sigma.to(x.device)

    def _velocity(self, x, denoised, sigma) -> torch.Tensor:
        """The branch's velocity back from ComfyUI's ``x − σ·v``, in the compute dtype the model produced."""
        dtype = self.inner_model.get_dtype()
        return ((x - denoised) / sigma.to(x.device)).to(dtype)

    def _combine(self, x, velocities, text_scale, img_scale) -> torch.Tensor:
        settings = self.settings
        patch = self.inner_model.runtime.config.latent_patch_size
        _, channels, height, width = x.shape
        packed = [pack_latents(v, patch) for v in velocities]
        v_img = packed[2] if len(packed) > 2 else (packed[0] if img_scale > 1.0 else None)
        rows = []
        for b in range(x.shape[0]):
            rows.append(combine_cfg(packed[0][b], packed[1][b], None if v_img is None else v_img[b], text_scale,
                                    img_scale, settings.cfg_renorm_min, settings.cfg_renorm_type))
        return unpack_latents(torch.stack(rows), height, width, channels, patch)
