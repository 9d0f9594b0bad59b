"""README keeps exactly two set-up commands, both typed in ComfyUI/custom_nodes/; .ci/run runs the second one's
inner part itself from the pack folder (on ComfyUI 0.3.64 and 0.33.0, with the slow tier on), and it installs what
the tests need on top of a plain ComfyUI environment. Both commands run as written in
tests/comfy/test_readme_demo.py. Without COMFYUI_PATH a run says on its last line that the ComfyUI tiers did not
run."""
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_CLONE_NAME = "ComfyUI-BagelMoT"
COUNT_WORDS = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}


def _setup_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set-up: the two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_two_setup_commands_and_ci_runs_the_second():
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert "tools/run_demo.py --comfyui .." in commands[0]
    inner = "python -m pip install -r requirements-test.txt && COMFYUI_PATH=../.. python -m pytest tests"
    assert commands[1] == f"(cd {PACK_CLONE_NAME} && {inner})"  # from custom_nodes, like command 1
    second = inner
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
    assert {"pytest", "requests", "selenium", "bitsandbytes", "gguf"} <= names
    assert "-r requirements.txt" in lines
    added = sorted(name for name in names if not name.startswith("-r"))
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    sentence = readme.split("`requirements-test.txt` adds ", 1)[1].split(". ", 1)[0]
    assert sentence.startswith(f"{COUNT_WORDS[len(added)]} packages"), (sentence, added)
    assert all(name in sentence.lower() for name in added), (sentence, added)


def _pytest_without_comfyui(extra_env: dict) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("COMFYUI_PATH", "CI")}
    return subprocess.run([sys.executable, "-m", "pytest", "tests/install/test_license.py", "tests/comfy/test_templates.py",
                           "-q", "-p", "no:cacheprovider"], cwd=REPO_ROOT, env={**env, **extra_env},
                          capture_output=True, text=True, timeout=300)


def test_a_run_without_comfyui_says_on_its_last_line_that_the_comfyui_tiers_did_not_run():
    run = _pytest_without_comfyui({})
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert lines[-1].startswith("ComfyUI tiers not run: set COMFYUI_PATH"), lines[-3:]
    assert "deselected" in lines[-2] and "skipped" not in lines[-2], lines[-3:]
    assert run.stdout.count("ComfyUI tiers not run") == 1, run.stdout[-3000:]  # said once, not once per test


def test_a_ci_run_without_comfyui_stops_with_one_message():
    run = _pytest_without_comfyui({"CI": "true"})
    output = run.stdout + run.stderr
    assert run.returncode == 4, output[-3000:]
    assert output.count("ComfyUI tiers not run: set COMFYUI_PATH") == 1, output[-3000:]
    assert " passed" not in output
