"""Every weight the nodes' layers use goes through ComfyUI's own cast path, for every precision, and is counted
by the transfer ledger.

Each layer's ``weight``/``bias`` are poisoned in place (NaN; zeros for the packed NF4/INT8 integers) and the real
values are attached as ComfyUI weight wrappers (``ModelPatcher.add_weight_wrapper``), which only ComfyUI's cast
(``comfy.ops.cast_bias_weight`` / ComfyUI's Linear forward) applies; the NF4 block scales, INT8 row scales and
FP8 scales (which ComfyUI's cast does not carry) are poisoned too and served through the core's ``fetch``. The
nodes must give the outputs of the untouched model, and the ledger must have seen every kind of layer.
"""
import functools

import pytest
import torch

from bagel_model.model.transfer_ledger import ledger

from test_comfy_memory import PRECISIONS, assert_same, run_nodes


@pytest.fixture(scope="module")
def nodes(comfy_nodes, tiny_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    return {name: cls for name, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("BagelMoT")}


def _serve(real: torch.Tensor, cast: torch.Tensor) -> torch.Tensor:
    """ComfyUI weight wrapper: the real tensor in the form ComfyUI's cast produced (device, dtype)."""
    return real.to(device=cast.device, dtype=cast.dtype)


def _poison(tensor: torch.Tensor) -> None:
    tensor.data.fill_(float("nan") if tensor.is_floating_point() else 0)


def route_through_comfy(patcher) -> set:
    """Poisons every castable layer of ``patcher``'s group; returns the layer kinds."""
    kinds = set()
    for name, module in patcher.model.named_modules():
        if not hasattr(module, "comfy_cast_weights"):
            continue
        kinds.add(type(module).__name__)
        for attr in ("weight", "bias"):
            tensor = getattr(module, attr, None)
            if tensor is not None:
                patcher.add_weight_wrapper(f"{name}.{attr}", functools.partial(_serve, tensor.detach().clone()))
                _poison(tensor)
        side = {key: t for key, t in list(module.named_parameters(recurse=False)) +
                list(module.named_buffers(recurse=False)) if key not in ("weight", "bias")}
        copies = {key: t.detach().clone() for key, t in side.items()}
        module.stored = functools.partial(lambda copies, module, key: copies[key] if key in copies
                                          else getattr(module, key, None), copies, module)
        for tensor in side.values():
            _poison(tensor)
    return kinds


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_weight_goes_through_comfyui_cast_and_the_ledger(nodes, tiny_checkpoint, precision):
    import comfy.model_management as mm

    model = nodes["BagelMoTModelLoader"]().load(tiny_checkpoint.name, precision, False)[0]
    reference = run_nodes(nodes, model)
    mm.unload_all_models()
    kinds = set()
    for patcher in model.patchers.values():
        kinds |= route_through_comfy(patcher)
    ledger.reset()
    assert_same(run_nodes(nodes, model), reference)
    reads = ledger.reads()
    assert {kind for kind, _ in reads} == kinds  # every kind of layer read its weights through the path
    assert all(size > 0 for size in reads.values())
    if precision in ("nf4", "int8", "fp8_e4m3fn"):
        assert any(p == precision for _, p in reads)
    mm.unload_all_models()
