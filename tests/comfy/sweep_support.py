"""Harness of the bad-input sweep (test_robustness_sweep.py): a ComfyUI server of its own with broken checkpoint
folders and odd input images, API prompts built from the bundled workflows, and checks that turn each outcome
into a row of docs/robustness.md (what the user sees, whether the server still serves)."""
import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from comfy_http import ComfyClient, history_messages, ui_to_api
from comfy_server import MAIN_MODEL_NAME, ComfyServer, prepare_base_dir
from workflow_cases import load_workflow, make_fast

INPUT_IMAGES = ("tiny_1x1.png", "huge_4096.png", "rgba.png", "gray.png", "gray16.png")


@dataclass
class Row:
    case: str
    sees: str = ""
    serving: str = ""
    ok: bool = False
    problem: str = ""
    seconds: float = 0.0


def broken_folders(models_bagel: Path, checkpoint: Path) -> None:
    """Damaged copies of the tiny checkpoint, one per kind of broken download."""
    def copy_of(name):
        target = models_bagel / name
        shutil.copytree(checkpoint, target)
        return target

    partial = copy_of("BAGEL-partial")  # an interrupted download: configs first, weights still coming
    (partial / "ema.safetensors").unlink()
    (partial / ".cache" / "huggingface" / "download").mkdir(parents=True)
    (partial / ".cache" / "huggingface" / "download" / "ema.safetensors.incomplete").write_bytes(b"\0" * 64)
    truncated = copy_of("BAGEL-truncated") / "ema.safetensors"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    corrupt = copy_of("BAGEL-corrupt") / "ae.safetensors"
    corrupt.write_bytes(b"\xff" * 64 + corrupt.read_bytes()[64:])  # header length and JSON overwritten
    wrong = copy_of("BAGEL-wrongdims") / "llm_config.json"
    config = json.loads(wrong.read_text())
    config["intermediate_size"] = config["intermediate_size"] * 2  # configs of another model size
    wrong.write_text(json.dumps(config))


def input_images(folder: Path) -> None:
    Image.new("RGB", (1, 1), (10, 200, 30)).save(folder / "tiny_1x1.png")
    ramp = np.linspace(0, 255, 4096, dtype=np.float32)
    big = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (4096, 1)), np.tile(ramp[:, None], (1, 4096))], -1)
    Image.fromarray(big.astype(np.uint8)).save(folder / "huge_4096.png", compress_level=1)
    rgba = Image.new("RGBA", (80, 48), (200, 30, 30, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 40, 48))  # left half transparent
    rgba.save(folder / "rgba.png")
    Image.new("L", (64, 64), 128).save(folder / "gray.png")
    Image.fromarray(np.full((48, 64), 40000, dtype=np.uint16)).save(folder / "gray16.png")  # 16-bit grayscale


def start_sweep_server(comfyui_path: Path, base: Path, checkpoint: Path) -> ComfyServer:
    yaml_path = prepare_base_dir(base, checkpoint)
    broken_folders(base / "models" / "bagel", checkpoint)
    input_images(base / "input")
    return ComfyServer(comfyui_path, base, yaml_path)


def server_rss_mb(server: ComfyServer) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line")


def one_line(text: str, limit: int = 330) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Sweep:
    """Builds prompts and records rows; every check also proves the server still answers afterwards."""

    def __init__(self, server: ComfyServer):
        self.server = server
        self.client = server.client
        self.object_info = self.client.object_info()
        self.rows: list[Row] = []

    # ---- prompts ------------------------------------------------------------------------------------------

    def prompt(self, workflow: str) -> dict:
        return make_fast(ui_to_api(load_workflow(workflow), self.object_info))

    @staticmethod
    def node(prompt: dict, class_type: str) -> dict:
        return next(node["inputs"] for node in prompt.values() if node["class_type"] == class_type)

    @staticmethod
    def node_id(prompt: dict, class_type: str) -> str:
        return next(key for key, node in prompt.items() if node["class_type"] == class_type)

    def with_model(self, workflow: str, folder: str) -> dict:
        prompt = self.prompt(workflow)
        self.node(prompt, "BagelMoTModelLoader")["model_folder"] = folder
        return prompt

    def with_image(self, workflow: str, image: str) -> dict:
        prompt = self.prompt(workflow)
        self.node(prompt, "LoadImage")["image"] = image
        return prompt

    # ---- outcomes -----------------------------------------------------------------------------------------

    def serving(self) -> str:
        status, stats = self.client.request("/system_stats")
        queue = self.client.get("/queue")
        busy = len(queue["queue_running"]) + len(queue["queue_pending"])
        if status != 200 or busy:
            raise AssertionError(f"server not idle: /system_stats {status}, {busy} prompt(s) queued")
        return f"serving (RSS {server_rss_mb(self.server):.0f} MB)"

    def record(self, case: str, check) -> Row:
        """Runs check() -> what the user sees; any assertion becomes the row's problem."""
        row = Row(case)
        start = time.perf_counter()
        try:
            row.sees = self.readable(check())
            row.ok = True
        except Exception as error:  # the sweep reports every case, then fails the test with the list
            row.problem = f"{type(error).__name__}: {one_line(self.readable(error), 600)}"
        row.seconds = time.perf_counter() - start
        try:
            row.serving = self.serving()
        except Exception as error:
            row.ok, row.problem = False, row.problem or f"server: {one_line(error)}"
            row.serving = "NOT serving"
        self.rows.append(row)
        return row

    def readable(self, text) -> str:
        """Temporary paths shortened to <base> (ComfyUI's base folder of this sweep)."""
        return str(text).replace(str(self.server.base), "<base>")

    def rejected(self, prompt: dict, *fragments: str) -> str:
        status, body = self.client.queue(prompt)
        assert status == 400, f"expected HTTP 400, got {status}: {one_line(body)}"
        shown = []
        for node in body["node_errors"].values():
            for error in node["errors"]:
                if error["type"] == "custom_validation_failed":  # details: "input - message"
                    text = error["details"].split(" - ", 1)[-1]
                else:
                    text = f"{error['message']}: {error['details']}"
                entry = f"{node['class_type']}: {text}"
                # One mistake, one error: a message shown twice would be one mistake reported on two inputs.
                assert entry not in shown, f"error repeated: {one_line(entry)}"
                shown.append(entry)
        text = " ".join(shown)
        for fragment in fragments:
            assert fragment in text, f"{fragment!r} not in {text!r}"
        return f"HTTP 400, node_errors: {one_line(text)}"

    def finish(self, prompt: dict, client: ComfyClient | None = None) -> dict:
        client = client or self.client
        return client.wait(client.queue_or_raise(copy.deepcopy(prompt)), timeout=600)

    def failed(self, prompt: dict, *fragments: str) -> str:
        entry = self.finish(prompt)
        errors = history_messages(entry, "execution_error")
        assert entry["status"]["status_str"] == "error" and errors, f"expected an execution error: {entry['status']}"
        error = errors[0]
        for fragment in fragments:
            assert fragment in error["exception_message"], f"{fragment!r} not in {error['exception_message']!r}"
        return (f"execution error on {error['node_type']} ({error['exception_type'].rsplit('.', 1)[-1]}): "
                f"{one_line(error['exception_message'])}")

    def succeeded(self, prompt: dict, client: ComfyClient | None = None) -> dict:
        entry = self.finish(prompt, client)
        errors = history_messages(entry, "execution_error")
        assert entry["status"]["status_str"] == "success", one_line(errors or entry["status"])
        return entry

    def saved_sizes(self, entry: dict) -> list[tuple[int, int]]:
        sizes = []
        for output in entry["outputs"].values():
            for image in output.get("images", []):
                with Image.open(self.server.base / "output" / image["subfolder"] / image["filename"]) as picture:
                    sizes.append(picture.size)
        return sizes

    @staticmethod
    def texts(entry: dict) -> list[str]:
        return [text for output in entry["outputs"].values() for text in output.get("text", [])]


MAIN_MODEL = MAIN_MODEL_NAME
