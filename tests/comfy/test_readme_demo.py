"""The README's first set-up command: tools/run_demo.py starts ComfyUI, runs the bundled text-to-image workflow and
saves an image; with no weights it first writes the random demo checkpoint, never under the real model's name."""
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
