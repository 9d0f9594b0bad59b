"""Through the nodes, an out-of-memory error reaches ComfyUI as its OOM_EXCEPTION (so ComfyUI unloads the models
and shows its tip), and the next run of the same nodes works."""
import pytest
import torch

FAST = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.4, cfg_interval_end=1.0,
            timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB (injected by the test)")


@pytest.fixture(scope="module")
def ours(comfy_nodes, tiny_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    return comfy_nodes.NODE_CLASS_MAPPINGS


def test_oom_while_loading_is_comfyuis_oom_and_next_load_works(ours, tiny_checkpoint, monkeypatch):
    import comfy.model_management as mm

    import bagel_model.checkpoint.loading as loading

    monkeypatch.setattr(loading, "_convert", _oom)
    with pytest.raises(mm.OOM_EXCEPTION, match="injected"):
        ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "bf16", False)
    monkeypatch.undo()
    assert ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "bf16", False)[0].pipeline is not None


def test_oom_during_a_denoise_step_is_comfyuis_oom_and_next_run_works(ours, tiny_checkpoint, monkeypatch):
    import comfy.model_management as mm

    model = ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "bf16", False)[0]
    node = ours["BagelMoTTextToImage"]()
    import bagel_model.generation.branch_velocities as branch_velocities

    monkeypatch.setattr(branch_velocities, "branch_hidden", _oom)  # the LM call of every denoise step
    with pytest.raises(mm.OOM_EXCEPTION, match="injected"):
        node.generate(model, "a red cube", 32, 32, seed=1, batch_size=1, **FAST)
    monkeypatch.undo()
    assert node.generate(model, "a red cube", 32, 32, seed=1, batch_size=1, **FAST)[0].shape == (1, 32, 32, 3)
