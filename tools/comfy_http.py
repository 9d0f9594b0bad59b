"""Drive a running ComfyUI over HTTP: convert UI-format workflows to API prompts and run them.

The bundled workflows in workflows/ are kept only in the frontend (UI) format; this converts them
with the server's own /object_info, so the tests and the demo runner use the same files users load.
Standard library only, so it runs in any Python next to ComfyUI.
"""
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Frontend-only nodes that never reach the server.
VIRTUAL_NODE_TYPES = {"Note", "MarkdownNote"}
MODE_ALWAYS = 0


class WorkflowError(ValueError):
    """A UI workflow that does not match the server's node definitions."""


def _is_widget(spec) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def widget_slots(node_info: dict) -> list[str | None]:
    """Names of the values in a node's `widgets_values`, in order; None = frontend-only value.

    The frontend stores one value per widget input (required, then optional), plus the
    control_after_generate choice after a seed and the upload button after an image picker.
    """
    slots = []
    for section in ("required", "optional"):
        for name in node_info.get("input_order", {}).get(section, []):
            spec = node_info["input"][section][name]
            if not _is_widget(spec):
                continue
            slots.append(name)
            options = spec[1] if len(spec) > 1 else {}
            if options.get("control_after_generate"):
                slots.append(None)
            if options.get("image_upload"):
                slots.append(None)
    return slots


def _linked_inputs(node: dict, links_by_id: dict) -> dict:
    linked = {}
    for entry in node.get("inputs", []):
        if entry.get("link") is None:
            continue
        _, origin_id, origin_slot, *_ = links_by_id[entry["link"]]
        linked[entry["name"]] = [str(origin_id), origin_slot]
    return linked


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """API-format prompt for a UI-format workflow; raises WorkflowError on missing nodes or widget mismatches."""
    links_by_id = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        node_type = node["type"]
        if node_type in VIRTUAL_NODE_TYPES or node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            continue
        if node_type not in object_info:
            raise WorkflowError(f"node {node['id']}: type '{node_type}' is not installed on the server")
        slots = widget_slots(object_info[node_type])
        values = node.get("widgets_values") or []
        if isinstance(values, dict) or len(values) != len(slots):
            raise WorkflowError(
                f"node {node['id']} ({node_type}): {len(values)} widget values, server expects "
                f"{len(slots)} for {slots}"
            )
        inputs = {name: value for name, value in zip(slots, values) if name is not None}
        inputs.update(_linked_inputs(node, links_by_id))
        prompt[str(node["id"])] = {"class_type": node_type, "inputs": inputs,
                                   "_meta": {"title": node.get("title", node_type)}}
    return prompt


def locate_comfyui(given) -> Path:
    """The ComfyUI folder a relative path like ``../..`` means as typed in the shell: against the shell's logical
    working directory ($PWD) first, so it is the folder above custom_nodes even when the pack folder is a
    symlink; else resolved physically. The caller checks for main.py."""
    logical = Path(os.path.normpath(Path(os.environ.get("PWD", os.getcwd())) / given))
    return logical if (logical / "main.py").is_file() else Path(given).resolve()


class ComfyClient:
    """Minimal blocking HTTP client for one ComfyUI server."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.client_id = uuid.uuid4().hex

    def request(self, path: str, payload=None, timeout: float = 30.0):
        """(status, parsed JSON or text); HTTP errors are returned, not raised."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base_url + path, data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        try:
            return status, json.loads(body) if body else None
        except json.JSONDecodeError:
            return status, body.decode(errors="replace")

    def get(self, path: str):
        status, body = self.request(path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body}")
        return body

    def object_info(self) -> dict:
        return self.get("/object_info")

    def queue(self, prompt: dict):
        """POST /prompt; returns (status, body) so callers can inspect validation errors."""
        return self.request("/prompt", {"prompt": prompt, "client_id": self.client_id})

    def queue_or_raise(self, prompt: dict) -> str:
        status, body = self.queue(prompt)
        if status != 200:
            raise RuntimeError(f"ComfyUI rejected the prompt ({status}): {json.dumps(body, indent=1)}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """The finished history entry of prompt_id (success, error or interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def wait_until_ready(self, timeout: float = 120.0, process=None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {process.returncode} while starting")
            try:
                if self.request("/system_stats", timeout=2.0)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"ComfyUI at {self.base_url} did not answer /system_stats within {timeout:.0f} s")


def history_messages(entry: dict, kind: str) -> list[dict]:
    return [data for name, data in entry.get("status", {}).get("messages", []) if name == kind]
