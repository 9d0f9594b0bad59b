"""BAGEL's thinking (its written plan before an image) for a conditioning, with the MODEL's weights.

As Text to Image and Edit do with think on: the context gets BAGEL's think system prompt, the model decodes its
plan from it (greedy, or sampled with the seed), and the plan follows the context's items. The system prompt is
also part of BAGEL's CFG contexts; the BAGEL guider adds it to the other branches (guider.py).
"""
import torch

import comfy.model_management as mm

from bagel_model.errors import BagelInputError
from bagel_model.generation.context_request import prefill_request
from bagel_model.text.framing import GEN_THINK_SYSTEM_PROMPT, extract_generated_text

from .context import conditioning_contexts, replace_contexts


def think_into(model, conditioning, max_think_tokens: int, do_sample: bool, temperature: float, seed: int,
               progress=None):
    """(conditioning with the plan, the plan). ``model``: the BAGEL MODEL patcher (its LoRAs apply)."""
    if max_think_tokens < 1:
        raise BagelInputError(f"max_think_tokens must be at least 1, got {max_think_tokens}.")
    if do_sample and not temperature > 0:
        raise BagelInputError(f"temperature must be > 0 when sampling, got {temperature}.")
    base = model.model
    if not hasattr(base, "bagel_core"):
        raise ValueError("Think into Conditioning needs the BAGEL-MoT Model Loader's model; this MODEL is "
                         f"a {type(base).__name__}.")
    request = conditioning_contexts(conditioning, "conditioning")[0].with_system_prompt(GEN_THINK_SYSTEM_PROMPT)
    base.before_load()
    mm.load_models_gpu([model])
    runtime, tokenizer = base.bagel_core
    with torch.no_grad():
        context = prefill_request(runtime, tokenizer, request, torch.Generator("cpu").manual_seed(seed))
        generator = torch.Generator("cpu").manual_seed(seed) if do_sample else None
        ids = runtime.decode_text(context, max_think_tokens, do_sample, temperature, generator, progress)
    plan = extract_generated_text(tokenizer, ids)
    out = replace_contexts(conditioning, "conditioning", lambda r: r.with_plan(GEN_THINK_SYSTEM_PROMPT, plan))
    return out, plan
