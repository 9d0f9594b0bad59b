"""The core's declared dependencies are enough: a fresh venv with only requirements.txt and torch (no ComfyUI,
none of its requirements) imports every module of bagel_model and runs the CLI on a test checkpoint, so an
import the requirements do not declare fails here instead of on a user's machine."""
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# A CPU wheel of this version is kept in the local wheel folder of our CI machines (fast, no CUDA download);
# BAGEL_PLAIN_VENV_TORCH overrides it elsewhere.
TORCH_REQUIREMENT = os.environ.get("BAGEL_PLAIN_VENV_TORCH", "torch==2.13.0")
# It downloads torch where no local wheel is kept, so outside CI it runs only when asked for.
RUN_IT = any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("CI", "BAGEL_PLAIN_VENV"))


def _run(command, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=1200,
                            **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _core_modules() -> list[str]:
    """Every module of the bagel_model package, found on disk (importing them here would prove nothing)."""
    names = []
    for path in sorted((REPO_ROOT / "bagel_model").rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.skipif(not RUN_IT, reason="builds a venv and installs torch: runs under CI=true or BAGEL_PLAIN_VENV=1")
def test_requirements_txt_alone_runs_the_core_and_cli(tmp_path):
    venv.create(tmp_path / "venv", with_pip=True)  # no system site-packages: nothing leaks in from ComfyUI's env
    python = str(tmp_path / "venv" / ("Scripts" if os.name == "nt" else "bin") / "python")
    _run([python, "-m", "pip", "install", "--quiet", "-r", "requirements.txt", TORCH_REQUIREMENT])
    leaked = subprocess.run([python, "-c", "import comfy"], capture_output=True, cwd=tmp_path)
    assert leaked.returncode != 0, "the plain venv must not see ComfyUI"
    _run([python, "-c", "import importlib, sys\nfor name in sys.argv[1:]: importlib.import_module(name)",
          *_core_modules()])
    checkpoint = tmp_path / "BAGEL-tiny"
    _run([python, "-m", "bagel_model", "make-test-checkpoint", str(checkpoint), "--preset", "tiny"])
    common = ["--model", str(checkpoint), "--device", "cpu"]
    _run([python, "-m", "bagel_model", "generate", *common, "--prompt", "a red cube", "--width", "32",
          "--height", "32", "--steps", "2", "--out", str(tmp_path / "out.png")])
    _run([python, "-m", "bagel_model", "understand", *common, "--image", str(tmp_path / "out.png"),
          "--prompt", "What is this?", "--max-new-tokens", "2"])
    assert (tmp_path / "out.png").is_file()


def test_pyproject_dependencies_match_requirements_txt():
    import tomllib

    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    assert sorted(declared) == sorted(line for line in lines if line and not line.startswith("#"))
