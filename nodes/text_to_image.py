"""Text to Image node."""
from .image_convert import pixels_to_image_batch, result_pixels
from .progress import NodeProgress
from .sampler_inputs import (SEED_MAX, TEXT_TO_IMAGE_DEFAULTS, core_sampler_kwargs, model_input,
                             plan_or_none, prompt_and_interval_problems, sampler_input_types, seed_input,
                             size_input, step_cache_input, text_input, thinking_input)
from .validation import first_problem, raise_if_problem, size_problem
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

    @classmethod
    def VALIDATE_INPUTS(cls, prompt=None, width=None, height=None,
                        cfg_interval_start=None, cfg_interval_end=None):
        return first_problem(
            size_problem("width", width), size_problem("height", height),
            *prompt_and_interval_problems("prompt", prompt, cfg_interval_start, cfg_interval_end),
        )

    def generate(self, bagel_model, prompt, width, height, seed, batch_size, thinking="", **sampler):
        raise_if_problem(
            size_problem("width", width), size_problem("height", height),
            *prompt_and_interval_problems("prompt", prompt, sampler["cfg_interval_start"],
                                          sampler["cfg_interval_end"]),
        )
        pipeline = bagel_model.ready_pipeline("t2i", width, height, num_images=int(batch_size))
        progress = NodeProgress(1, previews=True)
        # One core call for the batch: it builds the prompt context once and, where the device default
        # says it is faster, denoises all images in one LM call per step.
        result = pipeline.generate_image(
            prompt, width=width, height=height, thinking=plan_or_none(thinking), seed=seed % (SEED_MAX + 1),
            num_images=int(batch_size), callback=progress.callback(0), preview=progress.preview(),
            **core_sampler_kwargs(sampler),
        )
        return (pixels_to_image_batch(result_pixels(result)), latent_output(pipeline, result.latents))


NODE_CLASS_MAPPINGS = {"BagelMoTTextToImage": BagelMoTTextToImage}
NODE_DISPLAY_NAME_MAPPINGS = {"BagelMoTTextToImage": "BAGEL-MoT Text to Image"}
