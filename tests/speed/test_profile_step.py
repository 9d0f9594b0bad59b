"""bench/profile_step.py runs end to end on a tiny checkpoint and its accounting adds up (the numbers themselves are
machine-dependent and belong to the bench, not to an assert)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_profile_step_reports_every_kind_and_the_floor(speed_checkpoint):
    done = subprocess.run(
        [sys.executable, "bench/profile_step.py", "--checkpoint", str(speed_checkpoint), "--modes", "t2i", "edit",
         "--dtypes", "fp32", "--size", "64", "--reps", "1", "--gemm-reps", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for kind in ("GEMM", "attention", "norms", "RoPE", "activations", "gather/scatter/cat", "dtype casts", "rest",
                 "Python & dispatch"):
        assert re.search(rf"^  {re.escape(kind)} +-?\d+\.\d ms", out, re.M), f"{kind} missing:\n{out}"
    floors = re.findall(r"GEMM \+ attention kernels: (\d+\.\d+) s \((\d+\.\d) % of the step\): without any other "
                        r"work this step would be at most (\d+\.\d+)x faster", out)
    assert len(floors) == 2, out
    for seconds, share, bound in floors:
        assert float(seconds) > 0 and 0 < float(share)
        # The bound is the step over its GEMM + attention time, so it matches the printed share.
        assert abs(100 / float(bound) - float(share)) <= 0.06
    table = [line for line in out.splitlines() if line.startswith("| t2i, fp32") or line.startswith("| edit, fp32")]
    assert len(table) == 2, out
