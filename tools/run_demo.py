"""Runs a bundled workflow end to end on a ComfyUI started just for it, and prints the outputs.

With no BAGEL weights in models/bagel it first writes a small random demo checkpoint to
models/bagel/BAGEL-demo-random (never under the real model's name) and runs on that, at 256x256 and 20
steps instead of the workflow's own settings; the images are noise, which shows the plumbing works. At the
end it says what it did, where the outputs are and what to do next. Safe to run again: it reuses the demo
checkpoint, and uses real weights as soon as a folder in models/bagel holds them.
Usage (from the pack folder inside custom_nodes):
    python tools/run_demo.py --comfyui ../.. [--workflow 'BAGEL-MoT Text to Image'] [--base-directory DIR]
(--base-directory: ComfyUI's own option: models/, custom_nodes/, input/, output/ and user/ live there.)
"""
import argparse
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from comfy_http import ComfyClient, ui_to_api

PACK_ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = PACK_ROOT / "workflows"
DEMO_FOLDER = "BAGEL-demo-random"
REAL_WEIGHTS_FILE = "ema.safetensors"
PREQUANTIZED_MARKER = "quantization_config.json"  # a folder written by `python -m bagel_model quantize`
DEMO_SETTINGS = {"width": 256, "height": 256, "steps": 20}  # keeps a CPU demo to about a minute
HF_REPO_ID = "ByteDance-Seed/BAGEL-7B-MoT"
REAL_FOLDER = "BAGEL-7B-MoT"
LOG_TAIL_LINES = 25
# Import names whose pip package is called differently.
PIP_NAMES = {"yaml": "pyyaml", "PIL": "pillow", "cv2": "opencv-python", "google": "protobuf"}

logger = logging.getLogger("run_demo")


def real_checkpoint(models_bagel: Path) -> str | None:
    for folder in sorted(models_bagel.iterdir()) if models_bagel.is_dir() else []:
        if folder.name != DEMO_FOLDER and any((folder / name).is_file() for name in (REAL_WEIGHTS_FILE,
                                                                                    PREQUANTIZED_MARKER)):
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
    else:
        logger.info("No BAGEL weights found; using the random demo checkpoint written earlier: %s", target)
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
                   f"install; run `{sys.executable} -m pip install {package}` (ComfyUI's Python), then run the "
                   f"demo again: {rerun_command()}")
    else:
        report += ("Fix: start ComfyUI by hand (python main.py) to see the problem, fix it, then run the demo "
                   f"again: {rerun_command()}")
    return report


def rerun_command() -> str:
    """This very command, runnable from any folder (the README's one-liner also works again: it skips the
    clone of an existing folder)."""
    arguments = " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    return f"cd {shlex.quote(str(PACK_ROOT))} && {shlex.quote(sys.executable)} tools/run_demo.py {arguments}"


def locate_comfyui(given: Path) -> Path:
    """``../..`` means the folder above custom_nodes even when the pack folder is a symlink: resolve it
    against the shell's logical working directory first, then physically."""
    logical = Path(os.path.normpath(Path(os.environ.get("PWD", os.getcwd())) / given))
    return logical if (logical / "main.py").is_file() else given.resolve()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI folder (the one with main.py)")
    parser.add_argument("--workflow", default="BAGEL-MoT Text to Image",
                        help=f"a file name (without .json) in {WORKFLOW_DIR.name}/")
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
    workflow = json.loads((WORKFLOW_DIR / f"{args.workflow}.json").read_text())
    log_path = base / "user" / "bagel_mot_demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        process, client = start_comfyui(comfyui, base, log_path)
    except ComfyStartError as error:
        logger.error("%s", error)
        return 1
    try:
        prompt = ui_to_api(workflow, client.object_info())
        lowered = point_at_checkpoint(prompt, model_folder)
        logger.info("Running %s on %s (ComfyUI log: %s)", args.workflow, model_folder, log_path)
        entry = client.wait(client.queue_or_raise(prompt), timeout=3600)
    finally:
        process.terminate()
        process.wait(timeout=30)
    if entry["status"]["status_str"] != "success":
        logger.error("The workflow failed: %s", json.dumps(entry["status"]["messages"], indent=1)[-3000:])
        return 1
    logger.info("%s", summary(args.workflow, base, models_bagel / model_folder, lowered, entry["outputs"]))
    return 0


def point_at_checkpoint(prompt: dict, model_folder: str) -> list[str]:
    """Selects ``model_folder`` in the loader; on the demo checkpoint lowers the size and steps of the BAGEL
    nodes. Returns one "node: from -> to" line per node changed."""
    lowered = []
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "BagelMoTModelLoader":
            inputs["model_folder"] = model_folder
        elif model_folder == DEMO_FOLDER and node["class_type"].startswith("BagelMoT"):
            changes = {k: v for k, v in DEMO_SETTINGS.items() if k in inputs and inputs[k] != v}
            if changes:
                lowered.append(f"{node['class_type']}: {describe_settings(inputs)} -> "
                               f"{describe_settings({**inputs, **changes})}")
                inputs.update(changes)
    return lowered


def describe_settings(inputs: dict) -> str:
    size = f"{inputs['width']}x{inputs['height']}, " if "width" in inputs and "height" in inputs else ""
    return f"{size}{inputs['steps']} steps" if "steps" in inputs else size.rstrip(", ")


def summary(workflow: str, base: Path, checkpoint: Path, lowered: list[str], outputs: dict) -> str:
    """What ran, on what, what came out and where, and what to do next."""
    lines = [f"Done: the workflow {workflow} ran end to end in ComfyUI on {checkpoint}."]
    saved = [base / "output" / image["subfolder"] / image["filename"]
             for output in outputs.values() for image in output.get("images", []) if image.get("type") == "output"]
    texts = [text for output in outputs.values() for text in output.get("text", [])]
    demo = checkpoint.name == DEMO_FOLDER
    if demo:
        lines.append("That is a random demo checkpoint (no BAGEL weights were found in models/bagel), so the image "
                     "is noise and any text gibberish: this run only shows that ComfyUI, the pack and the workflow "
                     "work together.")
        lines += [f"To keep the CPU run short it lowered {line} (the workflow file is unchanged)." for line in lowered]
    lines += [f"Saved {path}" for path in saved]
    lines += [f"Text: {text!r}" if demo else f"Text: {text}" for text in texts]
    lines.append("Next:")
    if demo:
        real = base / "models" / "bagel" / REAL_FOLDER
        lines += [f"  1. Get the real weights (about 29 GB) with huggingface_hub's command line:",
                  f'       hf download {HF_REPO_ID} --local-dir "{real}"',
                  f"     (install it with `python -m pip install -U huggingface_hub`; from Python: "
                  f"huggingface_hub.snapshot_download(\"{HF_REPO_ID}\", local_dir=...)).",
                  f"  2. Delete the demo checkpoint: {checkpoint}",
                  f"  3. Start ComfyUI, open Workflow > Browse Templates > Custom Nodes > {PACK_ROOT.name} > "
                  f"{workflow}, pick {REAL_FOLDER} in the loader's model_folder and press Run.",
                  f"     Or run this demo again, now on the real weights at the workflow's own settings: "
                  f"{rerun_command()}"]
    else:
        lines.append(f"  Start ComfyUI and open Workflow > Browse Templates > Custom Nodes > {PACK_ROOT.name} > "
                     f"{workflow} (or drag {WORKFLOW_DIR.name}/{workflow}.json onto the canvas) to change the prompt.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
