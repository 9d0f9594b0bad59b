import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for path in (HERE, REPO_ROOT):
    if str(path) not in sys.path:
        sys.path.append(str(path))

from fake_vllm_omni import FakeVllmOmni  # noqa: E402


@pytest.fixture
def fake_server():
    with FakeVllmOmni() as fake:
        yield fake
