"""BAGEL-MoT Remote Model with the real ComfyUI code (in this process) against the fake vLLM-Omni server:
the unchanged Text to Image / Edit / Understand / Think nodes, batching, progress, Cancel, keys, errors."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "remote"))
from fake_vllm_omni import FakeVllmOmni, native_size  # noqa: E402

from bagel_model import BagelInputError  # noqa: E402
from bagel_model.remote import RemoteConnectionError  # noqa: E402

FAST = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.4, cfg_interval_end=1.0,
            timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")
EDIT_FAST = dict(FAST, cfg_img_scale=2.0, cfg_interval_start=0.0, cfg_renorm_type="text_channel")


@pytest.fixture(scope="module")
def ours(comfy_nodes):
    return {name: cls for name, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("BagelMoT")}


@pytest.fixture
def fake():
    with FakeVllmOmni() as server:
        yield server


def connect(ours, url, **options):
    return ours["BagelMoTRemoteModel"]().connect(url, **options)[0]


def images(count=1, width=48, height=32):
    return torch.rand((count, height, width, 3), generator=torch.Generator().manual_seed(3))


def test_node_contract(comfy_nodes, ours):
    node = ours["BagelMoTRemoteModel"]
    spec = node.INPUT_TYPES()
    assert list(spec["required"]) == ["server_url"]
    assert list(spec["optional"]) == ["api_key", "timeout", "max_concurrent_requests"]
    # Same model type as the loader's first output; no VAE (the server's autoencoder stays on the server).
    assert node.RETURN_TYPES == ours["BagelMoTModelLoader"].RETURN_TYPES[:1] == ("BAGEL_MOT_MODEL",)
    assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS["BagelMoTRemoteModel"].startswith("BAGEL-MoT Remote Model")
    assert node.VALIDATE_INPUTS(server_url="http://gpu-box:8091") is True
    assert "not an http(s) URL" in node.VALIDATE_INPUTS(server_url="gpu-box:8091")


def test_text_to_image_batch_maps_every_widget(ours, fake):
    model = connect(ours, fake.url, max_concurrent_requests=2)
    widgets = dict(FAST, cfg_text_scale=5.0, cfg_interval_start=0.2, cfg_renorm_min=0.5,
                   cfg_renorm_type="channel")
    out = ours["BagelMoTTextToImage"]().generate(model, "a fox", 64, 48, seed=7, batch_size=3, **widgets)
    assert isinstance(out, tuple) and out[0].shape == (3, 48, 64, 3)
    from comfy_execution.graph_utils import ExecutionBlocker

    # No latents from a server: a node using the LATENT output stops with this message; unused, nothing happens.
    assert isinstance(out[1], ExecutionBlocker) and "returns images only" in out[1].message
    sent = sorted((request["fields"] for request in fake.requests), key=lambda fields: fields["seed"])
    assert [fields["seed"] for fields in sent] == [7, 8, 9]  # image k uses seed + k, as locally
    assert {(f["num_inference_steps"], f["cfg_text_scale"], tuple(f["cfg_interval"]), f["cfg_renorm_min"],
             f["cfg_renorm_type"], f["width"], f["height"]) for f in sent} == {(3, 5.0, (0.2, 1.0), 0.5, "channel",
                                                                                64, 48)}


def test_unapplied_settings_show_as_node_warnings(ours, fake):
    model = connect(ours, fake.url)
    out = ours["BagelMoTTextToImage"]().generate(model, "a fox", 32, 32, seed=1, batch_size=2, step_cache="taylor",
                                                 **dict(FAST, timestep_shift=1.5))
    warnings = out["ui"]["bagel_mot_warnings"]
    assert len(warnings) == 2 and "timestep_shift=1.5" in warnings[0] and "step_cache" in warnings[1]
    assert out["result"][0].shape == (2, 32, 32, 3)
    assert {request["fields"]["timestep_shift"] for request in fake.requests} == {1.5}  # sent, not changed


def test_edit_modes(ours, fake):
    model = connect(ours, fake.url)
    edit = ours["BagelMoTEdit"]()
    source = images(2, 96, 64)
    native = edit.edit(model, source, "make it blue", "native", 1024, 1024, seed=0, **EDIT_FAST)[0]
    assert native.shape == (2, 256, 384, 3) and native_size(fake.requests[0]["images"][0]) == (384, 256)
    assert edit.edit(model, source, "x", "match_input", 1024, 1024, seed=0, **EDIT_FAST)[0].shape == (2, 64, 96, 3)
    assert edit.edit(model, source[:1], "x", "custom", 128, 80, seed=0, **EDIT_FAST)[0].shape == (1, 80, 128, 3)
    assert {request["fields"]["cfg_img_scale"] for request in fake.requests} == {2.0}
    with pytest.raises(BagelInputError, match="only the first image"):
        edit.edit(model, source[:1], "x", "native", 1024, 1024, seed=0, reference_images=images(1), **EDIT_FAST)


def test_understand_and_think(ours, fake):
    model = connect(ours, fake.url)
    out = ours["BagelMoTUnderstand"]().understand(model, images(2), "What is it?", 16, False, 0.3, 4, True)
    answers, thoughts = out["result"]
    assert answers == out["ui"]["text"] == ["answer to: What is it? (seed 4)"] * 2
    assert thoughts == ["plan for: What is it?"] * 2
    plan = ours["BagelMoTThink"]().think(model, "a cat on a roof", 20, False, 0.3, 0)
    assert plan["result"][0] == plan["ui"]["text"][0] and "a cat on a roof" in plan["result"][0]
    assert fake.requests[-1]["fields"]["think"] is True and fake.requests[-1]["modality"] == "text"


def test_a_written_plan_cannot_be_sent(ours, fake):
    model = connect(ours, fake.url)
    with pytest.raises(BagelInputError, match="'thinking' cannot be sent"):
        ours["BagelMoTTextToImage"]().generate(model, "a fox", 32, 32, seed=0, batch_size=1,
                                               thinking="1. draw a fox", **FAST)
    assert fake.requests == []


def test_progress_counts_finished_requests_and_cancel_aborts(ours, fake, progress_updates):
    import comfy.model_management as mm

    model = connect(ours, fake.url, max_concurrent_requests=2)
    ours["BagelMoTTextToImage"]().generate(model, "a fox", 32, 32, seed=0, batch_size=4, **FAST)
    updates = [(value, total) for value, total, _ in progress_updates]
    assert updates[0] == (0, 4) and updates[-1] == (4, 4)
    assert all(total == 4 for _, total in updates) and [v for v, _ in updates] == sorted(v for v, _ in updates)

    def cancel_when_both_are_in_flight(value, total):
        if fake.in_flight == 2:
            mm.interrupt_current_processing(True)

    fake.hold_requests()
    progress_updates.on_update = cancel_when_both_are_in_flight
    with pytest.raises(mm.InterruptProcessingException):
        ours["BagelMoTTextToImage"]().generate(model, "a fox", 32, 32, seed=0, batch_size=5, **FAST)
    assert not mm.processing_interrupted()
    with fake.reached:
        assert fake.reached.wait_for(lambda: fake.in_flight == 0, 30)
    assert fake.disconnected == 2 and len(fake.headers) == 4 + 2


def test_api_key_from_environment_and_never_in_repr(ours, monkeypatch):
    with FakeVllmOmni(api_key="env-key-77") as keyed:
        monkeypatch.setenv("BAGEL_MOT_API_KEY", "env-key-77")
        model = connect(ours, keyed.url)
        assert ours["BagelMoTThink"]().think(model, "plan", 8, False, 0.3, 0)["result"][0]
        assert keyed.headers[-1]["Authorization"] == "Bearer env-key-77"
        typed = connect(ours, keyed.url, api_key="typed-key")
        assert "env-key-77" not in repr(model) and "typed-key" not in repr(typed)


def test_unreachable_server_is_a_clear_node_error(ours):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = connect(ours, f"http://127.0.0.1:{port}")
    with pytest.raises(RemoteConnectionError, match=f"http://127.0.0.1:{port} refused the connection"):
        ours["BagelMoTUnderstand"]().understand(model, images(1), "Hi?", 4, False, 0.3, 0, False)
