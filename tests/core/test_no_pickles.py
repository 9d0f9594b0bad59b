"""Safetensors only: the benchmarks hand results around as safetensors in an output folder, never as pickles in
(or next to) the model folder, and no shipped code calls torch.save / torch.load / pickle."""
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_bench_autoencoder_writes_safetensors_into_its_output_folder_only(tiny_checkpoint, tmp_path):
    models = tiny_checkpoint.parent
    before = sorted(p.relative_to(models) for p in models.rglob("*"))
    run = subprocess.run([sys.executable, "bench/bench_autoencoder.py", "--model", str(tiny_checkpoint),
                          "--sizes", "32", "--out-dir", str(tmp_path / "out")], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"^\s+32 banded .* \d\.\d\de[-+]\d\d$", run.stdout, flags=re.M), run.stdout
    assert sorted(p.relative_to(models) for p in models.rglob("*")) == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ae_decode_32_banded.safetensors", "ae_decode_32_plain.safetensors"]


def test_no_pickle_serialisation_in_shipped_code():
    pattern = re.compile(r"\btorch\.(save|load)\(|\bimport pickle\b|\bpickle\.(dump|load)")
    offenders = [f"{path.relative_to(REPO_ROOT)}:{number}"
                 for folder in ("bagel_model", "nodes", "bench", "tools")
                 for path in sorted((REPO_ROOT / folder).rglob("*.py"))
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, offenders
