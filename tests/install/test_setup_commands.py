"""README keeps exactly two set-up commands; .ci/run runs the second one itself (on ComfyUI 0.3.64 and 0.33.0, with
the slow tier on), and it installs what the tests need (pytest, requests for ComfyUI's start-up) on top of a plain
ComfyUI environment."""
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _setup_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set-up: the two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_two_setup_commands_and_ci_runs_the_second():
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert "python tools/run_demo.py --comfyui ../.." in commands[0]
    second = commands[1]
    assert second == "python -m pip install -r requirements-test.txt && COMFYUI_PATH=../.. python -m pytest tests"
    # .ci/run runs it with each ComfyUI's venv Python and source folder: the whole suite on 0.3.64, the ComfyUI
    # tiers (tests/comfy) on 0.33.0 (the pure core tests run once).
    as_in_ci = second.replace("python -m", '"$PY" -m').replace("COMFYUI_PATH=../..", 'COMFYUI_PATH="$COMFYUI"')
    ci_text = (REPO_ROOT / ".ci" / "run").read_text()
    ci_lines = [line.strip() for line in ci_text.splitlines()]
    assert any(line.startswith(as_in_ci + " ") or line == as_in_ci for line in ci_lines), as_in_ci
    assert any(line.startswith(as_in_ci + "/comfy ") for line in ci_lines), as_in_ci + "/comfy"
    for needed in ('PY="$WORK/v064/venv/bin/python" COMFYUI="$WORK/v064/ComfyUI"',
                   'PY="$WORK/v033/venv/bin/python" COMFYUI="$WORK/v033/ComfyUI"',
                   "ComfyUI-a125cd8.tar.gz", "ComfyUI-0.33.0-0f1fa67.tar.gz",
                   "export CI=true BAGEL_SLOW_TESTS=1"):
        assert needed in ci_text, needed


def test_readme_names_the_slow_tier_flag_and_where_each_tier_runs():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    tests_section = readme.split("## Tests", 1)[1].split("\n## ", 1)[0]
    for needed in ("BAGEL_SLOW_TESTS=1", "0.3.64", "0.33.0", "tests/comfy", "COMFYUI_FRONTEND_LATEST", "../shared"):
        assert needed in tests_section, needed


def test_test_requirements_cover_what_the_tests_import():
    lines = [line.split("#")[0].strip() for line in (REPO_ROOT / "requirements-test.txt").read_text().splitlines()]
    names = {re.split(r"[=<>~ ]", line)[0].lower() for line in lines if line}
    assert {"pytest", "requests", "selenium", "bitsandbytes"} <= names
    assert "-r requirements.txt" in lines
