"""Nodes for BAGEL inside ComfyUI's own sampling: images into a context, BAGEL's CFG guider, think into a
conditioning. The model layer they drive is nodes/comfy_model/."""

from bagel_model.generation.sampler import SamplerSettings

from .comfy_model.context import replace_contexts
from .comfy_model.guider import BagelGuider
from .comfy_model.thinking import think_into
from .image_convert import image_batch_to_pil
from .progress import NodeProgress
from .sampler_inputs import SEED_MAX, TEXT_TO_IMAGE_DEFAULTS, sampler_input_types
from .text_nodes import think_input_types
from .validation import INTERVAL_CHECKS

GUIDER_SCALES = ("cfg_text_scale", "cfg_img_scale", "cfg_interval_start", "cfg_interval_end", "cfg_renorm_min",
                 "cfg_renorm_type")


class BagelMoTContextImages:
    DESCRIPTION = ("Puts images into a BAGEL conditioning's context, before its text, with the ViT and VAE tokens "
                   "of BAGEL's own edit (reference images first, then the image to edit). Use it on the positive "
                   "and on the negative (empty text) conditioning of an edit.")
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "add_images"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING", {"tooltip": "From CLIP Text Encode with the BAGEL loader's clip."}),
                "image": ("IMAGE", {"tooltip": "The image to edit (a batch: each image in order)."}),
            },
            "optional": {
                "reference_images": ("IMAGE", {"tooltip": "More images, placed before 'image' in the context."}),
            },
        }

    def add_images(self, conditioning, image, reference_images=None):
        pictures = [] if reference_images is None else image_batch_to_pil(reference_images, "reference_images")
        pictures += image_batch_to_pil(image, "image")
        return (replace_contexts(conditioning, "conditioning", lambda request: request.with_images_first(pictures)),)


def guider_input_types() -> dict:
    specs = sampler_input_types(TEXT_TO_IMAGE_DEFAULTS)
    return {name: specs[name] for name in GUIDER_SCALES}


class BagelMoTGuider:
    DESCRIPTION = ("BAGEL's full classifier-free guidance for SamplerCustomAdvanced: text guidance against "
                   "'negative' (the context without the prompt), image guidance against 'without_images' "
                   "(default: the prompt without the images), BAGEL's cfg interval and renorm. All branches of "
                   "a step run in one model call.")
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = ("GUIDER",)
    RETURN_NAMES = ("guider",)
    FUNCTION = "get_guider"
    # Applied by the input guard (input_guard.py) to the posted prompt and when the node runs: a reversed interval
    # is one error, on cfg_interval_start.
    INPUT_CHECKS = INTERVAL_CHECKS

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "model": ("MODEL", {"tooltip": "The BAGEL-MoT Model Loader's model (LoRAs and patches allowed)."}),
            "positive": ("CONDITIONING", {"tooltip": "The full context: prompt (and images)."}),
            "negative": ("CONDITIONING", {"tooltip": "The context without the prompt text: CLIP Text Encode of an "
                                                     "empty string (with the same images, for an edit)."}),
        }
        required.update(guider_input_types())
        optional = {"without_images": ("CONDITIONING", {
            "tooltip": "The context without images, for cfg_img_scale. Default: the prompt text alone."})}
        return {"required": required, "optional": optional}

    def get_guider(self, model, positive, negative, without_images=None, **scales):
        # NaN/inf scales and a reversed interval are refused before this runs, by the input guard (input_guard.py).
        settings = SamplerSettings(
            cfg_text_scale=float(scales["cfg_text_scale"]), cfg_img_scale=float(scales["cfg_img_scale"]),
            cfg_interval=(float(scales["cfg_interval_start"]), float(scales["cfg_interval_end"])),
            cfg_renorm_min=float(scales["cfg_renorm_min"]), cfg_renorm_type=scales["cfg_renorm_type"])
        guider = BagelGuider(model)
        guider.set_bagel(positive, negative, without_images, settings)
        return (guider,)


class BagelMoTThinkConditioning:
    DESCRIPTION = ("BAGEL writes its plan for the image (thinking) from the conditioning's context and adds it "
                   "to the conditioning, as Text to Image and Edit do with think on. The plan is shown here.")
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("conditioning", "thinking")
    OUTPUT_NODE = True
    FUNCTION = "think"

    @classmethod
    def INPUT_TYPES(cls):
        required = {"model": ("MODEL", {"tooltip": "The BAGEL-MoT Model Loader's model."}),
                    "conditioning": ("CONDITIONING", {"tooltip": "The positive conditioning to plan for."})}
        required.update(think_input_types())
        return {"required": required}

    def think(self, model, conditioning, max_think_tokens, do_sample, temperature, seed):
        progress = NodeProgress(1)
        out, thinking = think_into(model, conditioning, int(max_think_tokens), bool(do_sample), float(temperature),
                                   int(seed) % (SEED_MAX + 1), progress.callback(0))
        return {"ui": {"text": [thinking]}, "result": (out, thinking)}


NODE_CLASS_MAPPINGS = {
    "BagelMoTContextImages": BagelMoTContextImages,
    "BagelMoTGuider": BagelMoTGuider,
    "BagelMoTThinkConditioning": BagelMoTThinkConditioning,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BagelMoTContextImages": "BAGEL-MoT Images into Context",
    "BagelMoTGuider": "BAGEL-MoT CFG Guider",
    "BagelMoTThinkConditioning": "BAGEL-MoT Think into Conditioning",
}
