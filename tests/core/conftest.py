import os
from pathlib import Path

import pytest

from bagel_model import BagelPipeline, make_test_checkpoint

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "golden" / "tiny"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_test_checkpoint(tmp_path_factory.mktemp("tiny") / "BAGEL-tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_checkpoint) -> BagelPipeline:
    return BagelPipeline.from_pretrained(tiny_checkpoint, device="cpu", compute_dtype="fp32")


@pytest.fixture(scope="session")
def golden() -> Path:
    if not (GOLDEN / "reference" / "reference.json").is_file():
        message = (f"golden reference files not found at {GOLDEN}: ../shared (the team's shared folder with "
                   f"golden/tiny) is not beside this checkout; put it at {GOLDEN.parents[1]} to run the parity tests")
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI=true: required, not skipped)")
        pytest.skip(message)
    return GOLDEN
