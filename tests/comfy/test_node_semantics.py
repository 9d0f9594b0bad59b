"""Node behaviour that ComfyUI's own conventions decide: blank plans, device and dtype policy, re-execution."""
import sys

import pytest
import torch

FAST = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.4, cfg_interval_end=1.0,
            timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")


@pytest.fixture(scope="module")
def ours(comfy_nodes, tiny_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    return comfy_nodes.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def model(ours, tiny_checkpoint):
    return ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "bf16", False)[0]


def test_blank_plan_from_think_is_used_like_the_core_uses_it(ours, model):
    node = ours["BagelMoTTextToImage"]()
    core = dict(width=32, height=32, steps=3, seed=3)
    for plan in ("\n", " \x1c"):
        via_node = node.generate(model, "a house", 32, 32, seed=3, batch_size=1, thinking=plan, **FAST)[0]
        direct = model.pipeline.generate_image("a house", thinking=plan, **core)
        assert torch.equal(via_node[0], direct.pixels[0])
    empty_box = node.generate(model, "a house", 32, 32, seed=3, batch_size=1, thinking="", **FAST)[0]
    assert torch.equal(empty_box[0], model.pipeline.generate_image("a house", **core).pixels[0])


@pytest.fixture()
def fake_nvidia_gpu(comfy_nodes, monkeypatch):
    """Makes ComfyUI's own should_use_bf16/should_use_fp16 see an NVIDIA GPU of the given generation."""
    import comfy.model_management as mm

    def install(major: int, name: str):
        monkeypatch.setattr(mm, "cpu_mode", lambda: False)
        monkeypatch.setattr(mm, "is_amd", lambda: False)
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device=None: type("Props", (), {"major": major, "minor": 0, "name": name})())
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulated counts too

    return install


@pytest.fixture()
def compute_dtype(ours):
    """The pack's nodes/compute_dtype.py, as ComfyUI imported it (ComfyUI names the pack's modules by path)."""
    return sys.modules[ours["BagelMoTModelLoader"].__module__.rsplit(".", 1)[0] + ".compute_dtype"]


@pytest.mark.parametrize("major, name, expected", [(7, "Tesla V100-SXM2-16GB", "fp16"), (7, "NVIDIA T1000", "fp32"),
                                                   (8, "NVIDIA A100-SXM4-40GB", "bf16")])
def test_gpu_compute_dtype_follows_comfyuis_policy(fake_nvidia_gpu, compute_dtype, major, name, expected):
    fake_nvidia_gpu(major, name)
    assert compute_dtype.comfy_compute_dtype(torch.device("cuda:0")) == expected


def test_cpu_keeps_the_core_rule_unless_comfyui_forces_fp32(compute_dtype, model, monkeypatch):
    import comfy.model_management as mm

    from bagel_model.devices import resolve_compute_dtype

    assert compute_dtype.comfy_compute_dtype(torch.device("cpu")) == "auto"
    assert model.pipeline.compute_dtype == resolve_compute_dtype("auto", torch.device("cpu"))
    monkeypatch.setattr(mm, "FORCE_FP32", True)
    assert compute_dtype.comfy_compute_dtype(torch.device("cpu")) == "fp32"
