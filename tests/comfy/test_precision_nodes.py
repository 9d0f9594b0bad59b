"""The loader's precisions inside real ComfyUI: auto is the default and follows ComfyUI's memory numbers,
a pre-quantized folder keeps its own precision, fp8_e4m3fn runs the nodes, every bundled workflow uses auto."""
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FAST = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.4, cfg_interval_end=1.0,
            timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")


@pytest.fixture(scope="module")
def loader(comfy_nodes, tiny_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    return comfy_nodes.NODE_CLASS_MAPPINGS["BagelMoTModelLoader"]


@pytest.fixture(scope="module")
def choice_module(loader):
    import sys

    return sys.modules[loader.__module__.rsplit(".", 1)[0] + ".precision_choice"]


def _fixed_free_memory(value: int):
    def get_free_memory(dev=None, torch_free_too=False):  # ComfyUI's signature
        return (value, value) if torch_free_too else value

    return get_free_memory


def test_auto_is_the_last_choice_and_the_default(loader):
    choices, options = loader.INPUT_TYPES()["required"]["precision"]
    assert choices == ["bf16", "fp16", "fp32", "nf4", "int8", "fp8_e4m3fn", "auto"]
    assert options["default"] == "auto"


def test_bundled_workflows_load_with_auto():
    for path in sorted((REPO / "workflows").glob("*.json")):
        nodes = json.loads(path.read_text())["nodes"]
        loaders = [n for n in nodes if n["type"] == "BagelMoTModelLoader"]
        assert loaders, path.name
        for node in loaders:  # widgets_values by position: model_folder, precision, download_if_missing
            assert node["widgets_values"][1] == "auto", path.name


def test_auto_follows_comfy_memory(loader, tiny_checkpoint, monkeypatch):
    import comfy.model_management as mm
    from bagel_model.checkpoint.folder import read_config
    from bagel_model.devices import resolve_compute_dtype
    from bagel_model.checkpoint.memory import estimate_memory

    config = read_config(tiny_checkpoint)
    roomy = loader().load(tiny_checkpoint.name, "auto", False)[0]
    assert roomy.precision == "bf16"  # this CPU's free RAM holds the tiny model many times
    dtype = resolve_compute_dtype("auto", torch.device("cpu"))
    bf16 = estimate_memory(config, "bf16", "t2i", 1024, 1024, device="cpu", compute_dtype=dtype)
    monkeypatch.setattr(mm, "get_free_memory", _fixed_free_memory(bf16.total_bytes - 1))
    tight = loader().load(tiny_checkpoint.name, "auto", False)[0]
    assert tight.precision == "fp8_e4m3fn"


def test_gpu_memory_numbers_reach_the_rule(choice_module, monkeypatch):
    import comfy.model_management as mm

    gib = 1024 ** 3
    monkeypatch.setattr(mm, "get_total_memory", lambda *args, **kwargs: 24 * gib)
    monkeypatch.setattr(mm, "get_free_memory", _fixed_free_memory(64 * gib))
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NORMAL_VRAM)
    memory = choice_module.comfy_device_memory(torch.device("cuda", 0))
    assert memory.total_bytes == 24 * gib and memory.streaming
    assert memory.reserved_bytes == int(mm.minimum_inference_memory())
    assert memory.host_available_bytes == 64 * gib
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.HIGH_VRAM)  # --highvram: full loads only
    assert not choice_module.comfy_device_memory(torch.device("cuda", 0)).streaming


def test_prequantized_folder_keeps_its_precision(comfy_nodes, loader, tiny_checkpoint, tmp_path_factory):
    import folder_paths
    from bagel_model import BagelPipeline

    parent = tmp_path_factory.mktemp("prequantized")
    pipe = BagelPipeline.from_pretrained(tiny_checkpoint, precision="fp8_e4m3fn", device="cpu")
    pipe.save_quantized(parent / "BAGEL-tiny-fp8")
    folder_paths.add_model_folder_path("bagel", str(parent))
    model = loader().load("BAGEL-tiny-fp8", "auto", False)[0]
    assert model.precision == "fp8_e4m3fn"


def test_fp8_runs_the_nodes(comfy_nodes, loader, tiny_checkpoint):
    model = loader().load(tiny_checkpoint.name, "fp8_e4m3fn", False)[0]
    assert model.precision == "fp8_e4m3fn"
    t2i = comfy_nodes.NODE_CLASS_MAPPINGS["BagelMoTTextToImage"]()
    image = t2i.generate(model, "a red cube", 64, 64, 0, 1, **FAST)[0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
