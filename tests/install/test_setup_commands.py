"""README keeps exactly two set-up commands; .ci/run runs the second one itself, and it installs what the tests
need (pytest, requests for ComfyUI's start-up) on top of a plain ComfyUI environment."""
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
    as_in_ci = second.replace("python -m", '"$PY" -m').replace("COMFYUI_PATH=../..", 'COMFYUI_PATH="$WORK/ComfyUI"')
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert any(line.startswith(as_in_ci) for line in ci_lines), as_in_ci


def test_test_requirements_cover_what_the_tests_import():
    lines = [line.split("#")[0].strip() for line in (REPO_ROOT / "requirements-test.txt").read_text().splitlines()]
    names = {re.split(r"[=<>~ ]", line)[0].lower() for line in lines if line}
    assert {"pytest", "requests", "selenium", "bitsandbytes"} <= names
    assert "-r requirements.txt" in lines
