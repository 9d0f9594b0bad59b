"""Arguments are refused before any weight is read (CLI and API); the CLI says where its outputs went and escapes
what a random checkpoint writes."""
import inspect
import sys

import pytest
from PIL import Image

import bagel_model.checkpoint.loading as loading
import bagel_model.checkpoint.tensor_store as tensor_store
import bagel_model.checkpoint.safetensors_header as safetensors_header
from bagel_model import BagelPipeline, cli
from bagel_model.checkpoint.folder_check import check_bagel_folder
from bagel_model.errors import BagelCheckpointError, BagelInputError
from bagel_model.testing import is_random_checkpoint

_OPENED: list[str] = []
_SPYING = [False]


def _audit(event: str, args) -> None:
    if _SPYING[0] and event == "open" and str(args[0]).endswith(".safetensors"):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)  # an audit hook cannot be removed: it records only while _SPYING is set


@pytest.fixture
def weight_reads(monkeypatch):
    """Every safetensors file opened (Python opens, and safetensors' own reader) while the test runs."""
    _OPENED.clear()

    def spy_safe_open(path, *args, **kwargs):
        _OPENED.append(str(path))
        raise AssertionError(f"a weight file was opened: {path}")

    for module in (loading, tensor_store, safetensors_header):
        monkeypatch.setattr(module, "safe_open", spy_safe_open)
    monkeypatch.setattr(BagelPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: _OPENED.append("from_pretrained") or 1 / 0))
    _SPYING[0] = True
    yield _OPENED
    _SPYING[0] = False


def _refused(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_cli_refuses_a_bad_size_before_any_weight_is_read(tiny_checkpoint, tmp_path, capsys, weight_reads):
    err = _refused(capsys, ["generate", "--model", str(tiny_checkpoint), "--prompt", "x", "--width", "100",
                            "--out", str(tmp_path / "x.png")])
    assert "width=100 is not supported" in err and "multiple of 16" in err and "e.g. 96 or 112" in err
    assert weight_reads == []


@pytest.mark.parametrize("extra, message", [
    (["--steps", "1"], "steps must be at least 2"),
    (["--cfg-interval", "0.8", "0.2"], "cfg_interval"),
    (["--precision", "int3"], "Unknown precision 'int3'"),
    (["--step-cache", "taylor", "--step-cache-order", "9"], "order"),
])
def test_cli_refuses_bad_sampler_settings_before_loading(tiny_checkpoint, tmp_path, capsys, weight_reads, extra,
                                                         message):
    err = _refused(capsys, ["generate", "--model", str(tiny_checkpoint), "--prompt", "x", "--out",
                            str(tmp_path / "x.png"), *extra])
    assert message in err
    assert weight_reads == []


def test_cli_refuses_a_text_file_as_image_before_loading(tiny_checkpoint, tmp_path, capsys, weight_reads):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    for command in (["understand", "--prompt", "what?"], ["edit", "--prompt", "blue", "--out", str(tmp_path / "o.png")],
                    ["think", "--prompt", "plan"]):
        err = _refused(capsys, [*command, "--model", str(tiny_checkpoint), "--image", str(notes)])
        assert f"Cannot read image {notes}" in err
    assert weight_reads == []


def test_cli_refuses_token_counts_before_loading(tiny_checkpoint, capsys, weight_reads):
    err = _refused(capsys, ["think", "--model", str(tiny_checkpoint), "--prompt", "p", "--max-think-tokens", "0"])
    assert "--max-think-tokens must be at least 1" in err
    assert weight_reads == []


def test_a_folder_that_is_not_a_bagel_folder_is_named_as_such(tmp_path, capsys, weight_reads):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _refused(capsys, ["understand", "--model", str(empty), "--prompt", "x", "--image", str(empty)])
    assert f"not a BAGEL folder: {empty}" in err and "expected llm_config.json" in err and "holds nothing" in err
    assert "hf download ByteDance-Seed/BAGEL-7B-MoT" in err and "vocab.json is missing" not in err
    assert weight_reads == []


def test_a_wrong_folder_lists_what_it_holds(tmp_path):
    other = tmp_path / "sdxl"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(BagelCheckpointError, match=r"not a BAGEL folder: .*sdxl .*holds model\.safetensors"):
        check_bagel_folder(other)


def test_api_checks_folder_and_precision_before_reading_weights(tiny_checkpoint, tmp_path, monkeypatch):
    opened = []
    for module in (loading, tensor_store, safetensors_header):
        monkeypatch.setattr(module, "safe_open", lambda path, *a, **k: opened.append(path) or 1 / 0)
    _OPENED.clear()
    _SPYING[0] = True
    try:
        with pytest.raises(BagelCheckpointError, match="not a BAGEL folder"):
            BagelPipeline.from_pretrained(tmp_path, device="cpu")
        with pytest.raises(BagelInputError, match="Unknown precision 'bf17'"):
            BagelPipeline.from_pretrained(tiny_checkpoint, precision="bf17", device="cpu")
    finally:
        _SPYING[0] = False
    assert opened == [] and _OPENED == []


def test_api_refuses_a_bad_size_before_any_phase_runs(tiny_pipe):
    phases = []
    tiny_pipe.phase_hook = phases.append  # a memory manager loads weights when a phase starts
    try:
        with pytest.raises(BagelInputError, match="width=100 is not supported"):
            tiny_pipe.generate_image("x", width=100, height=64, steps=2)
    finally:
        tiny_pipe.phase_hook = None
    assert phases == []


def test_cli_says_where_it_wrote_and_that_random_weights_give_noise(tiny_checkpoint, tmp_path, capsys):
    assert is_random_checkpoint(tiny_checkpoint)
    out, summary = tmp_path / "sub" / "g.png", tmp_path / "g.json"
    assert cli.main(["generate", "--model", str(tiny_checkpoint), "--device", "cpu", "--prompt", "a cube",
                     "--width", "32", "--height", "32", "--steps", "2", "--out", str(out), "--json",
                     str(summary)]) == 0
    captured = capsys.readouterr()
    assert f"wrote image: {out.resolve()} (32x32)" in captured.out
    assert f"wrote summary: {summary.resolve()}" in captured.out
    assert "random test checkpoint" in captured.err and "the image is noise" in captured.err
    assert "hf download ByteDance-Seed/BAGEL-7B-MoT" in captured.err


def test_cli_prints_random_text_escaped_with_a_note(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "in.png")
    raw = "ok\x07\x1b[2J\tend\u200b"
    real_understand = BagelPipeline.understand

    def understand(self, *args, **kwargs):
        result = real_understand(self, *args, **kwargs)
        result.text = raw  # what a random model can write: a bell, an escape sequence, a zero-width space
        return result

    monkeypatch.setattr(BagelPipeline, "understand", understand)
    assert cli.main(["understand", "--model", str(tiny_checkpoint), "--device", "cpu", "--image",
                     str(tmp_path / "in.png"), "--prompt", "what?", "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "ok\\x07\\x1b[2J\tend\\u200b"
    assert "\x07" not in captured.out and "\x1b" not in captured.out
    assert "random test checkpoint" in captured.err and "gibberish" in captured.err


def test_auto_is_the_default_precision_of_api_and_cli(tiny_checkpoint):
    assert inspect.signature(BagelPipeline.from_pretrained).parameters["precision"].default == "auto"
    for command in (["understand", "--image", "x.png"], ["generate", "--out", "x.png"], ["edit", "--image", "x.png",
                    "--out", "x.png"], ["think"]):
        args = cli.build_parser().parse_args([*command, "--model", str(tiny_checkpoint), "--prompt", "p"])
        assert args.precision == "auto", command


def test_escaping_keeps_ordinary_text():
    assert cli.escape_control_characters("Ein Würfel,\n\tsehr rot. 日本") == "Ein Würfel,\n\tsehr rot. 日本"
    assert cli.escape_control_characters("\x00\x7f") == "\\x00\\x7f"


def test_help_names_every_command_in_plain_text():
    parser = cli.build_parser()
    commands = next(action for action in parser._actions if action.dest == "command").choices
    assert "quantize" in commands
    text = parser.format_help()
    description = text.split("positional arguments")[0]
    assert all(name in description for name in commands), description
    assert "``" not in text
