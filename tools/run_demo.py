"""Runs a bundled workflow end to end on a ComfyUI started just for it, and prints the outputs.

With no BAGEL checkpoint in models/bagel (by the loader's own list: bagel_model/checkpoint/listing.py) it first
writes a small random demo checkpoint to models/bagel/BAGEL-demo-random (never under the real model's name) and
runs on that, with sizes, steps and token budgets lowered (demo_settings.py) so that it takes about a minute on a
CPU; the images are noise and the text random tokens, which shows the plumbing works. At the end it says what it
ran (read from the prompt it submitted), where the outputs are and what to do next. Safe to run again: it reuses
the demo checkpoint, and uses real weights as soon as models/bagel holds a checkpoint the loader lists.
Usage (from the pack folder inside custom_nodes):
    python tools/run_demo.py --comfyui ../.. [--workflow 'BAGEL-MoT Text to Image'] [--base-directory DIR]
(--base-directory: ComfyUI's own option: models/, custom_nodes/, input/, output/ and user/ live there.)
"""
import argparse
import copy
import importlib.util
import json
import logging
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from comfy_http import ComfyClient, locate_comfyui, ui_to_api
from demo_settings import lower_for_demo, shrink_input_images, text_cap, what_ran

PACK_ROOT = Path(__file__).resolve().parents[1]
if str(PACK_ROOT) not in sys.path:  # the pack's pure-PyTorch core: its checkpoint rules and demo checkpoint
    sys.path.append(str(PACK_ROOT))  # appended: the pack's nodes/ must never shadow ComfyUI's nodes module
from bagel_model import make_test_checkpoint  # noqa: E402
from bagel_model.checkpoint.listing import checkpoint_choices  # noqa: E402

WORKFLOW_DIR = PACK_ROOT / "workflows"
DEMO_FOLDER = "BAGEL-demo-random"
DEFAULT_WORKFLOW = "BAGEL-MoT Text to Image"
HF_REPO_ID = "ByteDance-Seed/BAGEL-7B-MoT"
REAL_FOLDER = "BAGEL-7B-MoT"
LOG_TAIL_LINES = 25
# ComfyUI 0.33 imports much more at start-up than 0.3.64; on our busy 2-core machine it once needed over 120 s.
START_TIMEOUT_S = 300
# Import names whose pip package is called differently.
PIP_NAMES = {"yaml": "pyyaml", "PIL": "pillow", "cv2": "opencv-python", "google": "protobuf"}

logger = logging.getLogger("run_demo")


def real_checkpoint(models_bagel: Path) -> str | None:
    """The first checkpoint the loader would list in ``models_bagel`` other than the demo's, else None."""
    return next((name for name in checkpoint_choices(models_bagel) if name.split("/")[0] != DEMO_FOLDER), None)


def ensure_demo_checkpoint(models_bagel: Path, comfyui: Path) -> str:
    """Writes the random `small` demo (with ComfyUI's copy of the real Qwen2.5 tokenizer) if missing."""
    target = models_bagel / DEMO_FOLDER
    if not (target / "llm_config.json").is_file():
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
        client.wait_until_ready(timeout=START_TIMEOUT_S, process=process)
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
    # Only an import that failed (a traceback line): ComfyUI also logs optional modules it did not find.
    missing = re.findall(r"ModuleNotFoundError: No module named '([A-Za-z0-9_]+)", "\n".join(lines))
    if missing:
        package = PIP_NAMES.get(missing[-1], missing[-1])
        report += (f"Fix: ComfyUI needs the Python package '{package}', which its requirements.txt does not "
                   f"install; run `{sys.executable} -m pip install {package}` (ComfyUI's Python), then run the "
                   f"demo again: {rerun_command()}")
    else:
        report += ("Fix: start ComfyUI by hand (python main.py) to see the problem, fix it, then run the demo "
                   f"again: {rerun_command()}")
    return report


# The resolved arguments of this run (main() sets them), so the re-run line works from any folder.
RERUN = {"comfyui": Path(".."), "workflow": None, "base": None}


def rerun_command() -> str:
    """This very run as one command with absolute paths, so it works pasted into any folder (the README's
    one-liner also works again from custom_nodes: it skips the clone of an existing folder)."""
    words = [sys.executable, str(PACK_ROOT / "tools" / "run_demo.py"), "--comfyui", str(RERUN["comfyui"])]
    if RERUN["workflow"] not in (None, DEFAULT_WORKFLOW):
        words += ["--workflow", RERUN["workflow"]]
    if RERUN["base"] is not None:
        words += ["--base-directory", str(RERUN["base"])]
    return " ".join(shlex.quote(word) for word in words)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, required=True, help="ComfyUI folder (the one with main.py)")
    parser.add_argument("--workflow", default=DEFAULT_WORKFLOW,
                        help=f"a file name (without .json) in {WORKFLOW_DIR.name}/")
    parser.add_argument("--base-directory", type=Path, help="ComfyUI base directory (default: the ComfyUI folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    comfyui = locate_comfyui(args.comfyui)
    if not (comfyui / "main.py").is_file():
        parser.error(f"{comfyui} has no main.py; pass the ComfyUI folder")
    base = args.base_directory.resolve() if args.base_directory else comfyui
    RERUN.update(comfyui=comfyui, workflow=args.workflow, base=base if args.base_directory else None)
    workflow_file = WORKFLOW_DIR / f"{args.workflow}.json"
    if not workflow_file.is_file():
        parser.error(f"no workflow {workflow_file}; the bundled ones: "
                     + ", ".join(sorted(p.stem for p in WORKFLOW_DIR.glob("*.json"))))
    models_bagel = base / "models" / "bagel"
    models_bagel.mkdir(parents=True, exist_ok=True)
    model_folder = real_checkpoint(models_bagel) or ensure_demo_checkpoint(models_bagel, comfyui)
    log_path = base / "user" / "bagel_mot_demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        process, client = start_comfyui(comfyui, base, log_path)
    except ComfyStartError as error:
        logger.error("%s", error)
        return 1
    try:
        object_info = client.object_info()
        original = point_at_checkpoint(ui_to_api(json.loads(workflow_file.read_text()), object_info), model_folder)
        submitted = lower_for_demo(original, object_info) if model_folder == DEMO_FOLDER else copy.deepcopy(original)
        if model_folder == DEMO_FOLDER:
            shrink_input_images(submitted, base / "input", DEMO_FOLDER)
        logger.info("Running %s on %s (ComfyUI log: %s)", args.workflow, model_folder, log_path)
        ran_from = time.monotonic()
        entry = client.wait(client.queue_or_raise(submitted), timeout=3600)
        seconds = (ran_from - started, time.monotonic() - ran_from)
    finally:
        process.terminate()
        process.wait(timeout=30)
    if entry["status"]["status_str"] != "success":
        logger.error("The workflow failed: %s", json.dumps(entry["status"]["messages"], indent=1)[-3000:])
        return 1
    ran = what_ran(submitted, original)
    logger.info("%s", summary(args.workflow, base, models_bagel / model_folder, ran, text_cap(submitted),
                              entry["outputs"], seconds))
    return 0


def point_at_checkpoint(prompt: dict, model_folder: str) -> dict:
    """Selects ``model_folder`` in every BAGEL loader of the API prompt (in place; returned for chaining)."""
    for node in prompt.values():
        if node["class_type"] == "BagelMoTModelLoader":
            node["inputs"]["model_folder"] = model_folder
    return prompt


def _saved_images(base: Path, outputs: dict) -> list[str]:
    lines = []
    for output in outputs.values():
        for image in output.get("images", []):
            if image.get("type") == "output":
                path = base / "output" / image["subfolder"] / image["filename"]
                with Image.open(path) as picture:
                    lines.append(f"Saved {path} ({picture.width}x{picture.height})")
    return lines


def _get_weights_lines(real: Path) -> list[str]:
    """`hf` comes with ComfyUI 0.33's requirements (huggingface_hub); only without it say how to get it."""
    beside_python = Path(sys.executable).parent / "hf"
    hf = "hf" if shutil.which("hf") else (shlex.quote(str(beside_python)) if beside_python.is_file() else None)
    lines = ["  1. Get the real weights (about 29 GB) with huggingface_hub's command line:",
             f'       {hf or "hf"} download {HF_REPO_ID} --local-dir "{real}"']
    if hf is None:
        found = importlib.util.find_spec("huggingface_hub") is not None
        lines.append(f"     (`hf` is not on PATH; {'update' if found else 'install'} it with "
                     f"`{sys.executable} -m pip install -U huggingface_hub`, or from Python: "
                     f"huggingface_hub.snapshot_download(\"{HF_REPO_ID}\", local_dir=...)).")
    return lines


def summary(workflow: str, base: Path, checkpoint: Path, ran: list[str], cap: int | None, outputs: dict,
            seconds: tuple[float, float]) -> str:
    """What ran (read from the submitted prompt), on what, what came out and where, and what to do next."""
    lines = [f"Done: the workflow {workflow} ran end to end in ComfyUI on {checkpoint} (ComfyUI start-up "
             f"{seconds[0]:.0f} s, the workflow {seconds[1]:.0f} s)."]
    texts = [text for output in outputs.values() for text in output.get("text", [])]
    demo = checkpoint.name == DEMO_FOLDER
    if demo:
        lines.append("That is a random demo checkpoint (no BAGEL checkpoint was found in models/bagel), so images "
                     "are noise and text is random tokens: this run only shows that ComfyUI, the pack and the "
                     "workflow work together.")
    lines += ["It ran:"] + [f"  {line}" for line in ran]
    lines += _saved_images(base, outputs)
    if demo and texts:
        lines.append(f"Text (random tokens of the random model; at most {cap} tokens for the demo):")
        lines += [f"  {text!r}" for text in texts]
    else:
        lines += [f"Text: {text}" for text in texts]
    lines.append("Next:")
    if demo:
        lines += _get_weights_lines(base / "models" / "bagel" / REAL_FOLDER)
        lines += [f"  2. Delete the demo checkpoint: {checkpoint}",
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
