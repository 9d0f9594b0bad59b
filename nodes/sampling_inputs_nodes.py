"""NOISE and SIGMAS for ComfyUI's SamplerCustomAdvanced that reproduce Text to Image: BAGEL's seeded noise and
BAGEL's shifted schedule (nodes/comfy_model/noise.py, schedule.py)."""
from .comfy_model.noise import BagelNoise
from .comfy_model.schedule import bagel_sigmas
from .sampler_inputs import SEED_MAX, TEXT_TO_IMAGE_DEFAULTS, sampler_input_types, seed_input


class BagelMoTNoise:
    DESCRIPTION = (
        "The starting noise BAGEL-MoT Text to Image draws for this seed, for SamplerCustomAdvanced: the same seed "
        "and settings give the same image. Image k of a batch uses seed + k. Differs from core Random Noise, "
        "which draws in another order."
    )
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = ("NOISE",)
    RETURN_NAMES = ("noise",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced's noise.",)
    FUNCTION = "get_noise"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": seed_input()}}

    def get_noise(self, seed):
        return (BagelNoise(seed % (SEED_MAX + 1)),)


class BagelMoTSigmas:
    DESCRIPTION = (
        "BAGEL's flow-matching schedule as SIGMAS for SamplerCustomAdvanced (use KSamplerSelect euler for BAGEL's "
        "own sampler). steps means what it means on Text to Image: 50 timesteps, 49 model steps."
    )
    CATEGORY = "BAGEL-MoT"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced's sigmas.",)
    FUNCTION = "get_sigmas"

    @classmethod
    def INPUT_TYPES(cls):
        widgets = sampler_input_types(TEXT_TO_IMAGE_DEFAULTS)
        return {"required": {"steps": widgets["steps"], "timestep_shift": widgets["timestep_shift"]}}

    def get_sigmas(self, steps, timestep_shift):
        return (bagel_sigmas(int(steps), float(timestep_shift)),)


NODE_CLASS_MAPPINGS = {"BagelMoTNoise": BagelMoTNoise, "BagelMoTSigmas": BagelMoTSigmas}
NODE_DISPLAY_NAME_MAPPINGS = {"BagelMoTNoise": "BAGEL-MoT Noise", "BagelMoTSigmas": "BAGEL-MoT Schedule"}
