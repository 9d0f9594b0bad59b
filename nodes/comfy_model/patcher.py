"""The ModelPatcher class of BAGEL's MODEL: ComfyUI's own (dynamic where ComfyUI uses Dynamic VRAM) with a
check on weight patches, so a LoRA that cannot apply stops with a message instead of being dropped with a log
line or merged into quantized storage.

ComfyUI adds a patch to a weight as ``W + Δ`` in the weight's own storage. That is right for bf16, fp16 and
fp32 weights; BAGEL's NF4/INT8 Linears keep packed or integer codes with their own scales and its FP8 Linears
keep ``W / scale``, where ``W + Δ`` would be wrong, so those precisions refuse patches.
"""
import functools

import torch

PATCHABLE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
EXAMPLE_KEY = "language_model.model.layers.0.self_attn.q_proj"
NO_MATCH = (
    "This LoRA matches no weight of BAGEL's MODEL. BAGEL's LoRA keys are its checkpoint keys under "
    "'diffusion_model.': 'diffusion_model.<key>.lora_up.weight' / '.lora_down.weight' (+ '.alpha'), kohya "
    "'lora_unet_<key with _ for .>.lora_up.weight', or PEFT 'diffusion_model.<key>.lora_A.weight' / "
    f"'.lora_B.weight' — e.g. <key> = '{EXAMPLE_KEY}' (understanding expert) or '{EXAMPLE_KEY}_moe_gen' "
    "(generation expert). Is this a LoRA for another model?")
QUANTIZED = (
    "LoRAs and weight patches apply to BAGEL loaded in bf16, fp16 or fp32; this model is loaded as '{precision}', "
    "whose weight '{key}' is stored as {dtype}. Load the checkpoint with precision bf16 (or fp16/fp32) to use "
    "LoRAs.")


def _key_name(key) -> str:
    return key[0] if isinstance(key, tuple) else key


@functools.lru_cache(maxsize=None)
def bagel_patcher_class(base: type) -> type:
    """``base`` (ComfyUI's ModelPatcher or ModelPatcherDynamic) with the patch check; clones keep the class."""

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        if not patches:
            raise ValueError(NO_MATCH)
        state = self.model.state_dict(keep_vars=True)
        for key in patches:
            name = _key_name(key)
            tensor = state.get(name)
            if tensor is not None and tensor.dtype not in PATCHABLE_DTYPES:
                raise ValueError(QUANTIZED.format(precision=getattr(self.model, "precision", "?"), key=name,
                                                  dtype=str(tensor.dtype).replace("torch.", "")))
        return base.add_patches(self, patches, strength_patch, strength_model)

    return type(f"BagelMoT{base.__name__}", (base,), {"add_patches": add_patches, "__module__": __name__})
