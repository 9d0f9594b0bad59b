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
    assert [row[3] for row in rows] == ["t2i 64²", "edit 64²", "understand"], done.stdout
    for row in rows:
        assert row[-1] == "ok" and row[1] == "legacy", row
        peak, seconds_per_step = float(row[4]), float(row[5])
        assert peak > 0 and seconds_per_step > 0, row  # measured, not NaN


# ---- argument, device, budget and deadline handling on the CPU, with the CUDA calls injected ----------------

import importlib.util as _importlib_util
import subprocess as _subprocess
import time as _time
from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def gpu_check():
    spec = _importlib_util.spec_from_file_location("gpu_check_under_test", REPO / "bench" / "gpu_check.py")
    module = _importlib_util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_without_index_means_the_current_device(gpu_check):
    assert gpu_check.resolve_device("cuda", lambda: 0) == torch.device("cuda", 0)
    assert gpu_check.resolve_device("cuda:1", lambda: 0) == torch.device("cuda", 1)
    assert gpu_check.resolve_device("cpu") == torch.device("cpu")


class FakeComfy:
    def __init__(self):
        self.unloads = 0
        self.get_total_memory = lambda dev=None, torch_total_too=False: 141 * 1024 ** 3
        self.get_free_memory = lambda dev=None, torch_free_too=False: 140 * 1024 ** 3

    def unload_all_models(self):
        self.unloads += 1

    def soft_empty_cache(self):
        pass


def test_budget_caps_an_indexed_device_and_shows_comfyui_that_card(gpu_check, monkeypatch):
    calls = []

    def set_fraction(fraction, device=None):  # torch raises without an index (the defect fixed here)
        if device is None or torch.device(device).index is None:
            raise ValueError("Expected a torch.device with a specified index or an integer")
        calls.append((round(fraction, 4), torch.device(device)))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=141 * 1024 ** 3))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: 2 * 1024 ** 3)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 1024 ** 3)
    mm = FakeComfy()
    saved = mm.get_total_memory
    device = gpu_check.resolve_device("cuda", lambda: 0)
    with gpu_check.Budget(mm, device, 12):
        assert mm.get_total_memory("cuda:0") == 12 * 1024 ** 3
        assert mm.get_free_memory("cuda:0") == 10 * 1024 ** 3 + 1024 ** 3  # unreserved + torch's cached free
        assert mm.get_total_memory("cpu") == 141 * 1024 ** 3
    assert calls == [(round(12 / 141, 4), torch.device("cuda", 0)), (1.0, torch.device("cuda", 0))]
    assert mm.get_total_memory is saved and mm.unloads == 2  # models freed before and after the budget's rows


def test_defaults_fit_the_eight_minute_bound_and_bad_arguments_are_refused(gpu_check):
    args = gpu_check.parse_args(["--comfyui", "x"])
    assert args.device == "cuda" and args.max_minutes <= 8 and args.size == 1024 and args.budgets == [12, 16, 24]
    for bad in (["--max-minutes", "0"], ["--budgets", "12,-1"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(["--comfyui", "x", *bad])


def test_dynamic_vram_rows_only_where_comfy_aimdo_is_present(gpu_check, monkeypatch, tmp_path):
    args = gpu_check.parse_args(["--comfyui", "x", "--precisions", "bf16,nf4"])
    monkeypatch.setattr(gpu_check, "dynamic_vram_available", lambda root: True)
    assert gpu_check.plan_jobs(args, tmp_path) == [("bf16", "legacy"), ("bf16", "dynamic"), ("nf4", "legacy"),
                                                   ("nf4", "dynamic")]
    monkeypatch.setattr(gpu_check, "dynamic_vram_available", lambda root: False)
    assert gpu_check.plan_jobs(args, tmp_path) == [("bf16", "legacy"), ("nf4", "legacy")]
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "model_patcher.py").write_text("class ModelPatcher: pass\n")
    monkeypatch.undo()
    assert not gpu_check.dynamic_vram_available(tmp_path)  # no ModelPatcherDynamic in this ComfyUI


def test_a_child_past_the_deadline_is_killed_and_later_jobs_skipped(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "MIN_JOB_SECONDS", 0.5)
    started = []

    def spawn(precision, mode, deadline):  # a model build that would run far past the deadline
        started.append(precision)
        return _subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    begin = _time.monotonic()
    outcomes = gpu_check.run_jobs([("bf16", "legacy"), ("nf4", "legacy")], _time.time() + 1.5, spawn)
    assert _time.monotonic() - begin < 10
    assert outcomes == [("bf16", "legacy", "killed"), ("nf4", "legacy", "skipped")] and started == ["bf16"]
    out = capsys.readouterr().out
    assert "killed: --max-minutes reached" in out and "skipped: --max-minutes reached" in out


def test_a_node_call_past_the_deadline_is_stopped_from_its_progress_callback(gpu_check):
    hooks = []
    mm = SimpleNamespace(load_models_gpu=lambda *a, **k: None)
    utils = SimpleNamespace(set_progress_bar_global_hook=hooks.append)
    meter = gpu_check.Meter(mm, utils, deadline=_time.time() - 1)
    with pytest.raises(gpu_check.DeadlineReached):
        hooks[0](1, 4, None)


def test_streamed_bytes_per_step_come_from_the_transfer_ledger(gpu_check):
    from bagel_model.model.transfer_ledger import TransferLedger

    ledger, hooks = TransferLedger(), []
    mm = SimpleNamespace(load_models_gpu=lambda *a, **k: None)
    meter = gpu_check.Meter(mm, SimpleNamespace(set_progress_bar_global_hook=hooks.append), ledger=ledger)
    meter.reset()
    hooks[0](0, 2, None)
    ledger.record("NF4Linear", "nf4", 1000, crossed_devices=True)  # a quantized Linear's own copy
    ledger.record("Linear", "bf16", 500, crossed_devices=False)  # resident: read in place, not streamed
    hooks[0](1, 2, None)
    ledger.record("Linear", "bf16", 3000, crossed_devices=True)  # ComfyUI's cast of a streamed layer
    hooks[0](2, 2, None)
    seconds, streamed = meter.per_step()
    assert streamed == (1000 + 3000) / 2 and seconds >= 0
