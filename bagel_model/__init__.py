"""Pure-PyTorch, checkpoint-compatible BAGEL-7B-MoT inference (understand, text-to-image, edit, think)."""
from .errors import BagelCheckpointError, BagelError, BagelInputError
from .pipeline import BagelPipeline, BagelResult
from .testing import make_test_checkpoint

__all__ = ["BagelPipeline", "BagelResult", "BagelError", "BagelInputError", "BagelCheckpointError",
           "make_test_checkpoint"]
