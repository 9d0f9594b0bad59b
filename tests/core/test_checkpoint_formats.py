"""Every checkpoint format of docs/checkpoints.md, written from the tiny checkpoint by the test, loads by content
and gives the official folder's outputs (exactly for lossless layouts; lossy ones against the precision they
store, with the measured distance to bf16 bounded)."""
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bagel_model import BagelPipeline
from bagel_model.checkpoint import formats
from bagel_model.checkpoint.auto_precision import resolve_auto
from bagel_model.checkpoint.fp8 import Fp8Linear
from bagel_model.errors import BagelCheckpointError, BagelInputError

TOKENIZER = ("vocab.json", "merges.txt", "tokenizer_config.json")


def require(module: str, why: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is required under CI=true ({why}): {exc}", pytrace=False)
        pytest.skip(f"{module} is not installed ({why}); pip install {module}")


def outputs(pipe: BagelPipeline) -> dict:
    with torch.no_grad():
        t2i = pipe.generate_image("a red cube", width=64, height=64, steps=3, seed=1)
        und = pipe.think("draw a cat", max_think_tokens=4)
    return {"latent": t2i.latents[0], "tokens": und.token_ids}


def load(path, precision="bf16", **kwargs) -> BagelPipeline:
    return BagelPipeline.from_pretrained(path, precision=precision, device="cpu", compute_dtype="fp32", **kwargs)


@pytest.fixture(scope="module")
def reference(tiny_pipe):
    return outputs(tiny_pipe)


def _state(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as reader:
        return {key: reader.get_tensor(key) for key in reader.keys()}


def _copy_folder(src: Path, dst: Path, skip=("ema.safetensors",)) -> Path:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.is_file() and item.name not in skip:
            shutil.copyfile(item, dst / item.name)
    return dst


def _assert_same(pipe, reference):
    got = outputs(pipe)
    assert torch.equal(got["latent"], reference["latent"]) and got["tokens"] == reference["tokens"]


def test_official_folder_is_described(tiny_checkpoint):
    source = formats.describe_checkpoint(tiny_checkpoint)
    assert source.kind == formats.OFFICIAL and source.held_precision is None
    assert tiny_checkpoint / "ema.safetensors" in source.files()


def test_renamed_weights_file(tiny_checkpoint, tmp_path, reference):
    folder = _copy_folder(tiny_checkpoint, tmp_path / "BAGEL-RecA")
    shutil.copyfile(tiny_checkpoint / "ema.safetensors", folder / "model_bf16.safetensors")
    source = formats.describe_checkpoint(folder)
    assert source.kind == formats.FOLDER and source.weights == [folder / "model_bf16.safetensors"]
    pipe = load(folder)
    assert "model_bf16.safetensors" in repr(pipe) and "'bf16'" in repr(pipe)
    _assert_same(pipe, reference)


def test_sharded_folder(tiny_checkpoint, tmp_path, reference):
    folder = _copy_folder(tiny_checkpoint, tmp_path / "sharded")
    state = _state(tiny_checkpoint / "ema.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert formats.describe_checkpoint(folder).kind == formats.SHARDED
    _assert_same(load(folder), reference)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(BagelCheckpointError, match="model-00002-of-00002.safetensors"):
        formats.describe_checkpoint(folder)


def _single_file_root(tiny_checkpoint, tmp_path, *, embed=True, prefix="", tokenizer=True, vae=True):
    """models/bagel/<file> in the converted single-file layout, FLUX autoencoder in models/vae."""
    bagel, vae_dir = tmp_path / "models" / "bagel", tmp_path / "models" / "vae"
    bagel.mkdir(parents=True)
    vae_dir.mkdir(parents=True)
    configs = {n: json.loads((tiny_checkpoint / n).read_text())
               for n in ("llm_config.json", "vit_config.json", "ae_config.json")}
    metadata = {"comfyui_bagel": json.dumps({"format": "comfyui_bagel", "format_version": 1, "dtype": "bf16",
                                             "variant": "BAGEL-tiny", "model_configs": configs})} if embed else {}
    state = {prefix + k: v for k, v in _state(tiny_checkpoint / "ema.safetensors").items()}
    save_file(state, str(bagel / "bagel_comfy_tiny.safetensors"), metadata=metadata)
    if tokenizer:
        for name in TOKENIZER:
            shutil.copyfile(tiny_checkpoint / name, bagel / name)
    if vae:
        shutil.copyfile(tiny_checkpoint / "ae.safetensors", vae_dir / "ae.safetensors")
    return bagel / "bagel_comfy_tiny.safetensors", vae_dir


@pytest.mark.parametrize("prefix", ["", "model."])
def test_single_file_with_vae_from_models_vae(tiny_checkpoint, tmp_path, reference, prefix):
    path, vae_dir = _single_file_root(tiny_checkpoint, tmp_path, prefix=prefix)
    source = formats.describe_checkpoint(path, vae_dirs=[vae_dir])
    assert source.kind == formats.SINGLE_FILE and source.variant == "BAGEL-tiny" and source.prefix == prefix
    assert source.ae_path == vae_dir / "ae.safetensors" and source.embedded_configs is not None
    _assert_same(load(path, vae_dirs=[vae_dir]), reference)


def test_single_file_names_what_is_missing(tiny_checkpoint, tmp_path):
    path, vae_dir = _single_file_root(tiny_checkpoint, tmp_path / "a", vae=False)
    with pytest.raises(BagelCheckpointError, match="No FLUX autoencoder.*models/vae"):
        formats.describe_checkpoint(path, vae_dirs=[vae_dir])
    path, vae_dir = _single_file_root(tiny_checkpoint, tmp_path / "b", tokenizer=False)
    with pytest.raises(BagelCheckpointError, match="No tokenizer found.*tokenizer.json"):
        formats.describe_checkpoint(path, vae_dirs=[vae_dir])
    path, vae_dir = _single_file_root(tiny_checkpoint, tmp_path / "c", embed=False)
    with pytest.raises(BagelCheckpointError, match="llm_config.json"):
        formats.describe_checkpoint(path, vae_dirs=[vae_dir])


def _community_file(tiny_checkpoint, tmp_path, pipe, scale_key: str | None, name: str) -> Path:
    """A BAGEL folder whose extra weights file stores the quantized Linears of ``pipe`` under community names."""
    folder = _copy_folder(tiny_checkpoint, tmp_path / name)
    state = {}
    for key, value in pipe.model.bagel.state_dict().items():
        module, _, attr = key.rpartition(".")
        if attr == "scale_weight" and scale_key is not None:
            state[f"{module}.{scale_key}"] = value.reshape(1)
        elif attr == "SCB":
            state[f"{module}.{scale_key}"] = value / 127.0
        elif attr != "scale_weight":
            state[key] = value.contiguous()
    save_file(state, str(folder / f"{name}.safetensors"))
    return folder / f"{name}.safetensors"


@pytest.fixture(scope="module")
def fp8_pipe(tiny_checkpoint):
    return load(tiny_checkpoint, "fp8_e4m3fn")


def test_community_fp8_loads_as_fp8_and_matches_our_fp8(tiny_checkpoint, tmp_path, fp8_pipe, reference):
    path = _community_file(tiny_checkpoint, tmp_path, fp8_pipe, "weight_scale", "ema-FP8")
    source = formats.describe_checkpoint(path)
    assert source.kind == formats.SINGLE_FILE and source.held_precision == "fp8_e4m3fn"
    assert resolve_auto(path, torch.device("cpu"), torch.float32, available_bytes=2 ** 40).precision == "fp8_e4m3fn"
    with pytest.raises(BagelInputError, match="stores its weights in fp8_e4m3fn"):
        load(path, "bf16")
    pipe = load(path, "auto", available_memory=2 ** 40)
    layers = [m for m in pipe.model.bagel.modules() if isinstance(m, Fp8Linear)]
    assert layers and all(m.weight.dtype == torch.float8_e4m3fn for m in layers)
    assert "stored fp8_e4m3fn" in repr(pipe)
    got, ours = outputs(pipe), outputs(fp8_pipe)
    assert torch.equal(got["latent"], ours["latent"]) and got["tokens"] == ours["tokens"]
    # Lossy against bf16: the measured relative L2 distance of the latent (tiny random model) stays small.
    distance = (got["latent"] - reference["latent"]).norm() / reference["latent"].norm()
    assert distance < 0.1, float(distance)


def test_community_fp8_without_scales_is_a_plain_cast(tiny_checkpoint, tmp_path, reference):
    folder = _copy_folder(tiny_checkpoint, tmp_path / "plain-fp8")
    state = _state(tiny_checkpoint / "ema.safetensors")
    linears = {n for n, m in load(tiny_checkpoint).model.bagel.named_modules() if isinstance(m, torch.nn.Linear)
               or type(m).__name__.endswith("Linear")}
    cast = {k: v.to(torch.float8_e4m3fn) if k.rpartition(".")[0] in linears and k.endswith(".weight") else v
            for k, v in state.items()}
    save_file(cast, str(folder / "ema-FP8.safetensors"))
    pipe = load(folder, "fp8_e4m3fn")
    got = outputs(pipe)
    distance = (got["latent"] - reference["latent"]).norm() / reference["latent"].norm()
    assert distance < 0.1, float(distance)


def test_per_row_fp8_scale_is_refused(tiny_checkpoint, tmp_path, fp8_pipe):
    path = _community_file(tiny_checkpoint, tmp_path, fp8_pipe, "weight_scale", "rows")
    state = _state(path)
    key = next(k for k in state if k.endswith(".weight_scale"))
    rows = state[key.replace("weight_scale", "weight")].shape[0]
    state[key] = state[key].expand(rows).contiguous()
    save_file(state, str(path))
    with pytest.raises(BagelCheckpointError, match="per-row fp8 scale"):
        load(path, "fp8_e4m3fn")


def test_community_int8_loads_into_our_int8_layers(tiny_checkpoint, tmp_path):
    require("bitsandbytes", "int8 layers")
    int8_pipe = load(tiny_checkpoint, "int8")
    path = _community_file(tiny_checkpoint, tmp_path, int8_pipe, "weight_scale", "model_int8")
    assert formats.describe_checkpoint(path).held_precision == "int8"
    pipe = load(path, "int8")
    got, ours = outputs(pipe), outputs(int8_pipe)
    assert torch.equal(got["latent"], ours["latent"]) and got["tokens"] == ours["tokens"]


def test_gguf_dequantized_at_load(tiny_checkpoint, tmp_path, reference):
    require("gguf", "GGUF reader")
    import gguf

    folder = _copy_folder(tiny_checkpoint, tmp_path / "gguf")
    state = _state(tiny_checkpoint / "ema.safetensors")
    for name, quantize in (("bagel-F32.gguf", False), ("bagel-Q8_0.gguf", True)):
        writer = gguf.GGUFWriter(str(folder / name), "bagel")
        for key, value in state.items():
            array = value.float().numpy()
            if quantize and array.ndim == 2 and array.shape[-1] % 32 == 0:
                writer.add_tensor(key, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                                  raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(key, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    exact = folder / "bagel-F32.gguf"
    assert formats.describe_checkpoint(exact).kind == formats.GGUF
    _assert_same(load(exact), reference)
    got = outputs(load(folder / "bagel-Q8_0.gguf"))
    distance = (got["latent"] - reference["latent"]).norm() / reference["latent"].norm()
    assert distance < 0.05, float(distance)


def test_two_weight_files_in_one_folder_must_be_chosen(tiny_checkpoint, tmp_path):
    folder = _copy_folder(tiny_checkpoint, tmp_path / "two")
    shutil.copyfile(tiny_checkpoint / "ema.safetensors", folder / "a.safetensors")
    shutil.copyfile(tiny_checkpoint / "ema.safetensors", folder / "b.safetensors")
    with pytest.raises(BagelCheckpointError, match="a.safetensors, b.safetensors.*'two/<file>'"):
        formats.describe_checkpoint(folder)
    assert formats.describe_checkpoint(folder / "b.safetensors").weights == [folder / "b.safetensors"]


def test_dfloat11_is_detected_and_refused_with_what_to_install(tiny_checkpoint, tmp_path):
    folder = _copy_folder(tiny_checkpoint, tmp_path / "df11")
    (folder / "config.json").write_text(json.dumps({"dfloat11_config": {
        "version": "0.5.0", "threads_per_block": [512], "bytes_per_thread": 8, "pattern_dict": {}}}))
    save_file({"language_model.model.layers.0.encoded_exponent": torch.zeros(8, dtype=torch.uint8)},
              str(folder / "model.safetensors"))
    assert formats.describe_checkpoint(folder).kind == formats.DFLOAT11
    with pytest.raises(BagelCheckpointError, match="DFloat11.*(dfloat11\\[cuda12\\]|CUDA)"):
        load(folder)


def test_unknown_config_keys_are_logged_and_changing_ones_refused(tiny_checkpoint, tmp_path, reference, caplog):
    folder = _copy_folder(tiny_checkpoint, tmp_path / "finetune", skip=())
    llm = json.loads((folder / "llm_config.json").read_text())
    (folder / "llm_config.json").write_text(json.dumps({**llm, "reca_alignment_weight": 0.5}))
    with caplog.at_level(logging.WARNING):
        pipe = load(folder)
    assert "reca_alignment_weight" in caplog.text
    _assert_same(pipe, reference)
    (folder / "llm_config.json").write_text(json.dumps({**llm, "rope_scaling": {"type": "linear", "factor": 2}}))
    with pytest.raises(BagelCheckpointError, match="rope_scaling"):
        load(folder)


def test_gguf_without_the_package_says_what_to_install(tiny_checkpoint, tmp_path, monkeypatch):
    from bagel_model.checkpoint import gguf_store

    folder = _copy_folder(tiny_checkpoint, tmp_path / "gguf-missing")
    (folder / "bagel.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(gguf_store, "gguf_available", lambda: False)
    with pytest.raises(BagelCheckpointError, match="pip install gguf"):
        formats.describe_checkpoint(folder / "bagel.gguf")


def test_a_file_of_another_model_is_refused_with_its_keys(tiny_checkpoint, tmp_path):
    folder = _copy_folder(tiny_checkpoint, tmp_path / "other")
    save_file({"model.diffusion_model.input_blocks.0.weight": torch.zeros(2)}, str(folder / "sd.safetensors"))
    with pytest.raises(BagelCheckpointError, match="holds no BAGEL tensors.*input_blocks"):
        formats.describe_checkpoint(folder / "sd.safetensors")
    with pytest.raises(BagelCheckpointError, match="ema.safetensors is missing"):
        formats.describe_checkpoint(folder)


def test_saving_a_prequantized_folder_from_a_single_file_is_refused(tiny_checkpoint, tmp_path, fp8_pipe):
    from bagel_model.checkpoint.prequantized import save_quantized

    path, _ = _single_file_root(tiny_checkpoint, tmp_path)
    with pytest.raises(BagelInputError, match="single checkpoint file"):
        save_quantized(fp8_pipe.model.bagel, path, tmp_path / "out", "fp8_e4m3fn")
    assert not (tmp_path / "out").exists()
