"""Fixtures for the tests that need ComfyUI (COMFYUI_PATH = a ComfyUI source folder).

Without COMFYUI_PATH these tests skip (with the reason) locally but FAIL under CI=true, so a CI run can never
pass by skipping them. The slow tier (tests marked `slow`) is gated in tests/conftest.py.
"""
import asyncio
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tools"))
if str(REPO_ROOT) not in sys.path:  # for `import bagel_model` when pytest is not started from the root
    sys.path.append(str(REPO_ROOT))

from comfy_http import locate_comfyui  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required, not skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    raw = os.environ.get("COMFYUI_PATH", "")
    require(bool(raw) and (locate_comfyui(raw) / "main.py").is_file(),
            f"COMFYUI_PATH must point to a ComfyUI source folder with main.py (got {raw!r}); "
            "e.g. COMFYUI_PATH=../.. from ComfyUI/custom_nodes/<this pack>, or run bash .ci/run")
    path = locate_comfyui(raw)
    # ComfyUI's own `nodes` module must win over this repository's `nodes/` package.
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return path


@pytest.fixture(scope="session")
def comfy_nodes(comfyui_path):
    """ComfyUI's nodes.py with this pack loaded through ComfyUI's own custom-node loader."""
    from comfy.cli_args import args

    args.cpu = True  # as `main.py --cpu`; must be set before comfy.model_management is imported
    import nodes

    assert Path(nodes.__file__).resolve().parent == comfyui_path, f"wrong 'nodes' module: {nodes.__file__}"
    loaded = asyncio.run(nodes.load_custom_node(str(REPO_ROOT)))
    assert loaded, "ComfyUI could not import the pack (see the log above)"
    return nodes


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from bagel_model import make_test_checkpoint

    folder = tmp_path_factory.mktemp("checkpoints") / "BAGEL-tiny"
    make_test_checkpoint(str(folder), preset="tiny")
    return folder


@pytest.fixture(scope="session")
def start_comfy(comfyui_path, tiny_checkpoint, tmp_path_factory):
    """start_comfy(front_end_root=None, extra_args=()) -> a running ComfyServer (one per frontend and
    extra command-line arguments, reused)."""
    from comfy_server import ComfyServer, prepare_base_dir

    servers = {}

    def start(front_end_root: str | None = None, extra_args: tuple[str, ...] = ()):
        key = (front_end_root or "pinned", tuple(extra_args))
        if key not in servers:
            base = tmp_path_factory.mktemp("comfy-base")
            servers[key] = ComfyServer(comfyui_path, base, prepare_base_dir(base, tiny_checkpoint), front_end_root,
                                       tuple(extra_args))
        return servers[key]

    yield start
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def server(start_comfy):
    return start_comfy()


@pytest.fixture()
def progress_updates(comfy_nodes, monkeypatch):
    """Every update the code under test gives ComfyUI's ProgressBar, as (value, total, preview), in order.

    Recorded at ProgressBar.update_absolute, not at ComfyUI's progress hook: newer ComfyUI calls the hook only
    on the first and last update, with a preview, or after 0.1 s and 0.5 %, so hook calls cannot be counted.
    Set `progress_updates.on_update = fn(value, total)` to act (e.g. press Cancel) at an update.
    """
    import comfy.utils

    class Updates(list):
        on_update = None

    updates = Updates()
    original = comfy.utils.ProgressBar.update_absolute

    def update_absolute(bar, value, total=None, preview=None):
        updates.append((value, bar.total if total is None else total, preview))
        if updates.on_update is not None:
            updates.on_update(value, bar.total if total is None else total)
        return original(bar, value, total, preview)

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", update_absolute)
    return updates
