"""An interrupted download is detected (missing or short files, huggingface_hub's unfinished parts) and named as
incomplete while download_if_missing is off; switched on, the loader completes it. huggingface_hub is replaced
by a fake module at the import boundary: no network."""
import shutil
import sys
import types
from pathlib import Path

import pytest

DOWNLOAD_NAME = "BAGEL-7B-MoT"


@pytest.fixture()
def loader_and_root(comfy_nodes, tmp_path, monkeypatch):
    import folder_paths

    root = tmp_path / "bagel_root"
    root.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "bagel", ([str(root)], set()))
    return comfy_nodes.NODE_CLASS_MAPPINGS["BagelMoTModelLoader"], root


def _partial_copy(tiny_checkpoint, target):
    """What an interrupted snapshot_download leaves: configs first, a short weights file, an unfinished part."""
    shutil.copytree(tiny_checkpoint, target)
    weights = target / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    (target / "merges.txt").unlink()
    (target / "ae.safetensors").unlink()
    partial = target / ".cache" / "huggingface" / "download"
    partial.mkdir(parents=True)
    (partial / "Xq0.ae.safetensors.incomplete").write_bytes(b"\0" * 128)
    return target


def _fake_hub(tiny_checkpoint, calls, complete=True):
    """huggingface_hub with a snapshot_download that 'downloads' the tiny checkpoint's files it finds missing."""
    def snapshot_download(repo_id, local_dir, tqdm_class=None, **kwargs):
        local = Path(local_dir)
        calls.append({"repo_id": repo_id, "local_dir": local_dir, "ema_present": (local / "ema.safetensors").exists()})
        bar = tqdm_class(total=3, disable=True)  # the node mirrors it onto ComfyUI's progress bar
        if complete:
            for source in sorted(tiny_checkpoint.iterdir()):
                if not (local / source.name).exists():
                    shutil.copyfile(source, local / source.name)
            shutil.rmtree(local / ".cache", ignore_errors=True)
        bar.update(3)
        return local_dir

    module = types.ModuleType("huggingface_hub")
    module.snapshot_download = snapshot_download
    return module


def test_incomplete_folder_is_named_when_download_is_off(loader_and_root, tiny_checkpoint):
    loader, root = loader_and_root
    folder = _partial_copy(tiny_checkpoint, root / DOWNLOAD_NAME)
    assert loader.VALIDATE_INPUTS(DOWNLOAD_NAME) is True  # validation cannot see the switch: the run decides
    with pytest.raises(ValueError, match="is incomplete") as refused:
        loader().load(DOWNLOAD_NAME, "bf16", False)
    message = str(refused.value)
    assert f"'{DOWNLOAD_NAME}' ({folder}) is incomplete" in message
    for fragment in ("ema.safetensors is truncated", "merges.txt is missing", "ae.safetensors is missing",
                     "unfinished download", "switch 'download_if_missing' on"):
        assert fragment in message, message
    assert "again" not in message


def test_download_switch_completes_the_incomplete_folder(loader_and_root, tiny_checkpoint, monkeypatch):
    loader, root = loader_and_root
    folder = _partial_copy(tiny_checkpoint, root / DOWNLOAD_NAME)
    calls = []
    monkeypatch.setitem(sys.modules, "huggingface_hub", _fake_hub(tiny_checkpoint, calls))
    assert loader.VALIDATE_INPUTS(DOWNLOAD_NAME) is True
    model = loader().load(DOWNLOAD_NAME, "bf16", True)[0]
    assert len(calls) == 1 and calls[0]["repo_id"] == "ByteDance-Seed/BAGEL-7B-MoT"
    assert calls[0]["local_dir"] == str(folder)  # resumed in place, not a second copy
    assert not calls[0]["ema_present"]  # the short file was dropped so the hub fetches it again
    assert (folder / "ema.safetensors").read_bytes() == (tiny_checkpoint / "ema.safetensors").read_bytes()
    assert model.pipeline.generate_image("a cube", width=32, height=32, steps=2).images[0].size == (32, 32)
    assert loader.VALIDATE_INPUTS(DOWNLOAD_NAME) is True  # complete now
    loader().load(DOWNLOAD_NAME, "bf16", True)
    assert len(calls) == 1  # a complete folder is never downloaded again


def test_folder_cut_off_before_its_first_file_is_incomplete_not_missing(loader_and_root, tiny_checkpoint,
                                                                        monkeypatch):
    loader, root = loader_and_root
    (root / DOWNLOAD_NAME / ".cache" / "huggingface" / "download").mkdir(parents=True)
    with pytest.raises(ValueError, match="is incomplete.*llm_config.json is missing"):
        loader().load(DOWNLOAD_NAME, "bf16", False)
    calls = []
    monkeypatch.setitem(sys.modules, "huggingface_hub", _fake_hub(tiny_checkpoint, calls))
    loader().load(DOWNLOAD_NAME, "bf16", True)
    assert calls[0]["local_dir"] == str(root / DOWNLOAD_NAME)


def test_download_that_stays_incomplete_says_so(loader_and_root, tiny_checkpoint, monkeypatch):
    loader, root = loader_and_root
    _partial_copy(tiny_checkpoint, root / DOWNLOAD_NAME)
    monkeypatch.setitem(sys.modules, "huggingface_hub", _fake_hub(tiny_checkpoint, [], complete=False))
    with pytest.raises(RuntimeError, match="still incomplete: .*ae.safetensors is missing.*free disk space"):
        loader().load(DOWNLOAD_NAME, "bf16", True)


def test_other_incomplete_folders_are_never_downloaded_into(loader_and_root, tiny_checkpoint):
    loader, root = loader_and_root
    folder = _partial_copy(tiny_checkpoint, root / "my-bagel")
    message = loader.VALIDATE_INPUTS("my-bagel")
    assert "is incomplete" in message and f'hf download ByteDance-Seed/BAGEL-7B-MoT --local-dir "{folder}"' in message
