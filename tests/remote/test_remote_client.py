"""RemoteBagelClient against the fake vLLM-Omni server: every field, every mode, batching, progress, Cancel."""
import threading

import pytest
from PIL import Image

from bagel_model import BagelInputError
from bagel_model.remote import RemoteBagelClient
from fake_vllm_omni import native_size


class Interrupted(Exception):
    """Stands in for ComfyUI's InterruptProcessingException."""


def client_for(fake, **kwargs):
    return RemoteBagelClient(fake.url, **kwargs)


def test_text_to_image_sends_every_sampler_setting_under_the_server_names(fake_server):
    result = client_for(fake_server).generate_image(
        "a red fox", width=320, height=192, steps=7, cfg_text_scale=5.5, cfg_img_scale=1.25,
        cfg_interval=(0.3, 0.9), timestep_shift=2.5, cfg_renorm_min=0.1, cfg_renorm_type="channel", seed=42)
    (request,) = fake_server.requests
    assert request["modality"] == "image" and request["prompt"] == "a red fox" and request["images"] == []
    assert {key: value for key, value in request["fields"].items() if key != "messages"} == {
        "modalities": ["image"], "width": 320, "height": 192, "num_inference_steps": 7, "seed": 42,
        "cfg_text_scale": 5.5, "cfg_img_scale": 1.25, "cfg_interval": [0.3, 0.9], "cfg_renorm_type": "channel",
        "cfg_renorm_min": 0.1, "timestep_shift": 2.5, "think": False, "max_think_tokens": 1000,
        "do_sample": False, "text_temperature": 0.3}
    assert [image.size for image in result.images] == [(320, 192)]
    assert result.latents == [] and result.thinking == ""
    assert any("timestep_shift=2.5" in warning for warning in result.warnings)


def test_think_mode_reads_text_and_image_from_separate_choices(fake_server):
    result = client_for(fake_server).generate_image("a fox", width=64, height=64, think=True, max_think_tokens=77)
    assert fake_server.requests[0]["fields"]["think"] is True
    assert fake_server.requests[0]["fields"]["max_think_tokens"] == 77
    assert result.thinking == "plan: a fox" and result.images[0].size == (64, 64)


def test_edit_sends_the_image_as_png_and_lets_the_server_pick_the_native_size(fake_server):
    source = Image.new("RGBA", (96, 64), (10, 200, 30, 128))
    result = client_for(fake_server).edit_image([source], "make it blue", seed=3)
    (request,) = fake_server.requests
    assert "width" not in request["fields"] and "height" not in request["fields"]
    (sent,) = request["images"]
    assert sent.size == (96, 64)
    assert sent.getpixel((0, 0)) == Image.alpha_composite(
        Image.new("RGBA", (1, 1), (255, 255, 255, 255)), Image.new("RGBA", (1, 1), (10, 200, 30, 128))
    ).convert("RGB").getpixel((0, 0))  # alpha composited on white, as the local backend does
    assert request["fields"]["cfg_img_scale"] == 2.0 and request["fields"]["cfg_renorm_type"] == "text_channel"
    assert result.images[0].size == native_size(source) == (384, 256)


def test_edit_with_a_custom_size_sends_width_and_height(fake_server):
    result = client_for(fake_server).edit_image(Image.new("RGB", (96, 64)), "x", output_size=(128, 96))
    assert (fake_server.requests[0]["fields"]["width"], fake_server.requests[0]["fields"]["height"]) == (128, 96)
    assert result.images[0].size == (128, 96)


def test_understand_and_think_use_the_text_modality(fake_server):
    client = client_for(fake_server)
    picture = Image.new("RGB", (32, 32), "white")
    answer = client.understand([picture], "What is it?", think=True, max_new_tokens=33, do_sample=True,
                               temperature=0.7, seed=5)
    fields = fake_server.requests[0]["fields"]
    assert fake_server.requests[0]["modality"] == "text" and len(fake_server.requests[0]["images"]) == 1
    assert (fields["max_tokens"], fields["max_think_tokens"], fields["temperature"], fields["text_temperature"],
            fields["do_sample"], fields["seed"], fields["think"]) == (33, 33, 0.7, 0.7, True, 5, True)
    assert answer.thinking == "plan for: What is it?" and answer.answer == "answer to: What is it? (seed 5)"
    plan = client.think("draw a cat", max_think_tokens=12)
    fields = fake_server.requests[1]["fields"]
    assert (fields["think"], fields["max_tokens"], fields["temperature"]) == (True, 12, 0.0)  # greedy
    assert plan.thinking == plan.text and "draw a cat" in plan.text


def test_settings_the_server_cannot_take_are_refused_before_any_request(fake_server):
    client = client_for(fake_server)
    picture = Image.new("RGB", (32, 32))
    with pytest.raises(BagelInputError, match="thinking"):
        client.generate_image("x", width=64, height=64, thinking="1. a plan")
    with pytest.raises(BagelInputError, match="only the first image"):
        client.edit_image([picture, picture], "x")
    with pytest.raises(BagelInputError, match="only the first image"):
        client.understand([picture, picture], "x")
    with pytest.raises(BagelInputError, match="steps"):
        client.generate_image("x", steps=1)
    assert fake_server.requests == []


def test_unapplied_settings_are_reported_not_changed(fake_server):
    result = client_for(fake_server).generate_image("x", width=64, height=64, step_cache="taylor",
                                                    seed=2 ** 64 - 1, batch_cfg=True)
    fields = fake_server.requests[0]["fields"]
    assert fields["seed"] == (2 ** 64 - 1) % 2 ** 63 and fields["timestep_shift"] == 3.0
    assert len(result.warnings) == 2
    assert "step_cache='taylor' is not applied" in result.warnings[0]
    assert "seed mod 2^63" in result.warnings[1]


def test_batch_runs_concurrently_up_to_the_limit_and_keeps_order(fake_server):
    client = client_for(fake_server, max_concurrent_requests=3)
    fake_server.hold_requests()
    jobs = [dict(prompt=f"fox {index}", width=64, height=64, seed=index) for index in range(7)]
    outcome = {}
    progress = []
    worker = threading.Thread(target=lambda: outcome.update(
        results=client.run_concurrently("generate_image", jobs, lambda *args: progress.append(args))))
    worker.start()
    assert fake_server.wait_in_flight(3)
    fake_server.release()
    worker.join()
    assert fake_server.max_in_flight == 3
    expected = [fake_server.image_for(request).getpixel((0, 0)) for request in sorted(
        fake_server.requests, key=lambda request: request["fields"]["seed"])]
    assert [result.images[0].getpixel((0, 0)) for result in outcome["results"]] == expected
    assert progress[0] == ("request", 0, 7) and progress[-1] == ("request", 7, 7)
    assert [step for _, step, _ in progress] == sorted(step for _, step, _ in progress)


def test_cancel_aborts_the_requests_in_flight_and_sends_no_more(fake_server):
    client = client_for(fake_server, max_concurrent_requests=2)
    fake_server.hold_requests()

    def cancel_once_two_are_in_flight(stage, step, total):
        if fake_server.in_flight == 2:
            raise Interrupted()

    with pytest.raises(Interrupted):
        client.run_concurrently("generate_image", [dict(prompt="x", seed=i) for i in range(5)],
                                cancel_once_two_are_in_flight)
    with fake_server.reached:
        assert fake_server.reached.wait_for(lambda: fake_server.in_flight == 0, 30)
    assert fake_server.disconnected == 2  # the server saw both clients go away, so it can stop generating
    assert len(fake_server.headers) == 2 and fake_server.requests == []


def test_client_repr_and_url_forms(fake_server):
    client = RemoteBagelClient(fake_server.url + "/v1/", api_key="sk-123")
    assert "sk-123" not in repr(client) and client.server == fake_server.url
    client.generate_image("x", width=64, height=64)
    assert fake_server.headers[0]["Authorization"] == "Bearer sk-123"
    with pytest.raises(BagelInputError, match="not an http"):
        RemoteBagelClient("gpu-box:8091")


def test_num_images_fans_out_with_seed_plus_k(fake_server):
    result = client_for(fake_server, max_concurrent_requests=2).generate_image(
        "x", width=32, height=32, seed=2 ** 64 - 1, num_images=3, preview=lambda *args: None, batch_images=True)
    assert len(result.images) == 3
    assert sorted(request["fields"]["seed"] for request in fake_server.requests) == [0, 1, 2 ** 63 - 1]
    assert any("seed mod 2^63" in warning for warning in result.warnings)


def test_interleaved_inputs_keep_the_image_where_it_stands(fake_server):
    client = client_for(fake_server)
    picture = Image.new("RGB", (16, 16), "red")
    client.understand(None, "ignored when inputs are given", inputs=["Image 1:", picture, "What colour?"])
    text = fake_server.requests[0]["fields"]["messages"][0]["content"][0]["text"]
    assert text == "<|im_start|>user\nImage 1:\n<|image_pad|>\nWhat colour?<|im_end|>\n<|im_start|>assistant\n"
    client.understand(None, "", inputs=["Just text?"])  # text-only question: no image part
    assert fake_server.requests[1]["images"] == [] and fake_server.requests[1]["prompt"] == "Just text?"
    client.think("x", inputs=[picture, "plan the edit"])
    assert len(fake_server.requests[2]["images"]) == 1 and fake_server.requests[2]["fields"]["think"] is True
    with pytest.raises(BagelInputError, match="2 images"):
        client.understand(None, "", inputs=["Image 1:", picture, "Image 2:", picture, "Compare"])
    with pytest.raises(BagelInputError, match="one image followed by one prompt"):
        client.edit_image(None, "", inputs=[picture, "first", "second"])
    assert len(fake_server.requests) == 3
