"""The README's first set-up command: tools/run_demo.py starts ComfyUI, runs the bundled text-to-image workflow and
saves an image; with no weights it first writes the random demo checkpoint, never under the real model's name."""
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from comfy_server import PACK_FOLDER_NAME, REPO_ROOT


def test_readme_main_command_runs_the_demo_workflow(comfyui_path, tmp_path):
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"python tools/run_demo\.py --comfyui \.\./\.\.", readme)  # the command this test runs
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    run = subprocess.run([sys.executable, "tools/run_demo.py", "--comfyui", str(comfyui_path),
                          "--base-directory", str(base)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in (base / "models" / "bagel").iterdir()) == ["BAGEL-demo-random"]
    saved = re.findall(r"^Saved (.+\.png)$", run.stderr, flags=re.M)
    assert saved, run.stderr[-3000:]
    for path in saved:
        with Image.open(path) as image:
            assert image.size == (256, 256)
            assert len(np.unique(np.asarray(image.convert("L")))) > 16  # a decoded image, not a flat fill


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
    run = subprocess.run([sys.executable, "tools/run_demo.py", "--comfyui", str(comfyui_path),
                          "--base-directory", str(base)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback (most recent call last)" not in run.stderr.split("Last lines of ComfyUI's log")[0]
    assert "ComfyUI exited with code" in run.stderr and "Last lines of ComfyUI's log" in run.stderr
    assert "  | ModuleNotFoundError: No module named 'requests'" in run.stderr  # the log tail itself
    assert f"{sys.executable} -m pip install requests" in run.stderr
