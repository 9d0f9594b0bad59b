"""An out-of-memory error stays a torch.OutOfMemoryError (so ComfyUI's OOM handling runs), what the failed call had
allocated is freed while the caller still holds the error (no gc needed), and the next call works."""
import gc
import weakref

import pytest
import torch

import bagel_model.checkpoint.loading as loading
import bagel_model.generation.branch_velocities as branch_velocities
from bagel_model import BagelPipeline
from bagel_model.model.kv_cache import KVCache


def _oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")


def test_oom_while_loading_propagates_and_frees_the_half_loaded_weights(tiny_checkpoint, monkeypatch):
    real_convert, loaded = loading._convert, []

    def convert_then_run_out(tensor, device, dtype):
        if len(loaded) == 20:
            raise _oom()
        converted = real_convert(tensor, device, dtype)
        loaded.append(weakref.ref(converted))
        return converted

    monkeypatch.setattr(loading, "_convert", convert_then_run_out)
    with pytest.raises(torch.OutOfMemoryError) as info:
        BagelPipeline.from_pretrained(tiny_checkpoint, device="cpu", compute_dtype="fp32")
    assert "corrupt" not in str(info.value) and "download" not in str(info.value)
    # Freed while the caller still holds the exception (ComfyUI unloads models and empties the cache then).
    assert len(loaded) == 20 and not [ref for ref in loaded if ref() is not None]
    del info
    monkeypatch.undo()
    pipe = BagelPipeline.from_pretrained(tiny_checkpoint, device="cpu", compute_dtype="fp32")
    assert pipe.generate_image("a cube", width=32, height=32, steps=2).images[0].size == (32, 32)


def _live_kv_caches() -> int:
    return sum(isinstance(obj, KVCache) for obj in gc.get_objects())


def test_oom_during_a_denoise_step_propagates_frees_the_caches_and_next_run_matches(tiny_pipe, monkeypatch):
    args = dict(width=32, height=32, steps=4, seed=5)
    reference = tiny_pipe.generate_image("a red cube", **args).latents[0]
    gc.collect()
    caches_before = _live_kv_caches()
    real_branch_hidden, calls = branch_velocities.branch_hidden, []

    def branch_hidden_then_run_out(*a, **kw):  # the one LM call of every denoise step
        calls.append(1)
        if len(calls) == 3:
            raise _oom()
        return real_branch_hidden(*a, **kw)

    monkeypatch.setattr(branch_velocities, "branch_hidden", branch_hidden_then_run_out)
    with pytest.raises(torch.OutOfMemoryError) as info:
        tiny_pipe.generate_image("a red cube", **args)
    assert _live_kv_caches() == caches_before  # the generation's caches are gone while the error is held
    del info
    monkeypatch.undo()
    assert torch.equal(tiny_pipe.generate_image("a red cube", **args).latents[0], reference)


def test_corrupt_tensor_data_still_says_corrupt(tiny_checkpoint, tmp_path, monkeypatch):
    """Only errors of the file say "corrupt": an error raised while reading a tensor from the file does."""
    import shutil

    from safetensors import SafetensorError

    from bagel_model import BagelCheckpointError

    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, folder)

    class BrokenReader:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def get_tensor(self, key):
            raise SafetensorError(f"Error while deserializing {key}: invalid data")

    monkeypatch.setattr(loading, "safe_open", BrokenReader)
    with pytest.raises(BagelCheckpointError, match="probably corrupt: delete it and download it again"):
        BagelPipeline.from_pretrained(folder, device="cpu", compute_dtype="fp32")
