"""Device and compute-dtype rules of the core (the CLI's; ComfyUI nodes take ComfyUI's policy instead)."""
from types import SimpleNamespace

import pytest
import torch

from bagel_model import BagelInputError
from bagel_model import devices


@pytest.fixture()
def available(monkeypatch):
    """available(*kinds): pretend exactly these accelerators exist."""
    def set_available(*kinds):
        monkeypatch.setattr(devices, "accelerator_available", lambda kind: kind == "cpu" or kind in kinds)

    return set_available


@pytest.mark.parametrize("name", ["mps", "xpu", "xpu:1", "cuda:0"])
def test_apple_and_intel_devices_are_accepted_when_present(available, name):
    available("cuda", "xpu", "mps")
    assert devices.resolve_device(name) == torch.device(name)


@pytest.mark.parametrize("name, what", [("mps", "Apple MPS"), ("xpu", "Intel XPU"), ("cuda", "CUDA")])
def test_missing_accelerator_is_named_with_the_fix(available, name, what):
    available()
    with pytest.raises(BagelInputError, match=f"sees no {what}.*device='cpu'"):
        devices.resolve_device(name)


def test_auto_prefers_cuda_then_xpu_then_mps(available):
    for present, expected in [(("mps",), "mps"), (("xpu", "mps"), "xpu"), (("cuda", "xpu"), "cuda"), ((), "cpu")]:
        available(*present)
        assert devices.resolve_device("auto").type == expected


def test_unknown_device_is_refused():
    with pytest.raises(BagelInputError, match="Unknown device 'tpu'.*'mps'"):
        devices.resolve_device("tpu")


@pytest.mark.parametrize("capability, expected", [((6, 1), torch.float16), ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_dtype_keeps_pre_ampere_gpus_off_emulated_bf16(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts as "supported"
    assert devices.resolve_compute_dtype("auto", torch.device("cuda:0")) == expected


def test_auto_dtype_on_mps_xpu_and_cpu(monkeypatch):
    assert devices.resolve_compute_dtype("auto", torch.device("mps")) == torch.float16
    monkeypatch.setattr(torch, "xpu", SimpleNamespace(is_bf16_supported=lambda: False), raising=False)
    assert devices.resolve_compute_dtype("auto", torch.device("xpu")) == torch.float16
    native = devices.cpu_has_native_bf16()
    assert devices.resolve_compute_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
