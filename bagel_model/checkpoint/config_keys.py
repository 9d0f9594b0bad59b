"""Config keys of fine-tuned BAGEL variants: which we use, which are harmless, which would change the model.

``BagelConfig.from_json`` keeps the keys our model reads and ignores the rest of a Hugging Face config. A
fine-tune (RecA, Echo-4o, NHR-Edit, Zebra-CoT, ...) may add keys; ignoring one silently could run a different
model than its authors trained. So every key is sorted: used by us, known to be irrelevant to inference (HF
bookkeeping), known to change the architecture (refused unless it has the value BAGEL itself uses), or unknown
(loaded, and named in the log so a wrong result can be traced to it).
"""
from __future__ import annotations

import logging
from dataclasses import fields

from ..config import AEConfig, LLMConfig, ViTConfig
from ..errors import BagelCheckpointError

log = logging.getLogger(__name__)

# Bookkeeping and training-only keys of Qwen2 / SigLIP configs and of BAGEL's own configs.
HARMLESS = frozenset({
    "architectures", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range",
    "max_window_layers", "model_type", "sliding_window", "torch_dtype", "transformers_version", "use_cache",
    "_name_or_path", "is_causal", "freeze_und", "hidden_dropout", "hidden_dropout_prob", "output_attentions",
    "output_hidden_states", "return_dict", "projection_dim", "layer_norm_eps", "qk_norm", "tie_word_embeddings",
    "layer_module", "dtype", "num_channels", "vision_use_head", "_attn_implementation_autoset",
})
# Keys that change the computation; accepted only with the value BAGEL-7B-MoT uses (spec §1.2).
MUST_EQUAL = {"rope_scaling": (None,), "use_sliding_window": (False,), "rope": (False, None),
              "attention_bias": (False,), "mlp_bias": (False,)}


def check_config_keys(name: str, values: dict, source: str) -> list[str]:
    """Refuses a key that would change the model; returns (and logs) the unknown keys that are ignored."""
    known = {f.name for cls in (LLMConfig, ViTConfig, AEConfig) for f in fields(cls)}
    for key, allowed in MUST_EQUAL.items():
        if key in values and values[key] not in allowed:
            raise BagelCheckpointError(
                f"{name} of {source} sets {key}={values[key]!r}; this loader implements BAGEL-7B-MoT with "
                f"{key}={allowed[0]!r} only and would run a different model. Remove the checkpoint or ask for "
                f"support of this variant.")
    unknown = sorted(k for k in values if k not in known and k not in HARMLESS and k not in MUST_EQUAL)
    if unknown:
        log.warning("%s of %s has key(s) this loader does not use: %s. The model is loaded as BAGEL-7B-MoT; if "
                    "its results look wrong, these keys are the first suspects.", name, source, ", ".join(unknown))
    return unknown
