"""tools/check_remote.py, run as a user would, against the fake vLLM-Omni server."""
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "check_remote.py"


def check(url, *extra):
    return subprocess.run([sys.executable, str(TOOL), url, "--size", "64", "--steps", "3", *extra],
                          capture_output=True, text=True, timeout=300)


def test_every_mode_passes_and_the_probes_see_what_the_server_reads(fake_server, tmp_path):
    fake_server.honours["timestep_shift"] = False  # like a vLLM-Omni version that fixes the shift at 3.0
    run = check(fake_server.url, "--out", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    for mode in ("text to image", "think + text to image", "edit (native size)", "edit (custom size)",
                 "understand", "understand + think", "think (plan)", "concurrent requests"):
        assert f"PASS {mode}:" in run.stdout
    assert "plan of" in run.stdout and "reasoning and answer split" in run.stdout
    assert "NOTE the server ignores timestep_shift" in run.stdout
    assert "NOTE the server honours cfg_text_scale" in run.stdout and "honours seed" in run.stdout
    assert (tmp_path / "text_to_image.png").is_file()
    assert {request["modality"] for request in fake_server.requests} == {"image", "text"}


def test_a_failing_mode_is_reported_and_sets_the_exit_status(fake_server):
    fake_server.fail_with = (500, {"error": {"message": "stage 1 crashed"}})
    run = check(fake_server.url, "--no-probes")
    assert run.returncode == 1 and "FAIL text to image:" in run.stdout and "stage 1 crashed" in run.stdout


def test_an_unreachable_server_stops_at_once():
    run = check("http://127.0.0.1:9")
    assert run.returncode == 2 and "refused the connection" in run.stderr
