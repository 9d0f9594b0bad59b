"""Pre-quantized folders: written by save_quantized / the CLI, detected by the loader, loaded without
re-quantizing or touching ema.safetensors, and bit-identical to on-the-fly quantization."""
import json

import pytest
import torch

from bagel_model import BagelPipeline
from bagel_model.checkpoint import quantization
from bagel_model.cli import main as cli_main
from bagel_model.errors import BagelCheckpointError, BagelInputError
from bagel_model.checkpoint.folder import MARKER_FILE, weights_file_name

from quant_helpers import run_flows


@pytest.fixture(scope="module", params=["nf4", "int8", "fp8_e4m3fn"])
def saved(request, pipes, tmp_path_factory):
    precision = request.param
    out = tmp_path_factory.mktemp(f"pre_{precision}") / "BAGEL-tiny-pre"
    pipes[precision].save_quantized(out)
    return precision, out


def test_folder_layout(saved, tiny_checkpoint):
    precision, out = saved
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["precision"] == precision and marker["weights_file"] == weights_file_name(precision)
    assert not (out / "ema.safetensors").exists()
    for name in ("llm_config.json", "vit_config.json", "ae.safetensors", "vocab.json", "merges.txt"):
        assert (out / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name


def test_round_trip_is_bit_identical(saved, pipes, flow_outputs, monkeypatch):
    precision, out = saved

    real_factory = quantization.make_quantized_linear

    def no_requantization(name, *args, **kwargs):
        if name != "probe":  # the 64x64 device check before loading is allowed
            raise AssertionError(f"a pre-quantized folder must not be quantized again ({name})")
        return real_factory(name, *args, **kwargs)

    def no_fp8_quantization(*args, **kwargs):
        raise AssertionError("a pre-quantized fp8 folder must not be quantized again")

    monkeypatch.setattr(quantization, "make_quantized_linear", no_requantization)
    monkeypatch.setattr(quantization, "make_fp8_linear", no_fp8_quantization)
    loaded = BagelPipeline.from_pretrained(out, precision=precision, device="cpu", compute_dtype="fp32")
    original = pipes[precision].model.bagel.state_dict()
    reloaded = loaded.model.bagel.state_dict()
    assert original.keys() == reloaded.keys()
    for key in original:
        assert original[key].dtype == reloaded[key].dtype and torch.equal(original[key], reloaded[key]), key
    with torch.no_grad():
        again = run_flows(loaded)
    expected = flow_outputs[precision]
    for key in ("t2i", "edit"):
        assert torch.equal(again[key], expected[key]), key
    assert again["understand"] == expected["understand"] and again["think"] == expected["think"]


def test_wrong_precision_for_a_prequantized_folder(saved):
    precision, out = saved
    other = "int8" if precision != "int8" else "nf4"
    with pytest.raises(BagelInputError, match=f"pre-quantized {precision} folder"):
        BagelPipeline.from_pretrained(out, precision=other, device="cpu")


def test_every_saved_folder_loads_at_the_default_precision(saved, capsys):
    """The default precision is auto everywhere, and auto loads a pre-quantized folder in its own precision."""
    precision, out = saved
    assert BagelPipeline.from_pretrained(out, device="cpu", compute_dtype="fp32").precision == precision
    assert cli_main(["think", "--model", str(out), "--device", "cpu", "--prompt", "a cat",
                     "--max-think-tokens", "2"]) == 0, capsys.readouterr().err


def test_saving_a_full_precision_pipeline_is_refused(pipes, tmp_path):
    with pytest.raises(BagelInputError, match="nf4, int8, fp8_e4m3fn"):
        pipes["bf16"].save_quantized(tmp_path / "x")


def test_cli_quantize_writes_a_loadable_folder(tiny_checkpoint, tmp_path, pipes, capsys):
    out = tmp_path / "cli-int8"
    assert cli_main(["quantize", "--model", str(tiny_checkpoint), "--precision", "int8", "--out", str(out),
                     "--device", "cpu"]) == 0
    assert str(out) in capsys.readouterr().out
    loaded = BagelPipeline.from_pretrained(out, precision="int8", device="cpu", compute_dtype="fp32")
    reference = pipes["int8"].model.bagel.state_dict()
    for key, value in loaded.model.bagel.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_corrupt_prequantized_folder(saved, tmp_path):
    precision, out = saved
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in out.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    weights = broken / weights_file_name(precision)
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(BagelCheckpointError, match="truncated"):
        BagelPipeline.from_pretrained(broken, precision=precision, device="cpu")
    weights.unlink()
    with pytest.raises(BagelCheckpointError, match=weights.name):
        BagelPipeline.from_pretrained(broken, precision=precision, device="cpu")
    (broken / MARKER_FILE).write_text("{not json")
    with pytest.raises(BagelCheckpointError, match=MARKER_FILE):
        BagelPipeline.from_pretrained(broken, precision=precision, device="cpu")
