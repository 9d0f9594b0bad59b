"""Text to Image node."""
from .batch_runner import with_warnings
from .image_convert import pixels_to_image_batch, result_pixels
from .progress import NodeProgress
from .sampler_inputs import (SEED_MAX, TEXT_TO_IMAGE_DEFAULTS, core_sampler_kwargs, model_input, plan_or_none,
                             sampler_input_types, seed_input, size_input, step_cache_input, text_input,
                             thinking_input)
from .validation import INTERVAL_CHECKS, first_problem, raise_if_problem, size_checks, text_problem
from .vae_bridge import latent_output


class BagelMoTTextToImage:
    DESCRIPTION = (
        "Generates images from a prompt with BAGEL. Image k of a batch uses seed + k and is the same "
        "image it would be alone; the prompt is read once for the whole batch."
    )
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("images", "latent")
    OUTPUT_TOOLTIPS = ("The generated images.",
                       "The same images as FLUX latents: decode with core VAE Decode and the loader's vae "
                       "(or FLUX ae.safetensors), or pass them on to other latent nodes.")
    FUNCTION = "generate"
    # Applied by the input guard (input_guard.py) to the posted prompt and again when the node runs; each
    # problem is one error on its own input.
    INPUT_CHECKS = (*size_checks(), *INTERVAL_CHECKS)

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "bagel_model": model_input(),
            "prompt": text_input("What to draw."),
            "width": size_input(1024, "Image width"),
            "height": size_input(1024, "Image height"),
        }
        required.update(sampler_input_types(TEXT_TO_IMAGE_DEFAULTS))
        required["seed"] = seed_input()
        required["batch_size"] = ("INT", {"default": 1, "min": 1, "max": 64,
                                          "tooltip": "Images to generate; image k uses seed + k."})
        optional = {"thinking": thinking_input(), "step_cache": step_cache_input()}
        return {"required": required, "optional": optional}

    # Only prompt: ComfyUI repeats a VALIDATE_INPUTS message once for every argument it takes.
    @classmethod
    def VALIDATE_INPUTS(cls, prompt=None):
        return first_problem(text_problem("prompt", prompt))

    def generate(self, bagel_model, prompt, width, height, seed, batch_size, thinking="", **sampler):
        raise_if_problem(text_problem("prompt", prompt))
        pipeline = bagel_model.ready_pipeline("t2i", width, height, num_images=int(batch_size))
        progress = NodeProgress(1, previews=True)
        # One core call for the batch: it builds the prompt context once and, where the device default
        # says it is faster, denoises all images in one LM call per step.
        result = pipeline.generate_image(
            prompt, width=width, height=height, thinking=plan_or_none(thinking), seed=seed % (SEED_MAX + 1),
            num_images=int(batch_size), callback=progress.callback(0), preview=progress.preview(),
            **core_sampler_kwargs(sampler),
        )
        # A remote backend sends the images of the batch as concurrent requests; its warnings show on the node.
        return with_warnings((pixels_to_image_batch(result_pixels(result)), latent_output(pipeline, result.latents)),
                             [result])


NODE_CLASS_MAPPINGS = {"BagelMoTTextToImage": BagelMoTTextToImage}
NODE_DISPLAY_NAME_MAPPINGS = {"BagelMoTTextToImage": "BAGEL-MoT Text to Image"}
