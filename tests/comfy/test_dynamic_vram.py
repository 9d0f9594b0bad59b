"""Dynamic VRAM (ComfyUI 0.33+): with ``comfy.memory_management.aimdo_enabled`` on, as main.py sets it on a
machine with comfy-aimdo, ComfyUI's op classes are built without tensors and get them by assignment; the pack
loads every precision and every pre-quantized folder that way and gives the outputs of a normal load.

A CPU cannot run ``ModelPatcherDynamic`` itself (for a CPU load device it returns a ``ModelPatcher``), so these
tests cover what surrounds it against the real ComfyUI code: our patchers come from ``CoreModelPatcher``, the
layers are ComfyUI's lazily built ones, and each group's ``get_dynamic_vram__units()`` lists every streamable
layer once, decoder layers one by one in the order a forward uses them.
"""
import importlib
import re
import sys

import pytest
import torch

from test_comfy_memory import PRECISIONS, assert_same, run_nodes

PREQUANTIZED = ("nf4", "int8", "fp8_e4m3fn")
CASES = [(precision, False) for precision in PRECISIONS] + [(precision, True) for precision in PREQUANTIZED]


@pytest.fixture(scope="module")
def nodes(comfy_nodes, tiny_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    return {name: cls for name, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("BagelMoT")}


@pytest.fixture(scope="module")
def prequantized(tiny_checkpoint) -> dict:
    from bagel_model.checkpoint.precision_loading import quantize_folder

    return {precision: quantize_folder(tiny_checkpoint, tiny_checkpoint.parent / f"BAGEL-tiny-{precision}",
                                       precision, device="cpu") for precision in PREQUANTIZED}


def require_dynamic_vram() -> None:
    """ComfyUI 0.3.64 has no Dynamic VRAM (no ModelPatcherDynamic, no comfy.memory_management): nothing to test."""
    import comfy.model_patcher

    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        pytest.skip("this ComfyUI version has no Dynamic VRAM (no ModelPatcherDynamic): nothing to test")


def enable_dynamic_vram(monkeypatch) -> None:
    """What main.py does on a machine with comfy-aimdo: init comfy-aimdo first, then point CoreModelPatcher at
    ModelPatcherDynamic and set aimdo_enabled (which switches ComfyUI's ops to lazy construction and its
    safetensors reader to comfy-aimdo's mmap)."""
    require_dynamic_vram()
    import comfy.memory_management
    import comfy_aimdo.control
    import comfy_aimdo.model_mmap

    if comfy_aimdo.model_mmap.lib is None:
        assert comfy_aimdo.control.init(), "comfy-aimdo could not load its library"
        # model_mmap binds the library (and declares its C signatures) when it is imported, which ComfyUI
        # did before this test's init: import it again, as it would be after main.py's init.
        importlib.reload(comfy_aimdo.model_mmap)
    monkeypatch.setattr(comfy.memory_management, "aimdo_enabled", True)
    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcherDynamic)


def load(nodes, folder: str, precision: str):
    return nodes["BagelMoTModelLoader"]().load(folder, precision, False)[0]


@pytest.mark.parametrize(("precision", "pre_quantized"), CASES)
def test_every_precision_loads_and_runs_with_dynamic_vram_on(nodes, tiny_checkpoint, prequantized, precision,
                                                             pre_quantized, monkeypatch):
    import comfy.model_management as mm
    import comfy.model_patcher

    require_dynamic_vram()
    folder = prequantized[precision].name if pre_quantized else tiny_checkpoint.name
    reference = run_nodes(nodes, load(nodes, folder, precision))
    mm.unload_all_models()
    enable_dynamic_vram(monkeypatch)
    model = load(nodes, folder, precision)
    handle_module = sys.modules[type(model).__module__]  # the pack's nodes/model_handle.py, as ComfyUI loaded it
    assert handle_module.patcher_class() is comfy.model_patcher.ModelPatcherDynamic  # from CoreModelPatcher
    assert all(type(p) is comfy.model_patcher.ModelPatcher for p in model.patchers.values())  # its CPU fallback
    lm_head = model.pipeline.model.bagel.language_model.lm_head  # full precision in every format
    assert hasattr(lm_head, "comfy_need_lazy_init_bias")  # built by ComfyUI's lazy path, filled by assignment
    assert lm_head.weight is not None and lm_head.weight.device.type == "cpu"
    assert_same(run_nodes(nodes, model), reference)
    mm.unload_all_models()


_LAYER_INDEX = re.compile(r"(?:language_model/model/layers|vit_model/vision_model/encoder/layers)/(\d+)/")


def test_dynamic_vram_units_stream_each_layer_once_in_forward_order(nodes, tiny_checkpoint):
    model = load(nodes, tiny_checkpoint.name, "bf16")
    for group, patcher in model.patchers.items():
        root = patcher.model
        units, last_units = root.get_dynamic_vram__units()
        assert last_units == []
        names = {module: name for name, module in root.layers.items()}
        flat = [module for unit in units for module in unit]
        assert len(flat) == len(set(flat)) == len(names), group  # every layer of the group, each once
        listed = {entry[-2] for entry in patcher._load_list()}  # what ComfyUI streams: each unit is in it
        assert set(flat) <= listed, group
        indices = []
        for unit in units:
            found = {_LAYER_INDEX.search(names[module]) for module in unit}
            numbers = {match.group(1) if match else None for match in found}
            assert len(numbers) == 1, (group, [names[m] for m in unit])  # one decoder/SigLIP layer per unit
            indices.append(numbers.pop())
        layered = [int(i) for i in indices if i is not None]
        assert layered == sorted(layered) and len(layered) == len(set(layered)), group  # layer 0, 1, 2 ...
        first, last = names[units[0][0]], names[units[-1][-1]]
        if group == "und":  # decoder layer 0 first; the final norm after the last layer
            assert indices[0] == "0" and last.endswith("norm")
            assert len(layered) == model.pipeline.config.llm.num_hidden_layers
        if group == "text_io":  # the token table, then lm_head (the order a text call reads them)
            assert first.endswith("embed_tokens") and last.endswith("lm_head")
        if group == "gen":
            assert indices[0] is None and last == "llm2vae"  # latent input first, llm2vae after the layers
            assert len(layered) == model.pipeline.config.llm.num_hidden_layers


def test_units_are_in_dynamic_vram_load_order(nodes, tiny_checkpoint):
    """ComfyUI 0.33's ModelPatcherDynamic.load orders its load list by the units (what it allocates first);
    the part of it that runs without a GPU (_load_list for_dynamic) accepts every unit module."""
    require_dynamic_vram()
    model = load(nodes, tiny_checkpoint.name, "nf4")
    for patcher in model.patchers.values():
        loading = {entry[-2]: entry for entry in patcher._load_list(for_dynamic=True)}
        units, _ = patcher.model.get_dynamic_vram__units()
        ordered = [loading.pop(module) for unit in units for module in unit if module in loading]
        assert not loading and len(ordered) == len(list(patcher.model.layers.values()))
        assert all(hasattr(entry[-2], "comfy_cast_weights") for entry in ordered)
        # "nothing large outside castable modules": every tensor is in a castable layer
        for module in patcher.model.modules():
            if not hasattr(module, "comfy_cast_weights"):
                assert not list(module.parameters(recurse=False)) and not list(module.buffers(recurse=False))
    assert torch.is_grad_enabled()  # nothing above switched autograd off for the rest of the session
