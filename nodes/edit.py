"""Image Edit node: an instruction applied to each image of a batch, one by one."""
from .image_convert import image_batch_to_pil, pixels_to_image_batch, resize_pixels, result_pixels
from .progress import NodeProgress
from .sampler_inputs import (EDIT_DEFAULTS, core_sampler_kwargs, model_input, plan_or_none,
                             prompt_and_interval_problems, sampler_input_types, seed_input, size_input,
                             step_cache_input, text_input, thinking_input)
from .validation import first_problem, raise_if_problem, size_problem
from .vae_bridge import latent_output

# native: the model's own rule (input resized to BAGEL's working size, at most 1024 a side);
# match_input: native, then resized back to the input's exact size; custom: width x height.
OUTPUT_SIZE_MODES = ("native", "match_input", "custom")


def _custom_size_problems(output_size, width, height):
    if output_size != "custom":
        return None, None
    return size_problem("width", width), size_problem("height", height)


class BagelMoTEdit:
    DESCRIPTION = (
        "Edits images with an instruction. Each image of the batch is edited on its own with the "
        "same seed; optional reference images are shown to the model before it."
    )
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("images", "latent")
    OUTPUT_TOOLTIPS = ("The edited images.",
                       "The edited images as FLUX latents at the size BAGEL generated them (before "
                       "match_input's resize): decode with core VAE Decode and the loader's vae.")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "bagel_model": model_input(),
            "image": ("IMAGE", {"tooltip": "Image(s) to edit; a batch is edited one by one."}),
            "instruction": text_input("What to change."),
            "output_size": (list(OUTPUT_SIZE_MODES), {
                "default": "native",
                "tooltip": "native: BAGEL's working size for this input; match_input: same size "
                           "as the input; custom: width x height below."}),
            "width": size_input(1024, "Output width when output_size is custom"),
            "height": size_input(1024, "Output height when output_size is custom"),
        }
        required.update(sampler_input_types(EDIT_DEFAULTS))
        required["seed"] = seed_input()
        return {
            "required": required,
            "optional": {
                "reference_images": ("IMAGE", {"tooltip": "Extra images the instruction may refer to."}),
                "thinking": thinking_input(),
                "step_cache": step_cache_input(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, instruction=None, output_size=None, width=None, height=None,
                        cfg_interval_start=None, cfg_interval_end=None):
        return first_problem(
            *_custom_size_problems(output_size, width, height),
            *prompt_and_interval_problems("instruction", instruction, cfg_interval_start, cfg_interval_end),
        )

    def edit(self, bagel_model, image, instruction, output_size, width, height, seed,
             reference_images=None, thinking="", **sampler):
        raise_if_problem(
            *_custom_size_problems(output_size, width, height),
            *prompt_and_interval_problems("instruction", instruction, sampler["cfg_interval_start"],
                                          sampler["cfg_interval_end"]),
        )
        sources = image_batch_to_pil(image, "image")
        references = [] if reference_images is None else image_batch_to_pil(reference_images, "reference_images")
        progress = NodeProgress(len(sources), previews=True)
        size = (int(width), int(height)) if output_size == "custom" else None
        edited, latents = [], []
        for index, source in enumerate(sources):
            pipeline = bagel_model.ready_pipeline("edit", *(size or source.size), input_size=source.size)
            result = pipeline.edit_image(
                [*references, source], instruction, thinking=plan_or_none(thinking), output_size=size,
                seed=seed, callback=progress.callback(index), preview=progress.preview(),
                **core_sampler_kwargs(sampler),
            )
            pixels = result_pixels(result)[0]
            if output_size == "match_input" and (pixels.shape[1], pixels.shape[0]) != source.size:
                pixels = resize_pixels(pixels, source.size)
            edited.append(pixels)
            latents.extend(result.latents)
        return (pixels_to_image_batch(edited), latent_output(pipeline, latents))


NODE_CLASS_MAPPINGS = {"BagelMoTEdit": BagelMoTEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"BagelMoTEdit": "BAGEL-MoT Image Edit"}
