"""Shared fixtures: a tiny random checkpoint, one pipeline per precision (fp32 compute: machine-independent),
and the outputs of every flow for each precision."""
from pathlib import Path

import pytest
import torch
from PIL import Image

from bagel_model import BagelPipeline, make_test_checkpoint

pytest.importorskip("bitsandbytes")

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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_test_checkpoint(tmp_path_factory.mktemp("quant") / "BAGEL-tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def pipes(tiny_checkpoint) -> dict:
    return {p: BagelPipeline.from_pretrained(tiny_checkpoint, precision=p, device="cpu", compute_dtype="fp32")
            for p in PRECISIONS}


@pytest.fixture(scope="session")
def flow_outputs(pipes) -> dict:
    with torch.no_grad():
        return {p: run_flows(pipe) for p, pipe in pipes.items()}
