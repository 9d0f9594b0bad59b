"""Text to Image node."""
from .image_convert import pil_to_image_batch
from .progress import NodeProgress
from .sampler_inputs import (SEED_MAX, TEXT_TO_IMAGE_DEFAULTS, core_sampler_kwargs, model_input,
                             plan_or_none, prompt_and_interval_problems, sampler_input_types, seed_input,
                             size_input, step_cache_input, text_input, thinking_input)
from .validation import first_problem, raise_if_problem, size_problem


class BagelMoTTextToImage:
    DESCRIPTION = "Generates images from a prompt with BAGEL. Image k of a batch uses seed + k."
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
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
                                          "tooltip": "Images to generate, one after another."})
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
        pipeline = bagel_model.ready_pipeline("t2i", width, height)
        progress = NodeProgress(batch_size)
        pictures = []
        for index in range(batch_size):
            result = pipeline.generate_image(
                prompt, width=width, height=height, thinking=plan_or_none(thinking),
                seed=(seed + index) % (SEED_MAX + 1), callback=progress.callback(index),
                **core_sampler_kwargs(sampler),
            )
            pictures.extend(result.images)
        return (pil_to_image_batch(pictures),)


NODE_CLASS_MAPPINGS = {"BagelMoTTextToImage": BagelMoTTextToImage}
NODE_DISPLAY_NAME_MAPPINGS = {"BagelMoTTextToImage": "BAGEL-MoT Text to Image"}
