"""Image Edit node: an instruction applied to each image of a batch, one by one."""
from .batch_runner import run_jobs, with_warnings
from .image_convert import image_batch_to_pil, pixels_to_image_batch, resize_pixels, result_pixels
from .sampler_inputs import (EDIT_DEFAULTS, core_sampler_kwargs, model_input, plan_or_none, sampler_input_types,
                             seed_input, size_input, step_cache_input, text_input, thinking_input)
from .validation import INTERVAL_CHECKS, first_problem, raise_if_problem, size_checks, text_problem
from .vae_bridge import latent_output

# native: the model's own rule (input resized to BAGEL's working size, at most 1024 a side);
# match_input: native, then resized back to the input's exact size; custom: width x height.
OUTPUT_SIZE_MODES = ("native", "match_input", "custom")


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
    # Applied by the input guard (input_guard.py) to the posted prompt and again when the node runs; each
    # problem is one error on its own input. width and height count only for a custom output_size.
    INPUT_CHECKS = (*size_checks(lambda values: values.get("output_size") == "custom"), *INTERVAL_CHECKS)

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

    # Only instruction: ComfyUI repeats a VALIDATE_INPUTS message once for every argument it takes.
    @classmethod
    def VALIDATE_INPUTS(cls, instruction=None):
        return first_problem(text_problem("instruction", instruction))

    def edit(self, bagel_model, image, instruction, output_size, width, height, seed,
             reference_images=None, thinking="", **sampler):
        raise_if_problem(text_problem("instruction", instruction))
        sources = image_batch_to_pil(image, "image")
        references = [] if reference_images is None else image_batch_to_pil(reference_images, "reference_images")
        size = (int(width), int(height)) if output_size == "custom" else None
        largest = max((source.size for source in sources), key=lambda wh: wh[0] * wh[1])
        pipeline = bagel_model.ready_pipeline("edit", *(size or largest), input_size=largest)
        jobs = [dict(images=[*references, source], prompt=instruction, thinking=plan_or_none(thinking),
                     output_size=size, seed=seed, **core_sampler_kwargs(sampler)) for source in sources]
        results = run_jobs(pipeline, "edit_image", jobs, previews=True)
        edited, latents = [], []
        for source, result in zip(sources, results):
            pixels = result_pixels(result)[0]
            if output_size == "match_input" and (pixels.shape[1], pixels.shape[0]) != source.size:
                pixels = resize_pixels(pixels, source.size)
            edited.append(pixels)
            latents.extend(result.latents)
        return with_warnings((pixels_to_image_batch(edited), latent_output(pipeline, latents)), results)


NODE_CLASS_MAPPINGS = {"BagelMoTEdit": BagelMoTEdit}
NODE_DISPLAY_NAME_MAPPINGS = {"BagelMoTEdit": "BAGEL-MoT Image Edit"}
