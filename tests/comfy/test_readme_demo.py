"""The README's first set-up command: tools/run_demo.py starts ComfyUI, runs the bundled text-to-image workflow and
saves an image; with no weights it first writes the random demo checkpoint, never under the real model's name, and
says so. The command works again when run a second time."""
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from comfy_server import PACK_FOLDER_NAME, REPO_ROOT

PACK_CLONE_NAME = "ComfyUI-BagelMoT"


def readme_command_1() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("1. Install and run a bundled workflow end to end", 1)[1]
    return re.search(r"```bash\n\s*(.+?)\n\s*```", block, flags=re.S).group(1).strip()


def test_readme_command_1_clones_only_once_and_runs_the_demo_each_time(tmp_path):
    """The one-liner itself, run twice from custom_nodes with `git` and `python` replaced by recorders: the second
    run must not clone again (a real `git clone` dies on an existing folder), and both runs install and run."""
    tools, custom_nodes, calls = tmp_path / "bin", tmp_path / "custom_nodes", tmp_path / "calls.txt"
    tools.mkdir()
    custom_nodes.mkdir()
    (tools / "git").write_text(f'#!/bin/sh\necho "git $*" >> {calls}\n'
                               f'if [ -e "{PACK_CLONE_NAME}" ]; then echo "fatal: destination path already exists" >&2;'
                               f' exit 128; fi\nmkdir "{PACK_CLONE_NAME}"\n')
    (tools / "python").write_text(f'#!/bin/sh\necho "python $*" >> {calls}\n')
    for tool in ("git", "python"):
        (tools / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    command = readme_command_1()
    for attempt in (1, 2):
        run = subprocess.run(["bash", "-c", command], cwd=custom_nodes, env=env, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, (attempt, run.stderr)
    lines = calls.read_text().splitlines()
    assert [line for line in lines if line.startswith("git ")] == [
        f"git clone https://github.com/bagel-mot/{PACK_CLONE_NAME}"]
    runs = [line for line in lines if line.startswith("python ")]
    assert runs == [f"python -m pip install -r {PACK_CLONE_NAME}/requirements.txt",
                    f"python {PACK_CLONE_NAME}/tools/run_demo.py --comfyui .."] * 2


def _run_demo(comfyui_path, base, timeout=1200, env=None):
    return subprocess.run([sys.executable, "tools/run_demo.py", "--comfyui", str(comfyui_path),
                           "--base-directory", str(base)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_readme_main_command_runs_the_demo_workflow_twice(comfyui_path, tmp_path):
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    first = _run_demo(comfyui_path, base)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    demo = base / "models" / "bagel" / "BAGEL-demo-random"
    assert sorted(p.name for p in (base / "models" / "bagel").iterdir()) == [demo.name]
    assert f"writing a random demo checkpoint to {demo}" in first.stderr
    second = _run_demo(comfyui_path, base)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"using the random demo checkpoint written earlier: {demo}" in second.stderr
    for run in (first, second):
        report = run.stderr
        assert f"on {demo}." in report and "the image is noise" in report
        assert "BagelMoTTextToImage: 1024x1024, 50 steps -> 256x256, 20 steps" in report
        assert f'hf download ByteDance-Seed/BAGEL-7B-MoT --local-dir "{base / "models" / "bagel" / "BAGEL-7B-MoT"}"' \
            in report
        assert f"Delete the demo checkpoint: {demo}" in report and "> BAGEL-MoT Text to Image," in report
        assert "tools/run_demo.py --comfyui" in report.split("Or run this demo again")[1]
        saved = re.findall(r"^Saved (.+\.png)$", report, flags=re.M)
        assert saved, report[-3000:]
        for path in saved:
            assert path.startswith(str(base / "output"))
            with Image.open(path) as image:
                assert image.size == (256, 256)
                assert len(np.unique(np.asarray(image.convert("L")))) > 16  # a decoded image, not a flat fill
    assert sorted(p.name for p in (base / "models" / "bagel").iterdir()) == [demo.name]


def test_demo_shows_comfyui_log_and_fix_when_comfyui_cannot_start(comfyui_path, tmp_path):
    """ComfyUI 0.3.64 imports `requests` without listing it: hide it and check what the user is told."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "requests.py").write_text("raise ModuleNotFoundError(\"No module named 'requests'\", name='requests')\n")
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "models" / "bagel" / "BAGEL-real").mkdir(parents=True)
    (base / "models" / "bagel" / "BAGEL-real" / "ema.safetensors").write_bytes(b"")  # skips the demo checkpoint
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))}
    run = _run_demo(comfyui_path, base, timeout=300, env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback (most recent call last)" not in run.stderr.split("Last lines of ComfyUI's log")[0]
    assert "ComfyUI exited with code" in run.stderr and "Last lines of ComfyUI's log" in run.stderr
    assert "  | ModuleNotFoundError: No module named 'requests'" in run.stderr  # the log tail itself
    assert f"{sys.executable} -m pip install requests" in run.stderr
    again = run.stderr.split("then run the demo again: ", 1)[1].splitlines()[0]
    assert again == (f"cd {REPO_ROOT} && {sys.executable} tools/run_demo.py --comfyui {comfyui_path} "
                     f"--base-directory {base}")  # a command that works from anywhere, clone or no clone
