"""Integration: a real ComfyUI server (main.py --cpu) runs the bundled workflows over HTTP."""
import copy
import time
import urllib.parse

import pytest
from PIL import Image

from comfy_http import history_messages, ui_to_api
from comfy_server import EXTRA_MODEL_NAME, MAIN_MODEL_NAME, PACK_FOLDER_NAME
from workflow_cases import EXPECTED_IMAGE_SIZES, TEXT_NODE_TYPES, WORKFLOW_NAMES, load_workflow, make_fast
from ws_events import WsEvents

OUR_NODE_IDS = {"BagelMoTModelLoader", "BagelMoTTextToImage", "BagelMoTEdit", "BagelMoTUnderstand", "BagelMoTThink"}


@pytest.fixture(scope="module")
def object_info(server):
    return server.client.object_info()


def api_prompt(name, object_info):
    return make_fast(ui_to_api(load_workflow(name), object_info))


def node_of_type(prompt, class_type):
    return next(node for node in prompt.values() if node["class_type"] == class_type)


def run(server, prompt):
    entry = server.client.wait(server.client.queue_or_raise(prompt))
    errors = history_messages(entry, "execution_error")
    assert entry["status"]["status_str"] == "success", errors or entry["status"]
    return entry


def saved_image_sizes(server, entry):
    sizes = []
    for output in entry["outputs"].values():
        for image in output.get("images", []):
            path = server.base / "output" / image["subfolder"] / image["filename"]
            assert path.is_file(), f"missing output file {path}"
            with Image.open(path) as picture:
                sizes.append(picture.size)
    return sizes


def test_pack_nodes_templates_and_extension_are_served(server, object_info):
    assert OUR_NODE_IDS <= set(object_info)
    templates = server.client.get("/workflow_templates")
    assert sorted(templates[PACK_FOLDER_NAME]) == WORKFLOW_NAMES
    for name in WORKFLOW_NAMES:
        path = f"/api/workflow_templates/{PACK_FOLDER_NAME}/{urllib.parse.quote(name)}.json"  # names have spaces
        assert server.client.request(path)[0] == 200
    assert f"/extensions/{PACK_FOLDER_NAME}/bagel_mot_text_preview.js" in server.client.get("/extensions")


def test_loader_lists_folders_from_models_dir_and_extra_model_paths(object_info):
    choices = object_info["BagelMoTModelLoader"]["input"]["required"]["model_folder"][0]
    assert MAIN_MODEL_NAME in choices and EXTRA_MODEL_NAME in choices


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_bundled_workflow_runs(server, object_info, name):
    prompt = api_prompt(name, object_info)
    entry = run(server, prompt)
    assert sorted(saved_image_sizes(server, entry)) == sorted(EXPECTED_IMAGE_SIZES[name])
    for node_id, node in prompt.items():
        if node["class_type"] in TEXT_NODE_TYPES:
            texts = entry["outputs"][node_id]["text"]
            assert texts and all(isinstance(text, str) and text.strip() for text in texts)


def test_identical_second_run_is_fully_cached(server, object_info):
    prompt = api_prompt("BAGEL-MoT Text to Image", object_info)
    node_of_type(prompt, "BagelMoTTextToImage")["inputs"]["seed"] = 987654321
    run(server, prompt)
    second = run(server, copy.deepcopy(prompt))
    cached = {node for message in history_messages(second, "execution_cached") for node in message["nodes"]}
    assert cached == set(prompt)


def test_interrupt_stops_mid_run_and_next_run_succeeds(server, object_info):
    prompt = api_prompt("BAGEL-MoT Text to Image", object_info)
    generator = node_of_type(prompt, "BagelMoTTextToImage")["inputs"]
    generator.update(steps=200, width=128, height=128, seed=424242)
    generator_id = next(key for key, node in prompt.items() if node["class_type"] == "BagelMoTTextToImage")
    events = WsEvents(server.url, server.client.client_id)
    try:
        prompt_id = server.client.queue_or_raise(prompt)
        events.wait_for(lambda m: m["type"] == "progress" and m["data"]["node"] == generator_id
                        and m["data"]["value"] >= 2)
        assert server.client.request("/interrupt", {})[0] == 200
        events.wait_for(lambda m: m["type"] == "execution_interrupted")
    finally:
        events.close()
    entry = server.client.wait(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert history_messages(entry, "execution_interrupted")
    steps_done = max(m["data"]["value"] for m in events.messages
                     if m["type"] == "progress" and m["data"]["node"] == generator_id)
    assert steps_done < 200
    generator.update(steps=3, width=64, height=64)
    run(server, prompt)


def _expect_400(server, prompt, fragment):
    status, body = server.client.queue(prompt)
    assert status == 400, body
    details = " ".join(error["details"] for node in body["node_errors"].values() for error in node["errors"])
    assert fragment in details, details


def test_bad_inputs_get_clear_400s_and_server_keeps_working(server, object_info):
    good = api_prompt("BAGEL-MoT Text to Image", object_info)
    bad_size = copy.deepcopy(good)
    node_of_type(bad_size, "BagelMoTTextToImage")["inputs"]["width"] = 100
    _expect_400(server, bad_size, "multiples of 16")
    empty_prompt = copy.deepcopy(good)
    node_of_type(empty_prompt, "BagelMoTTextToImage")["inputs"]["prompt"] = "   "
    _expect_400(server, empty_prompt, "'prompt' is empty")
    missing_model = copy.deepcopy(good)
    node_of_type(missing_model, "BagelMoTModelLoader")["inputs"]["model_folder"] = "no-such-model"
    _expect_400(server, missing_model, "'no-such-model' was not found")
    run(server, good)


def test_wrong_image_batch_fails_with_message_and_next_run_succeeds(server, object_info):
    prompt = api_prompt("BAGEL-MoT Edit with Before and After", object_info)
    load_id = next(key for key, node in prompt.items() if node["class_type"] == "LoadImage")
    loader_id = next(key for key, node in prompt.items() if node["class_type"] == "BagelMoTModelLoader")
    think_prompt = {
        load_id: prompt[load_id], loader_id: prompt[loader_id],
        "90": {"class_type": "RepeatImageBatch", "inputs": {"image": [load_id, 0], "amount": 2}},
        "91": {"class_type": "BagelMoTThink", "inputs": {
            "bagel_model": [loader_id, 0], "image": ["90", 0], "prompt": "Make it blue.",
            "max_think_tokens": 4, "do_sample": False, "temperature": 0.3, "seed": 0}},
    }
    entry = server.client.wait(server.client.queue_or_raise(think_prompt))
    errors = history_messages(entry, "execution_error")
    assert errors and "batch of 2" in errors[0]["exception_message"]
    think_prompt["90"]["inputs"]["amount"] = 1
    run(server, think_prompt)


def test_free_models_and_cache_then_rerun_reloads(server, object_info):
    prompt = api_prompt("BAGEL-MoT Text to Image", object_info)
    run(server, prompt)
    assert server.client.request("/free", {"unload_models": True, "free_memory": True})[0] == 200
    time.sleep(0.5)  # /free is applied by the prompt worker between prompts
    again = run(server, prompt)
    cached = {node for message in history_messages(again, "execution_cached") for node in message["nodes"]}
    assert not cached, "the cache should have been emptied by /free"
