"""Shared fixtures: a tiny random checkpoint, one pipeline per precision (fp32 compute: machine-independent),
and the outputs of every flow for each precision."""
from pathlib import Path

import pytest
import torch

from bagel_model import BagelPipeline, make_test_checkpoint

from quant_helpers import PRECISIONS, require_bitsandbytes, run_flows

require_bitsandbytes()


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
