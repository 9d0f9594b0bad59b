"""Each flow end to end through the API and the CLI; strict loading and bad-input errors."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from bagel_model import BagelCheckpointError, BagelInputError, BagelPipeline
from bagel_model.text.tokenizer import Qwen2Tokenizer

RED = Image.new("RGB", (96, 80), (220, 20, 20))


def test_understand_flow(tiny_pipe):
    res = tiny_pipe.understand([RED], "What colour is this?", max_new_tokens=6)
    assert 1 <= len(res.token_ids) <= 6 and res.answer == res.text
    think = tiny_pipe.understand([RED, RED], "Compare.", think=True, max_new_tokens=4)
    assert len(think.token_ids) <= 4


def test_generate_and_edit_flows(tiny_pipe):
    gen = tiny_pipe.generate_image("a red cube", width=48, height=32, steps=3, seed=1)
    assert gen.images[0].size == (48, 32) and gen.latents[0].shape == (1, 16, 4, 6)
    edit = tiny_pipe.edit_image([RED], "make it green", steps=2, seed=1)
    assert edit.images[0].size == (608, 512)  # VAE rule: 96x80 scaled by 512/80, snapped to 16
    sized = tiny_pipe.edit_image([RED], "make it green", steps=2, output_size=(64, 48))
    assert sized.images[0].size == (64, 48)


def test_think_then_generate_equals_integrated_think(tiny_pipe):
    plan = tiny_pipe.think("a cat made of cats", max_think_tokens=5, seed=3)
    assert plan.text == plan.thinking and len(plan.token_ids) <= 5
    integrated = tiny_pipe.generate_image("a cat made of cats", width=32, height=32, steps=3, think=True,
                                          max_think_tokens=5, seed=3)
    assert integrated.token_ids == plan.token_ids
    if plan.text.strip():
        plugged = tiny_pipe.generate_image("a cat made of cats", width=32, height=32, steps=3,
                                           thinking=plan.text, seed=3)
        assert torch.equal(plugged.latents[0], integrated.latents[0])


def test_interleaved_inputs(tiny_pipe):
    res = tiny_pipe.edit_image(None, None, steps=2, inputs=[RED, "first", Image.new("RGB", (64, 64)), "second"])
    assert res.images[0].size == (512, 512)


@pytest.mark.parametrize("kwargs", [dict(width=100, height=64), dict(width=2048, height=64),
                                    dict(width=64, height=0), dict(steps=1), dict(cfg_renorm_type="local")])
def test_bad_generation_arguments_raise_clear_errors(tiny_pipe, kwargs):
    args = dict(width=32, height=32, steps=3) | kwargs
    with pytest.raises(BagelInputError):
        tiny_pipe.generate_image("a cat", **args)


def test_empty_prompt_and_missing_image(tiny_pipe):
    with pytest.raises(BagelInputError, match="prompt is empty"):
        tiny_pipe.generate_image("   ", width=32, height=32)
    with pytest.raises(BagelInputError, match="input image"):
        tiny_pipe.edit_image([], "do it")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_file_and_folder_errors_name_the_path(tiny_checkpoint, tmp_path):
    with pytest.raises(BagelCheckpointError, match="does not exist"):
        BagelPipeline.from_pretrained(tmp_path / "nothing", device="cpu")
    folder = _copy(tiny_checkpoint, tmp_path / "no_ae")
    (folder / "ae.safetensors").unlink()
    with pytest.raises(BagelCheckpointError, match="ae.safetensors"):
        BagelPipeline.from_pretrained(folder, device="cpu")


def test_strict_load_names_missing_unexpected_and_misshaped_keys(tiny_checkpoint, tmp_path):
    state = load_file(tiny_checkpoint / "ema.safetensors")
    cases = {
        "missing": lambda s: s.pop("llm2vae.bias"),
        "unexpected": lambda s: s.__setitem__("extra.weight", torch.zeros(2)),
        "shape": lambda s: s.__setitem__("llm2vae.bias", torch.zeros(63, dtype=torch.bfloat16)),
    }
    for name, edit in cases.items():
        folder = _copy(tiny_checkpoint, tmp_path / name)
        broken = dict(state)
        edit(broken)
        save_file(broken, str(folder / "ema.safetensors"))
        with pytest.raises(BagelCheckpointError) as info:
            BagelPipeline.from_pretrained(folder, device="cpu")
        assert str(folder) in str(info.value)
        assert ("llm2vae.bias" in str(info.value)) or ("extra.weight" in str(info.value))


def test_truncated_weights_fail_cleanly(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint, tmp_path / "trunc")
    data = (folder / "ema.safetensors").read_bytes()
    (folder / "ema.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BagelCheckpointError, match="truncated"):
        BagelPipeline.from_pretrained(folder, device="cpu")


def test_tokenizer_roundtrip_and_special_tokens(tiny_checkpoint):
    tok = Qwen2Tokenizer.from_folder(tiny_checkpoint)
    text = "Hello wörld! <|im_start|>the end"
    ids = tok.encode(text)
    assert tok.token_id("<|im_start|>") in ids
    assert tok.decode(ids) == text


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bagel_model", *args], capture_output=True, text=True,
                          cwd=cwd or Path(__file__).resolve().parents[2], timeout=600)


def test_cli_all_modes_write_json_png_and_latent(tiny_checkpoint, tmp_path):
    RED.save(tmp_path / "in.png")
    base = ["--model", str(tiny_checkpoint), "--device", "cpu"]
    gen = _cli("generate", *base, "--prompt", "a cube", "--width", "48", "--height", "32", "--steps", "3",
               "--out", str(tmp_path / "g.png"), "--save-latent", str(tmp_path / "g.safetensors"),
               "--json", str(tmp_path / "g.json"))
    assert gen.returncode == 0, gen.stderr
    summary = json.loads((tmp_path / "g.json").read_text())
    assert summary["width"] == 48 and summary["height"] == 32 and summary["peak_rss_mb"] > 0
    latent = load_file(tmp_path / "g.safetensors")["latent"]
    assert latent.dtype == torch.float32 and latent.shape == (1, 16, 4, 6)
    again = _cli("generate", *base, "--prompt", "a cube", "--width", "48", "--height", "32", "--steps", "3",
                 "--out", str(tmp_path / "g2.png"), "--save-latent", str(tmp_path / "g2.safetensors"))
    assert again.returncode == 0, again.stderr
    assert torch.equal(load_file(tmp_path / "g2.safetensors")["latent"], latent)  # across processes
    edit = _cli("edit", *base, "--image", str(tmp_path / "in.png"), "--prompt", "blue", "--steps", "2",
                "--out", str(tmp_path / "e.png"), "--json", str(tmp_path / "e.json"))
    assert edit.returncode == 0, edit.stderr
    assert Image.open(tmp_path / "e.png").size == (608, 512)
    und = _cli("understand", *base, "--image", str(tmp_path / "in.png"), "--prompt", "what?",
               "--max-new-tokens", "3", "--json", str(tmp_path / "u.json"))
    assert und.returncode == 0, und.stderr
    assert len(json.loads((tmp_path / "u.json").read_text())["token_ids"]) <= 3
    think = _cli("think", *base, "--prompt", "a dog", "--max-think-tokens", "3", "--json", str(tmp_path / "t.json"))
    assert think.returncode == 0, think.stderr


def test_cli_reports_bad_input_without_traceback(tiny_checkpoint, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    bad = _cli("understand", "--model", str(tiny_checkpoint), "--image", str(tmp_path / "bad.png"),
               "--prompt", "x")
    assert bad.returncode == 2 and "Cannot read image" in bad.stderr and "Traceback" not in bad.stderr
    size = _cli("generate", "--model", str(tiny_checkpoint), "--prompt", "x", "--width", "50", "--out",
                str(tmp_path / "x.png"))
    assert size.returncode == 2 and "multiple of 16" in size.stderr


def test_make_test_checkpoint_cli(tmp_path):
    made = _cli("make-test-checkpoint", str(tmp_path / "ck"), "--preset", "tiny", "--seed", "3")
    assert made.returncode == 0, made.stderr
    assert {p.name for p in (tmp_path / "ck").iterdir()} >= {"llm_config.json", "vit_config.json",
                                                              "ema.safetensors", "ae.safetensors", "vocab.json",
                                                              "merges.txt", "tokenizer_config.json"}
