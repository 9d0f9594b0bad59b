"""Pure-PyTorch, checkpoint-compatible BAGEL-7B-MoT inference (understand, text-to-image, edit, think)."""
from .errors import BagelCheckpointError, BagelError, BagelInputError
from .pipeline import BagelPipeline, BagelResult

__all__ = ["BagelPipeline", "BagelResult", "BagelError", "BagelInputError", "BagelCheckpointError",
           "make_test_checkpoint"]


def make_test_checkpoint(*args, **kwargs):
    """Writes a random checkpoint in the real on-disk layout (see ``bagel_model.testing``)."""
    from .testing import make_test_checkpoint as _make

    return _make(*args, **kwargs)
