"""Helpers shared by the tests in tests/quant (a uniquely named module: every test folder has a conftest)."""
import os

import pytest
from bagel_model import BagelPipeline
from PIL import Image

PRECISIONS = ("bf16", "fp16", "fp32", "nf4", "int8", "fp8_e4m3fn")


def run_flows(pipe: BagelPipeline) -> dict:
    """Every public flow at the smallest sizes the tiny preset allows; returns comparable outputs."""
    image = Image.new("RGB", (96, 80), (200, 40, 90))
    t2i = pipe.generate_image("a red cube", width=64, height=64, steps=4, seed=1)
    edit = pipe.edit_image([image], "make it blue", steps=4, seed=1)
    und = pipe.understand([image], "What is this?", max_new_tokens=4)
    plan = pipe.think("draw a cat", max_think_tokens=4)
    return {"t2i": t2i.latents[0], "edit": edit.latents[0], "t2i_image": t2i.images[0],
            "understand": und.token_ids, "think": plan.token_ids}


def require_bitsandbytes() -> None:
    """Skip without bitsandbytes locally; under CI=true its absence is a failure, never a silent skip."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"bitsandbytes is required for the nf4/int8 tests under CI=true: {exc}", pytrace=False)
        pytest.skip(f"bitsandbytes is not installed ({exc}); pip install bitsandbytes", allow_module_level=True)
