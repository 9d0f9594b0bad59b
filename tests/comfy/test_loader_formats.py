"""The loader node lists and loads the checkpoint formats of docs/checkpoints.md inside real ComfyUI: the list
names what a choice reads (folder, folder/file, single file), validation names what is missing, the loaded
model's repr names format and precision, and the input contract is unchanged."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import run_demo


def _state(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as reader:
        return {key: reader.get_tensor(key) for key in reader.keys()}


@pytest.fixture(scope="module")
def roots(comfy_nodes, tiny_checkpoint, tmp_path_factory):
    """models/bagel with: the official folder, a fine-tune folder with another weights file name, an fp8 file
    beside the official weights, a converted single file (tokenizer beside it, autoencoder in models/vae), a
    single file without tokenizer in a second root, and a DFloat11 folder."""
    import folder_paths

    base = tmp_path_factory.mktemp("formats")
    bagel, vae, bare = base / "bagel", base / "vae", base / "bare"
    for folder in (bagel, vae, bare):
        folder.mkdir()
    official = bagel / "BAGEL-tiny"
    shutil.copytree(tiny_checkpoint, official)
    reca = bagel / "BAGEL-RecA-tiny"
    shutil.copytree(tiny_checkpoint, reca)
    (reca / "ema.safetensors").rename(reca / "model_bf16.safetensors")
    state = _state(tiny_checkpoint / "ema.safetensors")
    fp8 = {k: v.to(torch.float8_e4m3fn) if k.endswith("proj.weight") else v for k, v in state.items()}
    save_file(fp8, str(official / "ema-FP8.safetensors"))
    configs = {n: json.loads((tiny_checkpoint / n).read_text())
               for n in ("llm_config.json", "vit_config.json", "ae_config.json")}
    metadata = {"comfyui_bagel": json.dumps({"format": "comfyui_bagel", "format_version": 1,
                                             "variant": "BAGEL-tiny", "model_configs": configs})}
    save_file(state, str(bagel / "bagel_comfy_tiny.safetensors"), metadata=metadata)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(tiny_checkpoint / name, bagel / name)
    shutil.copyfile(tiny_checkpoint / "ae.safetensors", vae / "ae.safetensors")
    save_file(state, str(bare / "no_tokenizer_tiny.safetensors"), metadata=metadata)
    df11 = bagel / "BAGEL-DF11-tiny"
    df11.mkdir()
    for name in ("llm_config.json", "vit_config.json", "ae.safetensors", "vocab.json", "merges.txt"):
        shutil.copyfile(tiny_checkpoint / name, df11 / name)
    (df11 / "config.json").write_text(json.dumps({"dfloat11_config": {"version": "0.5.0"}}))
    save_file({"language_model.model.layers.0.mlp.encoded_exponent": torch.zeros(4, dtype=torch.uint8)},
              str(df11 / "model.safetensors"))
    (bagel / "bagel-Q4_K.gguf").write_bytes(b"GGUF" + bytes(60))  # magic only: listed, refused at validation
    (bagel / "notes.gguf").write_bytes(b"text")  # not a GGUF file: not listed
    added = (("bagel", str(bagel)), ("bagel", str(bare)), ("vae", str(vae)))
    for key, path in added:
        folder_paths.add_model_folder_path(key, path)
    yield bagel
    # ComfyUI's folder registry is process-wide: later test modules must not find this module's tiny
    # ae.safetensors in models/vae before their own.
    for key, path in added:
        folder_paths.folder_names_and_paths[key][0].remove(path)


@pytest.fixture(scope="module")
def loader(comfy_nodes, roots):
    return comfy_nodes.NODE_CLASS_MAPPINGS["BagelMoTModelLoader"]


def test_inputs_keep_their_names_and_order(loader):
    required = loader.INPUT_TYPES()["required"]
    assert list(required) == ["model_folder", "precision", "download_if_missing"]
    assert "folder/file" in required["model_folder"][1]["tooltip"]


def test_list_names_the_files_a_choice_reads(loader):
    choices = loader.INPUT_TYPES()["required"]["model_folder"][0]
    for name in ("BAGEL-tiny", "BAGEL-tiny/ema-FP8.safetensors", "BAGEL-RecA-tiny", "bagel_comfy_tiny.safetensors",
                 "no_tokenizer_tiny.safetensors", "BAGEL-DF11-tiny"):
        assert name in choices, (name, choices)
    assert "ae.safetensors" not in choices and "BAGEL-tiny/ae.safetensors" not in choices
    assert "bagel-Q4_K.gguf" in choices and "notes.gguf" not in choices


def test_validation_names_what_is_missing(loader):
    assert loader.VALIDATE_INPUTS(model_folder="BAGEL-RecA-tiny") is True
    assert loader.VALIDATE_INPUTS(model_folder="bagel_comfy_tiny.safetensors") is True
    message = loader.VALIDATE_INPUTS(model_folder="no_tokenizer_tiny.safetensors")
    assert "No tokenizer found" in message and "tokenizer.json" in message
    message = loader.VALIDATE_INPUTS(model_folder="BAGEL-DF11-tiny")
    assert "DFloat11" in message and ("dfloat11[cuda12]" in message or "CUDA" in message)
    assert loader.VALIDATE_INPUTS(model_folder="../escape.safetensors") is not True
    message = loader.VALIDATE_INPUTS(model_folder="bagel-Q4_K.gguf")
    assert "pip install gguf" in message or "not a readable GGUF file" in message


@pytest.mark.parametrize("name, fmt", [("BAGEL-RecA-tiny", "folder (model_bf16.safetensors)"),
                                       ("bagel_comfy_tiny.safetensors", "single file 'BAGEL-tiny'")])
def test_full_precision_formats_load_and_name_themselves(loader, name, fmt, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        model, vae = loader().load(name, "bf16", False)[:2]
    assert fmt in repr(model) and "'bf16'" in repr(model)
    assert "it reads" in caplog.text and "ae.safetensors" in caplog.text
    assert vae.latent_channels == model.pipeline.config.ae.z_channels


def test_fp8_file_beside_the_official_weights_loads_in_fp8_with_auto(loader):
    model = loader().load("BAGEL-tiny/ema-FP8.safetensors", "auto", False)[0]
    assert model.precision == "fp8_e4m3fn" and "stored fp8_e4m3fn (ema-FP8.safetensors)" in repr(model)
    weights = [m.weight for m in model.pipeline.model.bagel.modules() if type(m).__name__.endswith("Fp8Linear")]
    assert weights and all(w.dtype == torch.float8_e4m3fn for w in weights)
    assert loader.VALIDATE_INPUTS(model_folder="BAGEL-tiny/ema-FP8.safetensors") is True
    with pytest.raises(ValueError, match="stores its weights in fp8_e4m3fn; choose precision 'fp8_e4m3fn' or 'auto'"):
        loader().load("BAGEL-tiny/ema-FP8.safetensors", "bf16", False)


def test_the_demo_takes_every_checkpoint_the_loader_lists_as_real_weights(loader, roots, tmp_path):
    """tools/run_demo.py decides "real weights or the random demo checkpoint" by the loader's own list: a
    fine-tune folder, a folder's extra weights file, a single file and a GGUF file each count."""
    for name in ("BAGEL-RecA-tiny", "bagel_comfy_tiny.safetensors", "bagel-Q4_K.gguf"):
        models_bagel = tmp_path / name / "bagel"
        (models_bagel / run_demo.DEMO_FOLDER).mkdir(parents=True)
        (models_bagel / run_demo.DEMO_FOLDER / "llm_config.json").write_text("{}")
        assert run_demo.real_checkpoint(models_bagel) is None
        (models_bagel / name).symlink_to(roots / name)
        assert run_demo.real_checkpoint(models_bagel) == name
    choices = loader.INPUT_TYPES()["required"]["model_folder"][0]
    # Same names; the loader's list puts roots registered earlier (other tests' folders) first.
    assert run_demo.checkpoint_choices(roots) == sorted(c for c in choices if (roots / c.split("/")[0]).exists())
