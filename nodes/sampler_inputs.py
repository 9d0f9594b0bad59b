"""Sampler widgets shared by Text to Image and Edit; their defaults are the core's (bagel_model.generation.sampler)."""
# EDIT_DEFAULTS / TEXT_TO_IMAGE_DEFAULTS are re-exported for edit.py and text_to_image.py.
from bagel_model.generation.sampler import EDIT_DEFAULTS, RENORM_TYPES, SamplerSettings  # noqa: F401
from bagel_model.generation.sampler import GENERATE_DEFAULTS as TEXT_TO_IMAGE_DEFAULTS  # noqa: F401

from .model_handle import MODEL_TYPE
from .validation import MAX_SIDE, MIN_SIDE, SIZE_MULTIPLE

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def model_input():
    return (MODEL_TYPE, {"tooltip": "From the BAGEL-MoT Model Loader."})


def size_input(default: int, what: str):
    return ("INT", {"default": default, "min": MIN_SIDE, "max": MAX_SIDE, "step": SIZE_MULTIPLE,
                    "tooltip": f"{what}, in pixels (a multiple of {SIZE_MULTIPLE})."})


def seed_input():
    return ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                    "tooltip": "Same seed and settings give the same result as the command line."})


def text_input(tooltip: str, default: str = ""):
    # dynamicPrompts off: the core must get exactly the typed text ({a|b} is not expanded).
    return ("STRING", {"default": default, "multiline": True, "dynamicPrompts": False, "tooltip": tooltip})


STEP_CACHE_MODES = ("off", "taylor")


def step_cache_input():
    return (list(STEP_CACHE_MODES), {
        "default": "off",
        "tooltip": "taylor: skip the decoder on 2 of 3 steps after the first 5 and extrapolate its output "
                   "(about 2-2.5x faster denoising, small quality cost). off: exact reference sampling."})


def thinking_input():
    return text_input("Optional plan from the BAGEL-MoT Think node (editable). Empty = no plan.")


def sampler_input_types(defaults: SamplerSettings) -> dict:
    """Widget specs in the order they appear on the node (workflow widgets_values rely on it)."""
    def scale(default, tooltip):
        return ("FLOAT", {"default": default, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": tooltip})

    def fraction(default, tooltip):
        return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": tooltip})

    start, end = defaults.cfg_interval
    return {
        "steps": ("INT", {"default": defaults.steps, "min": 2, "max": 200,
                          "tooltip": "Denoising timesteps (50 is the reference)."}),
        "cfg_text_scale": scale(defaults.cfg_text_scale, "Prompt adherence; 1.0 disables text guidance."),
        "cfg_img_scale": scale(defaults.cfg_img_scale, "Input-image preservation; 1.0 disables it."),
        "cfg_interval_start": fraction(start, "Guidance is applied for timesteps in [start, end]."),
        "cfg_interval_end": fraction(end, "Guidance is applied for timesteps in [start, end]."),
        "timestep_shift": ("FLOAT", {"default": defaults.timestep_shift, "min": 0.1, "max": 20.0, "step": 0.1,
                                     "tooltip": "Higher spends more steps on layout, lower on detail."}),
        "cfg_renorm_min": fraction(defaults.cfg_renorm_min, "Guidance renormalisation floor; 1.0 disables it."),
        "cfg_renorm_type": (list(RENORM_TYPES), {"default": defaults.cfg_renorm_type,
                                                 "tooltip": "global: all tokens; channel: per token; "
                                                            "text_channel: per token, text guidance only."}),
    }


def core_sampler_kwargs(inputs: dict) -> dict:
    """Maps the node's widget values onto the core's keyword arguments."""
    return {
        "steps": int(inputs["steps"]),
        "cfg_text_scale": float(inputs["cfg_text_scale"]),
        "cfg_img_scale": float(inputs["cfg_img_scale"]),
        "cfg_interval": (float(inputs["cfg_interval_start"]), float(inputs["cfg_interval_end"])),
        "timestep_shift": float(inputs["timestep_shift"]),
        "cfg_renorm_min": float(inputs["cfg_renorm_min"]),
        "cfg_renorm_type": inputs["cfg_renorm_type"],
        "step_cache": None if inputs.get("step_cache", "off") == "off" else inputs["step_cache"],
    }


def plan_or_none(thinking) -> str | None:
    """Only an empty box means 'no plan'. Any other text, even blank lines, is used as the plan: the Think node
    passes on whatever the model wrote, and that must give the same image as BAGEL's integrated think."""
    return thinking if thinking else None
