"""Live previews on a real ComfyUI server: with --preview-method auto every denoise step of Text to Image sends a
JPEG preview image over the websocket while the node runs; with the default (none) no preview is sent."""
from comfy_http import history_messages, ui_to_api
from workflow_cases import load_workflow, make_fast
from ws_events import WsEvents

PREVIEW_IMAGE_EVENT = 1  # server.BinaryEventTypes.PREVIEW_IMAGE: 4-byte image type (1 = JPEG), then the bytes
JPEG_TYPE = 1
STEPS = 5


def run_text_to_image(server, seed: int) -> tuple[str, list[dict]]:
    prompt = make_fast(ui_to_api(load_workflow("BAGEL-MoT Text to Image"), server.client.object_info()))
    node_id = next(key for key, node in prompt.items() if node["class_type"] == "BagelMoTTextToImage")
    prompt[node_id]["inputs"].update(steps=STEPS, seed=seed)  # a new seed: never served from the cache
    events = WsEvents(server.url, server.client.client_id)
    try:
        prompt_id = server.client.queue_or_raise(prompt)
        events.wait_for(lambda m: m["type"] in ("execution_success", "execution_error")
                        and m["data"]["prompt_id"] == prompt_id)
    finally:
        events.close()
    entry = server.client.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", history_messages(entry, "execution_error")
    return node_id, events.messages


def previews(messages: list[dict]) -> list[bytes]:
    return [m["data"] for m in messages if m["type"] == "binary" and m["event"] == PREVIEW_IMAGE_EVENT]


def test_previews_arrive_on_the_websocket_while_denoising(start_comfy):
    server = start_comfy(extra_args=("--preview-method", "auto"))
    node_id, messages = run_text_to_image(server, seed=5150)
    images = previews(messages)
    assert len(images) == STEPS - 1  # one per denoise step
    for data in images:
        assert int.from_bytes(data[:4], "big") == JPEG_TYPE and data[4:6] == b"\xff\xd8"  # JPEG magic
    # Each preview comes right after the progress message of its step, before the node has finished.
    first_preview = next(i for i, m in enumerate(messages) if m["type"] == "binary")
    first_executed = next(i for i, m in enumerate(messages) if m["type"] == "executed")
    before = messages[first_preview - 1]
    assert before["type"] == "progress" and before["data"]["node"] == node_id and first_preview < first_executed


def test_no_previews_with_preview_method_none(start_comfy):
    server = start_comfy(extra_args=("--preview-method", "none"))
    _, messages = run_text_to_image(server, seed=5151)
    assert not previews(messages)
    # The progress bar itself still moves (how many messages the server sends is its own choice: newer ComfyUI
    # sends only some of them, always the last).
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == STEPS - 1
