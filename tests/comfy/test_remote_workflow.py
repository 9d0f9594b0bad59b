"""Integration: a real ComfyUI server (main.py --cpu) runs a remote workflow against the fake vLLM-Omni server:
images saved, text shown, warnings in the node's ui, Cancel aborts requests, failures leave ComfyUI serving."""
import socket
import sys
from pathlib import Path

import pytest
from PIL import Image

from comfy_http import history_messages
from ws_events import WsEvents

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "remote"))
from fake_vllm_omni import FakeVllmOmni  # noqa: E402

SAMPLER = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.4, cfg_interval_end=1.0,
               timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")


@pytest.fixture
def fake():
    with FakeVllmOmni() as server:
        yield server


def remote_prompt(url, batch_size=2, **text_to_image):
    return {
        "1": {"class_type": "BagelMoTRemoteModel",
              "inputs": {"server_url": url, "api_key": "", "timeout": 60, "max_concurrent_requests": 2}},
        "2": {"class_type": "BagelMoTTextToImage",
              "inputs": {"bagel_model": ["1", 0], "prompt": "a red fox", "width": 64, "height": 48, **SAMPLER,
                         "seed": 11, "batch_size": batch_size, **text_to_image}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "remote"}},
        "4": {"class_type": "BagelMoTUnderstand",
              "inputs": {"bagel_model": ["1", 0], "image": ["2", 0], "question": "What is it?",
                         "max_new_tokens": 8, "do_sample": False, "temperature": 0.3, "seed": 0, "think": False}},
    }


def finished(server, prompt):
    return server.client.wait(server.client.queue_or_raise(prompt), timeout=300)


def test_remote_workflow_runs_and_reports_warnings(server, fake):
    entry = finished(server, remote_prompt(fake.url))
    assert entry["status"]["status_str"] == "success", history_messages(entry, "execution_error")
    saved = entry["outputs"]["3"]["images"]
    assert len(saved) == 2
    for image in saved:
        with Image.open(server.base / "output" / image["subfolder"] / image["filename"]) as picture:
            assert picture.size == (64, 48)
    assert entry["outputs"]["4"]["text"] == ["answer to: What is it? (seed 0)"] * 2
    assert [r["modality"] for r in fake.requests].count("image") == 2 and len(fake.requests) == 4
    assert "2" not in entry["outputs"]  # no warnings: every setting was applied

    warned = finished(server, remote_prompt(fake.url, step_cache="taylor", seed=12))
    assert warned["status"]["status_str"] == "success"
    assert "step_cache" in warned["outputs"]["2"]["bagel_mot_warnings"][0]


def test_cancel_aborts_requests_in_flight(server, fake):
    fake.hold_requests()
    prompt_id = server.client.queue_or_raise(remote_prompt(fake.url, batch_size=4, seed=21))
    assert fake.wait_in_flight(2, timeout=120)
    assert server.client.request("/interrupt", {})[0] == 200
    entry = server.client.wait(prompt_id, timeout=120)
    assert history_messages(entry, "execution_interrupted")
    with fake.reached:
        assert fake.reached.wait_for(lambda: fake.in_flight == 0, 60)
    assert fake.disconnected == 2 and len(fake.headers) == 2


def test_failures_are_clear_and_comfyui_keeps_serving(server, fake):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failed = finished(server, remote_prompt(f"http://127.0.0.1:{port}", seed=31))
    (error,) = history_messages(failed, "execution_error")
    assert error["node_type"] == "BagelMoTTextToImage"
    assert f"http://127.0.0.1:{port} refused the connection" in error["exception_message"]

    fake.fail_with = (400, {"error": {"message": "Requested width=64 is too small for this server"}})
    rejected = finished(server, remote_prompt(fake.url, seed=32))
    (error,) = history_messages(rejected, "execution_error")
    assert "HTTP 400" in error["exception_message"] and "too small for this server" in error["exception_message"]

    fake.fail_with = None
    recovered = finished(server, remote_prompt(fake.url, seed=33))
    assert recovered["status"]["status_str"] == "success"


def test_using_the_latent_of_a_remote_result_says_why_it_is_empty(server, fake):
    prompt = remote_prompt(fake.url, batch_size=1, seed=41)
    prompt["5"] = {"class_type": "SaveLatent", "inputs": {"samples": ["2", 1], "filename_prefix": "remote"}}
    events = WsEvents(server.url, server.client.client_id)
    try:
        entry = finished(server, prompt)
        error = events.wait_for(lambda m: m["type"] == "execution_error" and m["data"]["node_id"] == "5")
    finally:
        events.close()
    assert "server returns images only" in error["data"]["exception_message"]
    assert len(entry["outputs"]["3"]["images"]) == 1  # the images still ran and were saved
