"""The cases of the bad-input sweep: each records one row (what the user sees, and that the server still serves).

Kept CPU-cheap: the tiny checkpoint, small sizes and few steps; a 4096x4096 input is only decoded by LoadImage and
resized by BAGEL's rules before any model work (custom output size 64x64)."""
import time

import numpy as np
from PIL import Image

from comfy_http import ComfyClient, history_messages
from sweep_support import MAIN_MODEL, Sweep
from ws_events import WsEvents

T2I, EDIT, UND, THINK = ("BAGEL-MoT Text to Image", "BAGEL-MoT Image Edit", "BAGEL-MoT Understand Image",
                         "BAGEL-MoT Think then Generate")


def checkpoint_folders(s: Sweep) -> None:
    s.record("model folder missing (`BAGEL-nowhere`)", lambda: s.rejected(
        s.with_model(T2I, "BAGEL-nowhere"), "'BAGEL-nowhere' was not found", "download_if_missing"))
    s.record("partial folder (interrupted download: no `ema.safetensors`, unfinished part in `.cache`)",
             lambda: s.rejected(s.with_model(T2I, "BAGEL-partial"), "is incomplete", "ema.safetensors is missing",
                                "unfinished download", "hf download"))
    s.record("truncated `ema.safetensors` (half the file)", lambda: s.rejected(
        s.with_model(T2I, "BAGEL-truncated"), "is incomplete", "ema.safetensors is truncated"))
    s.record("corrupt `ae.safetensors` (header overwritten)", lambda: s.rejected(
        s.with_model(T2I, "BAGEL-corrupt"), "ae.safetensors is not a readable safetensors file"))
    s.record("wrong-dims config (`llm_config.json` of another size)", lambda: s.failed(
        s.with_model(T2I, "BAGEL-wrongdims"), "does not match the model described by the JSON configs",
        "same BAGEL download"))


def _set(api_prompt: dict, class_type: str, **values) -> dict:
    Sweep.node(api_prompt, class_type).update(values)
    return api_prompt


def sizes_and_prompts(s: Sweep) -> None:
    s.record("width 100 (not a multiple of 16)", lambda: s.rejected(
        _set(s.prompt(T2I), "BagelMoTTextToImage", width=100), "width=100", "multiples of 16"))
    s.record("height 2048 (over the 1024 limit)", lambda: s.rejected(
        _set(s.prompt(T2I), "BagelMoTTextToImage", height=2048), "height=2048", "between 16 and 1024"))
    s.record("Edit custom size 1000x50", lambda: s.rejected(
        _set(s.prompt(EDIT), "BagelMoTEdit", output_size="custom", width=1000, height=50), "width=1000"))
    s.record("cfg interval reversed (start 0.9, end 0.1)", lambda: s.rejected(
        _set(s.prompt(T2I), "BagelMoTTextToImage", cfg_interval_start=0.9, cfg_interval_end=0.1),
        "cfg_interval_start=0.9 is after cfg_interval_end=0.1"))
    s.record("empty prompt (spaces only)", lambda: s.rejected(
        _set(s.prompt(T2I), "BagelMoTTextToImage", prompt="   "), "'prompt' is empty"))
    s.record("empty Understand question", lambda: s.rejected(
        _set(s.prompt(UND), "BagelMoTUnderstand", question=""), "'question' is empty"))
    s.record("batch_size 0", lambda: s.rejected(
        _set(s.prompt(T2I), "BagelMoTTextToImage", batch_size=0), "batch_size"))


def _think_on_batch(s: Sweep, amount: int, with_image: bool = True) -> dict:
    prompt = s.prompt(EDIT)
    load_id, loader_id = s.node_id(prompt, "LoadImage"), s.node_id(prompt, "BagelMoTModelLoader")
    think = {"bagel_model": [loader_id, 0], "prompt": "Make it blue.", "max_think_tokens": 4, "do_sample": False,
             "temperature": 0.3, "seed": 0, "reference_images": [load_id, 0]}
    if with_image:
        think["image"] = ["90", 0]
    return {load_id: prompt[load_id], loader_id: prompt[loader_id],
            "90": {"class_type": "RepeatImageBatch", "inputs": {"image": [load_id, 0], "amount": amount}},
            "91": {"class_type": "BagelMoTThink", "inputs": think}}


def batches(s: Sweep) -> None:
    s.record("Think given a batch of 2 images to edit", lambda: s.failed(
        _think_on_batch(s, 2), "batch of 2", "Image From Batch"))
    s.record("Think given reference_images but no image", lambda: s.failed(
        _think_on_batch(s, 1, with_image=False), "'reference_images' needs 'image'"))

    def edit_batch_with_other_size_references():
        prompt = s.prompt(EDIT)
        load_id = s.node_id(prompt, "LoadImage")
        prompt["95"] = {"class_type": "LoadImage", "inputs": {"image": "gray.png"}}
        prompt["96"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [load_id, 0], "amount": 2}}
        _set(prompt, "BagelMoTEdit", image=["96", 0], reference_images=["95", 0], output_size="custom",
             width=64, height=48)
        sizes = s.saved_sizes(s.succeeded(prompt))
        assert sizes == [(64, 48), (64, 48)], sizes
        return "runs: each image of the batch edited on its own (2 outputs, 64x48); references may differ in size"

    s.record("Edit: batch of 2 with a reference image of another size", edit_batch_with_other_size_references)


def _edit_and_understand(s: Sweep, image: str, native=None):
    def check():
        edit = _set(s.with_image(EDIT, image), "BagelMoTEdit", output_size="native" if native else "custom",
                    width=64, height=64)
        sizes = s.saved_sizes(s.succeeded(edit))
        assert sizes == [native or (64, 64)], sizes
        assert len(s.texts(s.succeeded(s.with_image(UND, image)))) == 1
        return f"runs: Edit ({'native %dx%d' % native if native else 'custom 64x64'}) and Understand succeed"
    return check


def _loaded_colours(s: Sweep, image: str) -> int:
    """How many distinct RGB values ComfyUI's LoadImage hands on for `image` (saved through SaveImage)."""
    entry = s.succeeded({"1": {"class_type": "LoadImage", "inputs": {"image": image}},
                         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "probe"}}})
    output = next(iter(entry["outputs"].values()))["images"][0]
    with Image.open(s.server.base / "output" / output["subfolder"] / output["filename"]) as picture:
        return len(np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0))


def _understand_only(s: Sweep, image: str):
    def check():
        assert len(s.texts(s.succeeded(s.with_image(UND, image)))) == 1
        note = ""
        if image == "gray16.png" and _loaded_colours(s, image) == 1:
            note = (" (ComfyUI 0.3.64's LoadImage clips 16-bit grayscale to plain white before BAGEL sees it; "
                    "save such files as 8-bit)")
        return f"runs: Understand succeeds{note}"
    return check


def images(s: Sweep) -> None:
    s.record("1x1 input image", _edit_and_understand(s, "tiny_1x1.png", native=(512, 512)))
    s.record("4096x4096 input image", _edit_and_understand(s, "huge_4096.png"))
    s.record("RGBA PNG (half transparent)", _understand_only(s, "rgba.png"))
    s.record("grayscale PNG (mode L)", _understand_only(s, "gray.png"))
    s.record("16-bit grayscale PNG (mode I;16)", _understand_only(s, "gray16.png"))

    def rgba_tensor():
        prompt = s.with_image(EDIT, "rgba.png")
        load_id = s.node_id(prompt, "LoadImage")
        prompt["97"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": [load_id, 0], "alpha": [load_id, 1]}}
        _set(prompt, "BagelMoTEdit", image=["97", 0], output_size="custom", width=64, height=48)
        assert s.saved_sizes(s.succeeded(prompt)) == [(64, 48)]
        return "runs: Edit composites the 4-channel IMAGE onto white, as it does an RGBA file"

    s.record("4-channel IMAGE (Join Image with Alpha) into Edit", rgba_tensor)


def _interrupt_when(s: Sweep, prompt: dict, node_type: str, minimum: int) -> dict:
    node_id = s.node_id(prompt, node_type)
    events = WsEvents(s.server.url, s.client.client_id)
    try:
        prompt_id = s.client.queue_or_raise(prompt)
        events.wait_for(lambda m: m["type"] == "progress" and m["data"]["node"] == node_id
                        and m["data"]["value"] >= minimum)
        assert s.client.request("/interrupt", {})[0] == 200
        events.wait_for(lambda m: m["type"] == "execution_interrupted")
    finally:
        events.close()
    entry = s.client.wait(prompt_id)
    assert history_messages(entry, "execution_interrupted"), entry["status"]
    done = max(m["data"]["value"] for m in events.messages if m["type"] == "progress" and m["data"]["node"] == node_id)
    return {"done": done, "max": next(m["data"]["max"] for m in events.messages if m["type"] == "progress"
                                      and m["data"]["node"] == node_id)}


def cancels(s: Sweep) -> None:
    def mid_step():
        prompt = _set(s.prompt(T2I), "BagelMoTTextToImage", steps=200, width=128, height=128, seed=777)
        progress = _interrupt_when(s, prompt, "BagelMoTTextToImage", 2)
        assert progress["done"] < progress["max"]
        s.succeeded(_set(prompt, "BagelMoTTextToImage", steps=3, width=64, height=64))
        return (f"interrupted after step {progress['done']} of {progress['max']} (ComfyUI's 'interrupted' status); "
                "the re-run succeeds")

    def during_text():
        # Greedy decoding of the random tiny model never emits <|im_end|> (measured: 600 of 600 tokens), so the
        # run cannot end by itself before Cancel arrives; sampling ended it after 56 tokens.
        prompt = _set(s.prompt(UND), "BagelMoTUnderstand", max_new_tokens=8000, do_sample=False, seed=11)
        progress = _interrupt_when(s, prompt, "BagelMoTUnderstand", 3)
        assert progress["done"] < progress["max"]
        s.succeeded(_set(prompt, "BagelMoTUnderstand", max_new_tokens=4))
        return f"interrupted after token {progress['done']} of {progress['max']}; the re-run succeeds"

    s.record("Cancel mid-step, then run again", mid_step)
    s.record("Cancel during text generation, then run again", during_text)


def load_unload(s: Sweep, rounds: int = 10) -> dict:
    """Loads, runs and frees the model `rounds` times; returns the server RSS after the first and the last."""
    rss = {}

    def check():
        prompt = s.prompt(T2I)
        for index in range(rounds):
            _set(prompt, "BagelMoTTextToImage", seed=1000 + index)
            s.succeeded(prompt)
            assert s.client.request("/free", {"unload_models": True, "free_memory": True})[0] == 200
            time.sleep(0.5)  # /free is applied by the prompt worker between prompts
            rss[index + 1] = float(s.serving().split("RSS ")[1].split()[0])
        assert "Potential memory leak" not in s.server.log_text()
        return (f"{rounds} x (load, generate, Free model and node cache) succeed; server RSS after round 1: "
                f"{rss[1]:.0f} MB, after round {rounds}: {rss[rounds]:.0f} MB; no 'Potential memory leak' warning")

    s.record(f"load/unload x{rounds}", check)
    return rss


def concurrency(s: Sweep) -> None:
    def three_at_once():
        prompts = [_set(s.prompt(T2I), "BagelMoTTextToImage", seed=2000 + k, prompt=f"three at once {k}")
                   for k in range(3)]
        ids = [s.client.queue_or_raise(prompt) for prompt in prompts]
        entries = [s.client.wait(prompt_id) for prompt_id in ids]
        assert all(entry["status"]["status_str"] == "success" for entry in entries)
        assert all(s.saved_sizes(entry) == [(64, 64)] for entry in entries)
        return "all three run one after the other and succeed (3 images)"

    def second_client():
        long = _set(s.prompt(T2I), "BagelMoTTextToImage", steps=40, width=128, height=128, seed=3000)
        other = ComfyClient(s.server.url)
        first_id = s.client.queue_or_raise(long)
        second_id = other.queue_or_raise(_set(s.prompt(UND), "BagelMoTUnderstand", question="Second client?"))
        first, second = s.client.wait(first_id), other.wait(second_id)
        assert first["status"]["status_str"] == second["status"]["status_str"] == "success"
        assert s.texts(second), second["outputs"]
        return "the second client's prompt waits in the queue and succeeds after the first; both get their results"

    s.record("three prompts queued at once", three_at_once)
    s.record("a second client queues while one runs", second_client)


ALL_CASES = (checkpoint_folders, sizes_and_prompts, batches, images, cancels, concurrency)
