"""NaN, +-inf and non-boolean values are refused for every numeric and boolean input of every node of the pack,
through ComfyUI's HTTP API, node by node: HTTP 400 with exactly one error for the node, naming the input, and
nothing queued (no weight is read). The list of nodes and inputs is read from the server's /object_info, so a
node added to the pack is covered without a change here. Also one error per mistake in the loader's
model_folder and in the checks nodes declare in INPUT_CHECKS (sizes, cfg interval: one error, on the input the
check names, where a VALIDATE_INPUTS over several inputs gave one per input), and the run-time check of values
that come through links."""
import math
import sys

import pytest

from comfy_server import MAIN_MODEL_NAME

PACK_PREFIX = "BagelMoT"
CHEAP_WIDGETS = {"steps": 1, "width": 64, "height": 64, "max_new_tokens": 1, "max_think_tokens": 1}
SAMPLE_TEXT = "a red apple on a table"
BAD_NUMBERS = (math.nan, math.inf, -math.inf)
BAD_BOOLEANS = (math.nan, 1, "yes", None)


def _spec(info: dict, name: str):
    for section in ("required", "optional"):
        if name in info["input"].get(section, {}):
            return info["input"][section][name]
    raise KeyError(name)


def _kind_and_options(spec) -> tuple:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
    if isinstance(kind, list):
        return "COMBO", {**options, "options": kind}
    return kind, options


def _widget_value(name: str, kind: str, options: dict):
    if name in CHEAP_WIDGETS and kind == "INT":
        return max(CHEAP_WIDGETS[name], options.get("min", 0))
    if kind == "COMBO":
        return options.get("default", (options.get("options") or [""])[0])
    if kind == "STRING":
        return options.get("default") or SAMPLE_TEXT
    return options.get("default", {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False}.get(kind))


class PromptBuilder:
    """An API prompt that holds the node under test with every required input given (widgets at their defaults,
    links from nodes that make the type) and an output node that consumes it."""

    def __init__(self, object_info: dict):
        self.object_info = object_info
        self.prompt = {}

    def add(self, class_type: str, depth: int = 0) -> str:
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {"class_type": class_type, "inputs": {}}
        info = self.object_info[class_type]
        for name in info["input"].get("required", {}):
            kind, options = _kind_and_options(_spec(info, name))
            if kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                self.prompt[node_id]["inputs"][name] = _widget_value(name, kind, options)
            elif depth < 3:
                maker = self.maker_of(kind)
                self.prompt[node_id]["inputs"][name] = [self.add(maker, depth + 1),
                                                        self.object_info[maker]["output"].index(kind)]
        return node_id

    def maker_of(self, kind: str) -> str:
        """A node with an output of type ``kind``, the one with the fewest required links."""
        makers = [name for name, info in self.object_info.items() if kind in (info.get("output") or [])]
        assert makers, f"no node makes {kind}"

        def links(name):
            required = self.object_info[name]["input"].get("required", {})
            return sum(_kind_and_options(spec)[0] not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                       for spec in required.values())
        return min(sorted(makers), key=links)

    def with_output(self, node_id: str) -> dict:
        info = self.object_info[self.prompt[node_id]["class_type"]]
        if not info.get("output_node"):
            self.prompt[str(len(self.prompt) + 1)] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 0]}}
        return self.prompt


def guarded_inputs(object_info: dict) -> list[tuple[str, str, str]]:
    found = []
    for class_type in sorted(name for name in object_info if name.startswith(PACK_PREFIX)):
        info = object_info[class_type]
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                kind = _kind_and_options(spec)[0]
                if kind in ("FLOAT", "INT", "BOOLEAN"):
                    found.append((class_type, name, kind))
    return found


def test_every_numeric_and_boolean_input_of_every_node_refuses_nan_inf_and_non_booleans(server):
    object_info = server.client.object_info()
    cases = guarded_inputs(object_info)
    kinds = {kind for _, _, kind in cases}
    assert {"FLOAT", "INT", "BOOLEAN"} <= kinds and len({c for c, _, _ in cases}) >= 6, cases
    failures = []
    for class_type, name, kind in cases:
        for bad in (BAD_BOOLEANS if kind == "BOOLEAN" else BAD_NUMBERS):
            builder = PromptBuilder(object_info)
            node_id = builder.add(class_type)
            builder.prompt[node_id]["inputs"][name] = bad
            status, body = server.client.queue(builder.with_output(node_id))
            errors = body.get("node_errors", {}).get(node_id, {}).get("errors", []) if isinstance(body, dict) else []
            expected = "is not a boolean" if kind == "BOOLEAN" else "is not a finite number"
            ok = (status == 400 and len(errors) == 1 and errors[0]["extra_info"].get("input_name") == name
                  and f"{name}=" in errors[0]["details"] and expected in errors[0]["details"])
            if not ok:
                failures.append(f"{class_type}.{name}={bad!r}: HTTP {status}, errors {errors or body}")
    assert not failures, f"{len(failures)} of the cases failed; the first ones:\n" + "\n".join(failures[:4])
    assert server.client.get("/queue") == {"queue_running": [], "queue_pending": []}


def _loader_errors(server, model_folder: str, download: bool = False) -> list[dict]:
    object_info = server.client.object_info()
    builder = PromptBuilder(object_info)
    node_id = builder.add("BagelMoTModelLoader")
    builder.prompt[node_id]["inputs"].update(model_folder=model_folder, download_if_missing=download)
    status, body = server.client.queue(builder.with_output(node_id))
    assert status == 400, body
    return body["node_errors"][node_id]["errors"]


def test_a_missing_or_empty_model_folder_is_one_error_on_model_folder(server):
    (server.base / "models" / "bagel" / "empty").mkdir(exist_ok=True)
    try:
        missing = _loader_errors(server, "no-such-bagel")
        empty = _loader_errors(server, "empty")
    finally:
        (server.base / "models" / "bagel" / "empty").rmdir()
    for errors in (missing, empty):
        assert len(errors) == 1, errors
        assert errors[0]["extra_info"]["input_name"] == "model_folder"
    assert "'no-such-bagel' was not found" in missing[0]["details"]
    assert f"choose '{MAIN_MODEL_NAME}' and switch 'download_if_missing' on" in missing[0]["details"]
    assert "is empty: it holds no checkpoint" in empty[0]["details"]
    assert "If it is meant to hold the official" in empty[0]["details"]
    assert "again" not in empty[0]["details"] and "again" not in missing[0]["details"]


def test_values_through_links_are_refused_when_the_node_runs(comfy_nodes):
    t2i = comfy_nodes.NODE_CLASS_MAPPINGS["BagelMoTTextToImage"]()
    with pytest.raises(ValueError, match=r"timestep_shift=NaN is not a finite number.*came through a link"):
        t2i.generate(bagel_model=None, prompt="x", timestep_shift=math.nan)
    understand = comfy_nodes.NODE_CLASS_MAPPINGS["BagelMoTUnderstand"]()
    with pytest.raises(ValueError, match="do_sample=1 is not a boolean"):
        understand.understand(bagel_model=None, question="x", do_sample=1)


def _errors(server, class_type: str, **values) -> list[dict]:
    """Every error entry of the answer to a prompt holding ``class_type`` with ``values`` (all nodes counted)."""
    builder = PromptBuilder(server.client.object_info())
    node_id = builder.add(class_type)
    builder.prompt[node_id]["inputs"].update(values)
    status, body = server.client.queue(builder.with_output(node_id))
    assert status == 400, body
    return [error for node in body["node_errors"].values() for error in node["errors"]]


def _one_error_on(errors: list[dict], name: str, *fragments: str) -> str:
    assert len(errors) == 1, errors
    assert errors[0]["extra_info"]["input_name"] == name, errors
    for fragment in fragments:
        assert fragment in errors[0]["details"], errors
    return errors[0]["details"]


def test_one_mistake_is_one_error_naming_its_input(server):
    t2i, edit, guider = "BagelMoTTextToImage", "BagelMoTEdit", "BagelMoTGuider"
    _one_error_on(_errors(server, t2i, width=100), "width", "width=100 is not supported", "use 96 or 112.")
    # Over ComfyUI's max of 1024: our message alone (ComfyUI skips its max test for a refused value).
    _one_error_on(_errors(server, t2i, height=2000), "height", "height=2000 is not supported", "use 1024.")
    _one_error_on(_errors(server, t2i, prompt="  "), "prompt", "'prompt' is empty")
    _one_error_on(_errors(server, t2i, cfg_interval_start=0.9, cfg_interval_end=0.1), "cfg_interval_start",
                  "cfg_interval_start=0.9 is after cfg_interval_end=0.1", "0 <= start <= end <= 1")
    _one_error_on(_errors(server, t2i, cfg_interval_end=1.5), "cfg_interval_end", "cfg_interval_end=1.5 is outside")
    _one_error_on(_errors(server, edit, output_size="custom", width=100), "width", "width=100", "use 96 or 112.")
    # native ignores width: the prompt's only error is the empty instruction (nothing is run).
    _one_error_on(_errors(server, edit, output_size="native", width=100, instruction=""), "instruction",
                  "'instruction' is empty")
    _one_error_on(_errors(server, guider, cfg_interval_start=0.9, cfg_interval_end=0.2), "cfg_interval_start",
                  "cfg_interval_start=0.9 is after cfg_interval_end=0.2")
    two = _errors(server, t2i, width=100, prompt="")  # two mistakes: one error each
    assert sorted(error["extra_info"]["input_name"] for error in two) == ["prompt", "width"], two
    assert server.client.get("/queue") == {"queue_running": [], "queue_pending": []}


def test_sizes_and_interval_through_links_are_refused_when_the_node_runs(comfy_nodes):
    sampler = dict(cfg_interval_start=0.4, cfg_interval_end=1.0)
    t2i = comfy_nodes.NODE_CLASS_MAPPINGS["BagelMoTTextToImage"]()
    with pytest.raises(ValueError, match=r"^width=100 is not supported.*use 96 or 112\.$"):
        t2i.generate(None, "x", 100, 64, 0, 1, **sampler)
    edit = comfy_nodes.NODE_CLASS_MAPPINGS["BagelMoTEdit"]()
    with pytest.raises(ValueError, match=r"^height=50 is not supported"):
        edit.edit(None, None, "x", "custom", 64, 50, 0, **sampler)
    guider = comfy_nodes.NODE_CLASS_MAPPINGS["BagelMoTGuider"]()
    with pytest.raises(ValueError, match=r"^cfg_interval_start=0.9 is after cfg_interval_end=0.2"):
        guider.get_guider(None, None, None, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.9,
                          cfg_interval_end=0.2, cfg_renorm_min=0.0, cfg_renorm_type="global")


def test_a_check_on_a_text_input_is_refused_at_registration(comfy_nodes):
    pack = comfy_nodes.NODE_CLASS_MAPPINGS["BagelMoTEdit"].__module__.rsplit(".", 1)[0]
    guard, validation = sys.modules[pack + ".input_guard"], sys.modules[pack + ".validation"]

    class TextChecked:
        FUNCTION = "run"
        INPUT_CHECKS = (validation.InputCheck("text", lambda values: "never"),)

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {}), "steps": ("INT", {"default": 1})}}

        def run(self, text, steps):
            return (text,)

    with pytest.raises(TypeError, match="'text' is not a FLOAT, INT or BOOLEAN input"):
        guard.guard_nodes({"TextChecked": TextChecked})
