"""folder_check: a folder is complete only when every file the loader reads is there and whole."""
import json
import shutil

from bagel_model.checkpoint.folder_check import expected_files, incomplete_files


def test_complete_folder_has_no_problems(tiny_checkpoint):
    assert incomplete_files(tiny_checkpoint) == {}


def test_each_kind_of_damage_is_named(tiny_checkpoint, tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, folder)
    weights = folder / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])  # one byte short
    (folder / "ae.safetensors").write_bytes(b"\x10\x00")
    (folder / "vit_config.json").write_text('{"hidden_size": 1')
    (folder / "merges.txt").write_text("")
    (folder / "vocab.json").unlink()
    assert incomplete_files(folder) == {
        "vit_config.json": "not valid JSON (cut off or damaged)", "vocab.json": "missing", "merges.txt": "empty",
        "ae.safetensors": "not a readable safetensors file", "ema.safetensors": "truncated"}


def test_prequantized_folder_needs_its_own_weights_file(tiny_checkpoint, tmp_path):
    folder = tmp_path / "pre"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "ema.safetensors").rename(folder / "ema.nf4.safetensors")
    (folder / "quantization_config.json").write_text(json.dumps({"weights_file": "ema.nf4.safetensors"}))
    assert expected_files(folder)[-1] == "ema.nf4.safetensors"
    assert incomplete_files(folder) == {}
    (folder / "ema.nf4.safetensors").unlink()
    assert incomplete_files(folder) == {"ema.nf4.safetensors": "missing"}


def test_unfinished_parts_alone_do_not_make_a_whole_folder_incomplete(tiny_checkpoint, tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, folder)
    parts = folder / ".cache" / "huggingface" / "download"
    parts.mkdir(parents=True)
    (parts / "a1b2.README.md.incomplete").write_bytes(b"partial")
    assert incomplete_files(folder) == {}
    (folder / "merges.txt").unlink()
    assert incomplete_files(folder) == {"merges.txt": "missing",
                                        ".cache/huggingface/download/a1b2.README.md.incomplete":
                                            "unfinished download (1 file(s))"}
