from pathlib import Path

import pytest

from bagel_model import BagelPipeline, make_test_checkpoint


@pytest.fixture(scope="session")
def speed_checkpoint(tmp_path_factory) -> Path:
    return make_test_checkpoint(tmp_path_factory.mktemp("speed") / "BAGEL-tiny", "tiny", seed=0)


@pytest.fixture(scope="session", params=["fp32", "bf16"])
def speed_pipe(request, speed_checkpoint) -> BagelPipeline:
    return BagelPipeline.from_pretrained(speed_checkpoint, device="cpu", compute_dtype=request.param)


@pytest.fixture(scope="session")
def fp32_pipe(speed_checkpoint) -> BagelPipeline:
    return BagelPipeline.from_pretrained(speed_checkpoint, device="cpu", compute_dtype="fp32")
