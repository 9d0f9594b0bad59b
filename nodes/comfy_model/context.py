"""How a BAGEL context travels in a ComfyUI CONDITIONING.

The tokenizer-only CLIP (text_encoder.py) puts a ``ContextRequest`` under ``CONTEXT_KEY`` in the conditioning's
dict; the images node and the think node replace it with a longer one. Nothing is computed until a sampling
run prefills it (base_model.py). The cond tensor beside it is a placeholder (``PLACEHOLDER_SHAPE``) that no
other model can use.
"""
import torch

from bagel_model.generation.context_request import ContextRequest

CONTEXT_KEY = "bagel_mot_context"
PLACEHOLDER_SHAPE = (1, 1, 1)

NOT_BAGEL_CONDITIONING = (
    "The {name} conditioning was not made for BAGEL: it has no BAGEL context. Encode the prompt with a stock "
    "CLIP Text Encode whose clip input is the BAGEL-MoT Model Loader's 'clip' output (the empty string is the "
    "context without text), and add images with BAGEL-MoT Images into Context.")


FOR_ANOTHER_MODEL = (
    "This CONDITIONING was made with BAGEL's clip (the BAGEL-MoT Model Loader's 'clip' output) and only BAGEL's "
    "MODEL can use it: it holds a BAGEL context, not text embeddings. Connect it to a sampler or guider whose "
    "model is the BAGEL-MoT Model Loader's 'model', or encode the prompt with this model's own CLIP.")

# What ComfyUI itself does with a cond tensor on BAGEL's path (store, copy, move, compare shapes); anything else
# means another model is computing with it.
_HARMLESS = {"__get__", "__repr__", "__format__", "__reduce_ex__", "__setstate__", "size", "dim",
             "numel", "clone", "detach", "to", "cpu", "cuda", "contiguous", "requires_grad_", "element_size",
             "is_floating_point", "__len__", "__bool__"}


class BagelOnlyTensor(torch.Tensor):
    """The placeholder cond tensor: ComfyUI may carry it around; another model that computes with it gets
    ``FOR_ANOTHER_MODEL`` instead of a shape error deep inside its own code."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") not in _HARMLESS:
            raise ValueError(FOR_ANOTHER_MODEL)  # not TypeError: torch turns that into "unsupported operand"
        return super().__torch_function__(func, types, args, kwargs or {})

    def __deepcopy__(self, memo):
        return placeholder()


def placeholder() -> torch.Tensor:
    return torch.zeros(PLACEHOLDER_SHAPE).as_subclass(BagelOnlyTensor)


def context_of(entry: dict, name: str) -> ContextRequest:
    """The ContextRequest of one conditioning entry's dict; a clear error for another model's conditioning."""
    request = entry.get(CONTEXT_KEY)
    if not isinstance(request, ContextRequest):
        raise ValueError(NOT_BAGEL_CONDITIONING.format(name=name))
    return request


def conditioning_contexts(conditioning, name: str) -> list[ContextRequest]:
    """Every entry's ContextRequest; a clear error for an empty or foreign CONDITIONING."""
    if not isinstance(conditioning, list) or not conditioning:
        raise ValueError(f"The {name} input is not a CONDITIONING with at least one entry; connect a CLIP Text "
                         "Encode that uses the BAGEL-MoT Model Loader's clip.")
    return [context_of(entry[1], name) for entry in conditioning]


def replace_contexts(conditioning, name: str, change) -> list:
    """A copy of ``conditioning`` whose every entry's context is ``change(context)``."""
    out = []
    for cond, extra in conditioning:
        extra = dict(extra)
        extra[CONTEXT_KEY] = change(context_of(extra, name))
        out.append([cond, extra])
    return out
