"""Runs a bundled workflow end to end on a ComfyUI started just for it, and prints the outputs.

With no BAGEL weights in models/bagel it first writes a small random demo checkpoint to
models/bagel/BAGEL-demo-random (never under the real model's name) and runs on that; the images
are noise-like, which shows the plumbing works. Usage (from the pack folder inside custom_nodes):
    python tools/run_demo.py --comfyui ../.. [--workflow bagel_mot_text_to_image] [--base-directory DIR]
(--base-directory: ComfyUI's own option: models/, custom_nodes/, input/, output/ and user/ live there.)
"""
import argparse
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from comfy_http import ComfyClient, ui_to_api

PACK_ROOT = Path(__file__).resolve().parents[1]
DEMO_FOLDER = "BAGEL-demo-random"
REAL_WEIGHTS_FILE = "ema.safetensors"
DEMO_SETTINGS = {"width": 256, "height": 256, "steps": 20}  # keeps a CPU demo to about a minute
LOG_TAIL_LINES = 25
# Import names whose pip package is called differently.
PIP_NAMES = {"yaml": "pyyaml", "PIL": "pillow", "cv2": "opencv-python", "google": "protobuf"}

logger = logging.getLogger("run_demo")


def real_checkpoint(models_bagel: Path) -> str | None:
    for folder in sorted(models_bagel.iterdir()) if models_bagel.is_dir() else []:
        if folder.name != DEMO_FOLDER and (folder / REAL_WEIGHTS_FILE).is_file():
            return folder.name
    return None


def ensure_demo_checkpoint(models_bagel: Path, comfyui: Path) -> str:
    """Writes the random `small` demo (with ComfyUI's copy of the real Qwen2.5 tokenizer) if missing."""
    target = models_bagel / DEMO_FOLDER
    if not (target / "llm_config.json").is_file():
        sys.path.insert(0, str(PACK_ROOT))
        from bagel_model import make_test_checkpoint

        logger.info("No BAGEL weights found; writing a random demo checkpoint to %s", target)
        tokenizer = comfyui / "comfy" / "text_encoders" / "qwen25_tokenizer"
        make_test_checkpoint(str(target), preset="small",
                             tokenizer_dir=str(tokenizer) if (tokenizer / "vocab.json").is_file() else None)
    return DEMO_FOLDER


def start_comfyui(comfyui: Path, base: Path, log_path: Path):
    import torch

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch"]
    if base != comfyui:
        command += ["--base-directory", str(base)]
    if not torch.cuda.is_available():
        command.append("--cpu")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
    client = ComfyClient(f"http://127.0.0.1:{port}")
    try:
        client.wait_until_ready(process=process)
    except (RuntimeError, TimeoutError) as error:
        process.terminate()
        process.wait(timeout=30)
        raise ComfyStartError(startup_failure_report(str(error), log_path)) from None
    return process, client


class ComfyStartError(RuntimeError):
    """ComfyUI did not come up; the message holds its log tail and the fix."""


def startup_failure_report(what: str, log_path: Path) -> str:
    """What happened, the last lines of ComfyUI's log and, when the log shows it, how to fix it."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.is_file() else []
    tail = "\n".join("  | " + line for line in lines[-LOG_TAIL_LINES:]) or "  | (the log is empty)"
    report = f"{what}. Last lines of ComfyUI's log ({log_path}):\n{tail}\n"
    missing = re.findall(r"No module named '([A-Za-z0-9_]+)", "\n".join(lines))
    if missing:
        package = PIP_NAMES.get(missing[-1], missing[-1])
        report += (f"Fix: ComfyUI needs the Python package '{package}', which its requirements.txt does not "
                   f"install; run `{sys.executable} -m pip install {package}` (ComfyUI's Python), then run "
                   "this command again.")
    else:
        report += "Fix: start ComfyUI by hand (python main.py) to see the problem, fix it, then run this again."
    return report


def locate_comfyui(given: Path) -> Path:
    """``../..`` means the folder above custom_nodes even when the pack folder is a symlink: resolve it
    against the shell's logical working directory first, then physically."""
    logical = Path(os.path.normpath(Path(os.environ.get("PWD", os.getcwd())) / given))
    return logical if (logical / "main.py").is_file() else given.resolve()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI folder (the one with main.py)")
    parser.add_argument("--workflow", default="bagel_mot_text_to_image", help="a file name in workflows/")
    parser.add_argument("--base-directory", type=Path, help="ComfyUI base directory (default: the ComfyUI folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    comfyui = locate_comfyui(args.comfyui)
    if not (comfyui / "main.py").is_file():
        parser.error(f"{comfyui} has no main.py; pass the ComfyUI folder")
    base = args.base_directory.resolve() if args.base_directory else comfyui
    models_bagel = base / "models" / "bagel"
    models_bagel.mkdir(parents=True, exist_ok=True)
    model_folder = real_checkpoint(models_bagel) or ensure_demo_checkpoint(models_bagel, comfyui)
    workflow = json.loads((PACK_ROOT / "workflows" / f"{args.workflow}.json").read_text())
    log_path = base / "user" / "bagel_mot_demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        process, client = start_comfyui(comfyui, base, log_path)
    except ComfyStartError as error:
        logger.error("%s", error)
        return 1
    try:
        prompt = ui_to_api(workflow, client.object_info())
        for node in prompt.values():
            if node["class_type"] == "BagelMoTModelLoader":
                node["inputs"]["model_folder"] = model_folder
            elif model_folder == DEMO_FOLDER and node["class_type"].startswith("BagelMoT"):
                node["inputs"].update({k: v for k, v in DEMO_SETTINGS.items() if k in node["inputs"]})
        logger.info("Running %s on %s (ComfyUI log: %s)", args.workflow, model_folder, log_path)
        entry = client.wait(client.queue_or_raise(prompt), timeout=3600)
    finally:
        process.terminate()
        process.wait(timeout=30)
    if entry["status"]["status_str"] != "success":
        logger.error("The workflow failed: %s", json.dumps(entry["status"]["messages"], indent=1)[-3000:])
        return 1
    for output in entry["outputs"].values():
        for image in output.get("images", []):
            logger.info("Saved %s", base / "output" / image["subfolder"] / image["filename"])
        for text in output.get("text", []):
            logger.info("Text: %s", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
