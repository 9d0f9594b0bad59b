"""Node contract against the real ComfyUI code: registration, INPUT_TYPES, and node functions run
directly on a tiny random checkpoint (in this process, without a server)."""
import sys

import pytest
import torch

FORBIDDEN_IDS = {"BagelModelLoader", "BagelTextToImage", "BagelImageEdit", "BagelImageUnderstanding",
                 "BagelMultiImageEdit", "BAGELModelLoader", "BAGELTextToImage", "BAGELImageEdit",
                 "BAGELImageUnderstanding"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
FAST = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.4, cfg_interval_end=1.0,
            timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")


@pytest.fixture(scope="module")
def ours(comfy_nodes):
    return {name: cls for name, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items() if name.startswith("BagelMoT")}


@pytest.fixture(scope="module")
def model(comfy_nodes, ours, tiny_checkpoint):
    import folder_paths

    folder_paths.add_model_folder_path("bagel", str(tiny_checkpoint.parent))
    return ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "bf16", False)[0]


def image_batch(count=1, width=48, height=32):
    generator = torch.Generator().manual_seed(7)
    return torch.rand((count, height, width, 3), generator=generator)


def test_pack_registers_prefixed_unique_nodes(comfy_nodes, ours):
    assert set(ours) == {"BagelMoTModelLoader", "BagelMoTTextToImage", "BagelMoTEdit", "BagelMoTUnderstand",
                         "BagelMoTThink", "BagelMoTRemoteModel", "BagelMoTNoise", "BagelMoTSigmas",
                         "BagelMoTContextImages", "BagelMoTGuider", "BagelMoTThinkConditioning"}
    assert not FORBIDDEN_IDS & set(comfy_nodes.NODE_CLASS_MAPPINGS.keys()) - set(ours)
    for name, cls in ours.items():
        assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[name].startswith("BAGEL-MoT")
        assert "BAGEL_MODEL" not in cls.RETURN_TYPES
        assert callable(getattr(cls, cls.FUNCTION))
        assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)


def _check_spec(node, name, spec):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    where = f"{node}.{name}"
    if isinstance(kind, list):
        assert kind and options.get("default", kind[0]) in kind, where
        return
    assert isinstance(kind, str) and kind, where
    if kind in ("INT", "FLOAT") and "default" in options:
        assert options["min"] <= options["default"] <= options["max"], where
    if kind in WIDGET_TYPES:
        assert "default" in options, f"{where} needs a default"


def test_input_types_are_valid(ours):
    for name, cls in ours.items():
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}
        for section in ("required", "optional"):
            for input_name, input_spec in spec.get(section, {}).items():
                _check_spec(name, input_name, input_spec)
    seed = ours["BagelMoTTextToImage"].INPUT_TYPES()["required"]["seed"][1]
    assert seed["max"] == 2 ** 64 - 1 and seed["control_after_generate"] is True


def test_text_to_image_matches_core_with_same_seed(ours, model):
    images = ours["BagelMoTTextToImage"]().generate(model, "a red cube", 64, 48, seed=2 ** 64 - 1,
                                                    batch_size=2, **FAST)[0]
    assert images.shape == (2, 48, 64, 3) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    core_kwargs = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval=(0.4, 1.0),
                       timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")
    for index, seed in enumerate((2 ** 64 - 1, 0)):  # image k uses seed + k, wrapping at 2**64
        direct = model.pipeline.generate_image("a red cube", width=64, height=48, seed=seed, **core_kwargs)
        assert torch.equal(images[index], direct.pixels[0])


def test_step_cache_widget_reaches_the_core(ours, model):
    spec = ours["BagelMoTTextToImage"].INPUT_TYPES()["optional"]["step_cache"]
    assert spec[0] == ["off", "taylor"] and spec[1]["default"] == "off"
    fast = dict(FAST, steps=12)
    cached = ours["BagelMoTTextToImage"]().generate(model, "a red cube", 64, 48, seed=3, batch_size=1,
                                                    step_cache="taylor", **fast)[0]
    exact = ours["BagelMoTTextToImage"]().generate(model, "a red cube", 64, 48, seed=3, batch_size=1, **fast)[0]
    core_kwargs = dict(steps=12, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval=(0.4, 1.0),
                       timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")
    direct = model.pipeline.generate_image("a red cube", width=64, height=48, seed=3, step_cache="taylor",
                                           **core_kwargs)
    assert torch.equal(cached[0], direct.pixels[0])
    assert not torch.equal(cached, exact)  # 12 steps: calls 5, 6, 8 and 9 are extrapolated


def test_edit_output_size_modes_and_batch_one_by_one(ours, model):
    node = ours["BagelMoTEdit"]()
    sampler = dict(FAST, cfg_img_scale=2.0, cfg_interval_start=0.0, cfg_renorm_type="text_channel")
    pair = image_batch(2)
    custom = node.edit(model, pair, "make it blue", "custom", 64, 32, seed=5, **sampler)[0]
    assert custom.shape == (2, 32, 64, 3)
    single = node.edit(model, pair[1:], "make it blue", "custom", 64, 32, seed=5, **sampler)[0]
    assert torch.equal(custom[1], single[0])
    matched = node.edit(model, pair[:1], "make it blue", "match_input", 16, 16, seed=5, **sampler)[0]
    assert matched.shape == (1, 32, 48, 3)
    native = node.edit(model, pair[:1], "make it blue", "native", 16, 16, seed=5, **sampler)[0]
    assert native.shape[1] % 16 == 0 and native.shape[2] % 16 == 0 and native.shape[1:3] != (32, 48)


def test_understand_answers_each_image_and_shows_text(ours, model):
    result = ours["BagelMoTUnderstand"]().understand(model, image_batch(2), "What is this?", 6, False, 0.3, 0,
                                                     False)
    answers, thoughts = result["result"]
    assert len(answers) == 2 and len(thoughts) == 2
    assert result["ui"]["text"] == answers and all(isinstance(answer, str) for answer in answers)


def test_think_plan_gives_same_image_as_integrated_think(ours, model):
    plan = ours["BagelMoTThink"]().think(model, "a small house", 8, False, 0.3, 3)["result"][0]
    assert isinstance(plan, str) and plan
    via_nodes = ours["BagelMoTTextToImage"]().generate(model, "a small house", 32, 32, seed=3, batch_size=1,
                                                       thinking=plan, **FAST)[0]
    integrated = model.pipeline.generate_image(
        "a small house", width=32, height=32, steps=3, think=True, max_think_tokens=8, seed=3)
    assert torch.equal(via_nodes[0], integrated.pixels[0])


def test_progress_reports_every_step_and_cancel_stops_within_one(ours, model, progress_updates):
    import comfy.model_management as mm

    ours["BagelMoTTextToImage"]().generate(model, "a cat", 32, 32, seed=1, batch_size=2, **FAST)
    # The 2 images are denoised in lockstep: one update per denoise step, ending at 100 %.
    value, total, _ = progress_updates[-1]
    assert value == total and len(progress_updates) == total == FAST["steps"] - 1

    def cancel_at_the_second_step(value, total):
        if len(progress_updates) == 2:
            mm.interrupt_current_processing(True)  # what ComfyUI's Cancel button does; no progress hook involved

    progress_updates.clear()
    progress_updates.on_update = cancel_at_the_second_step
    with pytest.raises(mm.InterruptProcessingException):
        ours["BagelMoTTextToImage"]().generate(model, "a cat", 32, 32, seed=1, batch_size=1,
                                               **dict(FAST, steps=10))
    assert len(progress_updates) == 2 and not mm.processing_interrupted()  # stopped at the very next step
    progress_updates.on_update = None
    assert ours["BagelMoTTextToImage"]().generate(model, "a cat", 32, 32, seed=1, batch_size=1, **FAST)[0].shape[0] == 1


def test_cancel_stops_text_generation_within_one_token(ours, model, progress_updates):
    import comfy.model_management as mm

    def cancel_at_the_third_token(value, total):
        if len(progress_updates) == 3:
            mm.interrupt_current_processing(True)

    progress_updates.on_update = cancel_at_the_third_token  # greedy: the random model never stops by itself
    with pytest.raises(mm.InterruptProcessingException):
        ours["BagelMoTUnderstand"]().understand(model, image_batch(1), "Describe it.", 400, False, 0.3, 0, False)
    assert len(progress_updates) == 3 and not mm.processing_interrupted()
    progress_updates.on_update = None
    answers = ours["BagelMoTUnderstand"]().understand(model, image_batch(1), "Hi?", 2, False, 0.3, 0, False)
    assert len(answers["result"][0]) == 1


def test_model_is_managed_by_comfyui_memory_manager(ours, model):
    import comfy.model_management as mm

    ours["BagelMoTUnderstand"]().understand(model, image_batch(1), "Hi?", 2, False, 0.3, 0, False)
    assert model.patcher in mm.loaded_models()
    mm.unload_all_models()
    assert model.patcher not in mm.loaded_models()
    ours["BagelMoTUnderstand"]().understand(model, image_batch(1), "Hi?", 2, False, 0.3, 0, False)
    assert model.patcher in mm.loaded_models()


def refused(ours, class_type: str, **inputs) -> dict[str, str]:
    """{input: message} of what the input guard refuses in a prompt holding one ``class_type`` node."""
    guard = sys.modules[ours[class_type].__module__.rsplit(".", 1)[0] + ".input_guard"]
    prompt = {"1": {"class_type": class_type, "inputs": inputs}}
    guard.refuse_bad_values(ours, {"prompt": prompt})
    return {name: value.problem for name, value in prompt["1"]["inputs"].items()
            if isinstance(value, guard.RefusedValue)}


def test_validation_messages_name_the_input_and_fix(ours, tiny_checkpoint):
    t2i, edit, loader = ours["BagelMoTTextToImage"], ours["BagelMoTEdit"], ours["BagelMoTModelLoader"]
    good = dict(prompt="x", width=64, height=64, cfg_interval_start=0.4, cfg_interval_end=1.0)
    assert refused(ours, "BagelMoTTextToImage", **good) == {}
    width = refused(ours, "BagelMoTTextToImage", **dict(good, width=100))
    assert list(width) == ["width"] and "multiples of 16" in width["width"]
    assert width["width"].startswith("width=100 ") and width["width"].endswith("use 96 or 112.")
    assert refused(ours, "BagelMoTTextToImage", **dict(good, height=2000))["height"].endswith("use 1024.")
    reversed_interval = refused(ours, "BagelMoTTextToImage", **dict(good, cfg_interval_start=0.9, cfg_interval_end=0.1))
    assert list(reversed_interval) == ["cfg_interval_start"]
    assert "start <= end" in reversed_interval["cfg_interval_start"]
    assert "lower cfg_interval_start or raise cfg_interval_end" in reversed_interval["cfg_interval_start"]
    assert refused(ours, "BagelMoTTextToImage", **dict(good, width=["7", 0], height=["7", 1])) == {}  # links
    assert "'prompt' is empty" in t2i.VALIDATE_INPUTS(prompt=" ")
    assert t2i.VALIDATE_INPUTS(prompt=None) is True  # a linked prompt
    assert "'instruction' is empty" in edit.VALIDATE_INPUTS(instruction="")
    edit_inputs = dict(instruction="x", output_size="native", width=100, height=100)
    assert refused(ours, "BagelMoTEdit", **edit_inputs) == {}
    custom = refused(ours, "BagelMoTEdit", **dict(edit_inputs, output_size="custom", height=64))
    assert list(custom) == ["width"] and custom["width"].startswith("width=100 ")
    assert "was not found" in loader.VALIDATE_INPUTS("missing-model")
    assert loader.VALIDATE_INPUTS(tiny_checkpoint.name) is True
    with pytest.raises(ValueError, match="batch of 2"):
        ours["BagelMoTThink"]().think(None, "plan", 4, False, 0.3, 0, image=image_batch(2))


def test_validate_inputs_takes_one_input_at_most(ours):
    """ComfyUI repeats a VALIDATE_INPUTS message once for every argument it takes (0.3.64 and 0.33 alike), so
    one mistake is one error only where it takes one; checks that read several inputs are INPUT_CHECKS rows."""
    import inspect

    for name, cls in ours.items():
        if hasattr(cls, "VALIDATE_INPUTS"):
            arguments = inspect.getfullargspec(cls.VALIDATE_INPUTS)
            assert len(arguments.args) == 2 and arguments.varkw is None, f"{name}: {arguments}"


def test_loader_refuses_with_numbers_when_memory_cannot_fit(ours, tiny_checkpoint, monkeypatch):
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "get_total_memory", lambda *args, **kwargs: 1024)
    with pytest.raises(ValueError, match=r"needs about .* GiB .* has 0\.0 GiB in total"):
        ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "bf16", False)


def test_download_is_opt_in_and_explains_missing_huggingface_hub(ours, monkeypatch):
    loader = ours["BagelMoTModelLoader"]
    # Validation sees only model_folder (one error per mistake), so the switch is read when the node runs.
    assert loader.VALIDATE_INPUTS("BAGEL-7B-MoT") is True
    with pytest.raises(ValueError, match="'BAGEL-7B-MoT' was not found.*or switch 'download_if_missing' on"):
        loader().load("BAGEL-7B-MoT", "bf16", False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    download = sys.modules[loader.__module__.rsplit(".", 1)[0] + ".download"]
    with pytest.raises(RuntimeError, match="pip install huggingface_hub"):
        download.download_checkpoint("/nonexistent/target")
