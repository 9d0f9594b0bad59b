"""bench/gpu_check.py keeps working: its CPU mode runs the pack's nodes on a random tiny model under the real
ComfyUI and prints one ok row per mode (the GPU run itself needs a GPU and is not part of CI)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cpu_mode_prints_a_row_per_mode(comfyui_path):
    command = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--comfyui", str(comfyui_path),
               "--device", "cpu", "--dims", "tiny", "--size", "64", "--steps", "3", "--tokens", "2",
               "--precisions", "fp8_e4m3fn"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("fp8_e4m3fn | ")]
    assert [row[2] for row in rows] == ["t2i 64²", "edit 64²", "understand"], done.stdout
    for row in rows:
        assert row[-1] == "ok", row
        peak, seconds_per_step = float(row[3]), float(row[4])
        assert peak > 0 and seconds_per_step > 0, row  # measured, not NaN
