"""python -m bagel_model ... --remote URL: same commands, run by the (fake) server."""
import json

from PIL import Image

from bagel_model.cli import main


def test_generate_edit_understand_think_remotely(fake_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BAGEL_MOT_API_KEY", "cli-key")
    out = tmp_path / "fox.png"
    summary = tmp_path / "fox.json"
    assert main(["generate", "--remote", fake_server.url, "--prompt", "a fox", "--width", "64", "--height", "48",
                 "--steps", "4", "--cfg-text-scale", "6", "--seed", "9", "--out", str(out),
                 "--json", str(summary)]) == 0
    fields = fake_server.requests[0]["fields"]
    assert (fields["num_inference_steps"], fields["cfg_text_scale"], fields["seed"]) == (4, 6.0, 9)
    assert fake_server.headers[0]["Authorization"] == "Bearer cli-key"
    with Image.open(out) as picture:
        assert picture.size == (64, 48)
    assert json.loads(summary.read_text())["width"] == 64

    edited = tmp_path / "edited.png"
    assert main(["edit", "--remote", fake_server.url, "--image", str(out), "--prompt", "make it blue",
                 "--out", str(edited)]) == 0
    assert fake_server.requests[1]["fields"]["cfg_img_scale"] == 2.0 and edited.is_file()

    capsys.readouterr()
    assert main(["understand", "--remote", fake_server.url, "--image", str(out), "--prompt", "What?"]) == 0
    assert "answer to: What?" in capsys.readouterr().out
    assert main(["think", "--remote", fake_server.url, "--prompt", "a cat"]) == 0
    assert "a cat" in capsys.readouterr().out


def test_remote_errors_and_unsupported_options_exit_2(fake_server, tmp_path, capsys):
    args = ["generate", "--remote", fake_server.url, "--prompt", "a fox", "--out", str(tmp_path / "x.png")]
    assert main(args + ["--save-latent", str(tmp_path / "x.safetensors")]) == 2
    assert "--save-latent needs a local --model" in capsys.readouterr().err
    fake_server.fail_with = (503, {"error": {"message": "server is warming up"}})
    assert main(args) == 2
    assert "HTTP 503): server is warming up" in capsys.readouterr().err
    assert main(["generate", "--remote", "http://127.0.0.1:9", "--prompt", "x", "--out", "y.png"]) == 2
    assert "refused the connection" in capsys.readouterr().err
