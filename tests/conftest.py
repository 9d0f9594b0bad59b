"""What every test folder shares: the slow tier, and what a run without ComfyUI does.

Tests marked `slow` (robustness sweep, browser tests: README, "Tests") run only with BAGEL_SLOW_TESTS=1, which
.ci/run sets. Without it they skip with that reason; under CI=true they fail instead, so a CI run cannot leave
them out unnoticed. Checked before any fixture of the test (a browser, a server) is set up.

Without COMFYUI_PATH (a ComfyUI source folder with main.py) the tests that need ComfyUI (those using the
`comfyui_path` fixture: the node, server and browser tiers) are not run at all, and the run's last line says so:
"ComfyUI tiers not run: set COMFYUI_PATH ...", so the run never looks complete. Under CI=true the run stops at
once with that one message instead.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from comfy_http import locate_comfyui  # noqa: E402

NEEDS_COMFYUI = "comfyui_path"  # the fixture every ComfyUI-tier test depends on (tests/comfy/conftest.py)
COMFYUI_MISSING = "ComfyUI tiers not run: set COMFYUI_PATH to a ComfyUI source folder (the one with main.py)"

_NOT_RUN = pytest.StashKey[str]()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SLOW_TESTS_ON = os.environ.get("BAGEL_SLOW_TESTS", "").lower() in ("1", "true", "yes")
SLOW_REASON = "slow tier (robustness sweep, browser tests): runs with BAGEL_SLOW_TESTS=1 (.ci/run sets it; README, 'Tests')"


def pytest_runtest_setup(item):
    if item.get_closest_marker("slow") is None or SLOW_TESTS_ON:
        return
    if IN_CI:
        pytest.fail(f"{SLOW_REASON} (CI=true: required, not skipped)")
    pytest.skip(SLOW_REASON)


def comfyui_path_problem() -> str | None:
    """None when COMFYUI_PATH names a folder with main.py, else what is wrong with it."""
    raw = os.environ.get("COMFYUI_PATH", "")
    if not raw:
        return "COMFYUI_PATH is not set"
    if (locate_comfyui(raw) / "main.py").is_file():
        return None
    return f"COMFYUI_PATH={raw!r} has no main.py"


@pytest.hookimpl(trylast=True)  # after -k/-m have chosen: only the chosen tests that need ComfyUI count
def pytest_collection_modifyitems(config, items):
    problem = comfyui_path_problem()
    needing = [item for item in items if NEEDS_COMFYUI in getattr(item, "fixturenames", ())]
    if problem is None or not needing:
        return
    if IN_CI:
        pytest.exit(f"{problem}; {len(needing)} tests need ComfyUI and CI=true requires them. {COMFYUI_MISSING}.",
                    returncode=pytest.ExitCode.USAGE_ERROR)
    items[:] = [item for item in items if NEEDS_COMFYUI not in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=needing)
    config.stash[_NOT_RUN] = f"{COMFYUI_MISSING} ({problem}; {len(needing)} tests need it, e.g. COMFYUI_PATH=../.. " \
                             f"from ComfyUI/custom_nodes/<this pack>)."


def pytest_unconfigure(config):
    """The very last line of the run (after pytest's own summary), when the ComfyUI tiers were left out."""
    message = config.stash.get(_NOT_RUN, None)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if message and reporter is not None:
        reporter.write_line(message, red=True, bold=True)
