"""BAGEL's CLIP for the stock CLIP Text Encode: a tokenizer-only text encoder.

BAGEL has no separate text encoder: its understanding expert reads the prompt as part of the context the
generation expert attends to, and that context is prefilled once per sampling run by the MODEL (with the run's
LoRAs). So "encoding" here only checks the text against BAGEL's tokenizer and records it: the conditioning holds a
``ContextRequest`` with the text as its one segment (the empty string: no segment, BAGEL's context without text)
beside a placeholder tensor. No weights: the CLIP is free to load and never holds a copy of the model.
"""
import comfy.sd
import torch

from bagel_model.generation.context_request import ContextRequest

from .context import CONTEXT_KEY, placeholder

TOKENS_KEY = "bagel_text"


class BagelTokenizer:
    """``tokenize_with_weights`` keeps the text and its BAGEL token count (for ComfyUI's memory estimate)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def tokenize_with_weights(self, text: str, return_word_ids=False, **kwargs):
        if not isinstance(text, str):
            raise ValueError(f"BAGEL's CLIP encodes text; got {type(text).__name__}.")
        return {TOKENS_KEY: text, "token_count": len(self.tokenizer.encode(text)) if text else 0}

    def untokenize(self, token_weight_pair):
        return token_weight_pair

    def state_dict(self):
        return {}


class BagelTextEncoder(torch.nn.Module):
    """The ``cond_stage_model`` of BAGEL's CLIP: no parameters; ``encode_token_weights`` gives the placeholder
    cond, no pooled output, and the context request."""

    disable_offload = True  # nothing to offload: a plain ModelPatcher, never a dynamic one

    def __init__(self, device=None, dtype=None, model_options={}):
        super().__init__()
        self.dtypes = {torch.float32}

    def reset_clip_options(self):
        pass

    def set_clip_options(self, options):
        pass

    def encode_token_weights(self, tokens):
        text = tokens.get(TOKENS_KEY) if isinstance(tokens, dict) else None
        if text is None:
            raise ValueError("BAGEL's CLIP got tokens from another tokenizer; tokenize with the same clip.")
        request = ContextRequest(items=(text,) if text else ())
        return placeholder(), None, {CONTEXT_KEY: request}

    def load_sd(self, sd):
        return self.load_state_dict(sd, strict=False)


class _ClipTarget:
    """What comfy.sd.CLIP builds from: the encoder class, a tokenizer factory and no extra parameters."""

    def __init__(self, tokenizer):
        self.clip = BagelTextEncoder
        self.params = {}
        self.tokenizer = lambda embedding_directory=None, tokenizer_data={}: BagelTokenizer(tokenizer)


def bagel_clip(tokenizer) -> comfy.sd.CLIP:
    """A stock ``comfy.sd.CLIP`` around BAGEL's tokenizer, on the CPU (there is nothing to compute)."""
    cpu = torch.device("cpu")
    return comfy.sd.CLIP(target=_ClipTarget(tokenizer), model_options={"load_device": cpu, "offload_device": cpu,
                                                                      "initial_device": cpu})
