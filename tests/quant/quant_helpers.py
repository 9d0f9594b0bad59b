"""Helpers shared by the tests in tests/quant (a uniquely named module: every test folder has a conftest)."""
from bagel_model import BagelPipeline
from PIL import Image

PRECISIONS = ("bf16", "fp16", "fp32", "nf4", "int8")


def run_flows(pipe: BagelPipeline) -> dict:
    """Every public flow at the smallest sizes the tiny preset allows; returns comparable outputs."""
    image = Image.new("RGB", (96, 80), (200, 40, 90))
    t2i = pipe.generate_image("a red cube", width=64, height=64, steps=4, seed=1)
    edit = pipe.edit_image([image], "make it blue", steps=4, seed=1)
    und = pipe.understand([image], "What is this?", max_new_tokens=4)
    plan = pipe.think("draw a cat", max_think_tokens=4)
    return {"t2i": t2i.latents[0], "edit": edit.latents[0], "t2i_image": t2i.images[0],
            "understand": und.token_ids, "think": plan.token_ids}
