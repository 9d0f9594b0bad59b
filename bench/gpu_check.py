"""One GPU check: every precision x memory budget x mode through ComfyUI's own memory manager, one table.

    python bench/gpu_check.py --comfyui PATH [--device cuda] [--dims real] [--budgets 12,16,24]
                              [--precisions bf16,fp8_e4m3fn,int8,nf4] [--steps 4] [--tokens 8] [--size 1024]

``PATH`` is a ComfyUI source folder or its .tar.gz (extracted into a temporary folder), e.g. the vendored
ComfyUI-a125cd8.tar.gz copied into the git-ignored ``.comfyui/``. Nothing is downloaded: a real-dimension
BAGEL (14.6 B parameters) is made with random weights on the GPU (bench/random_model.py: the loader's own
quantization code, each finished module moved to the host as ComfyUI keeps offloaded weights), wrapped in the
loader node's model handle (the ComfyUI patcher) and run through the pack's own T2I / edit / understand nodes.
Per budget, ``torch.cuda.set_per_process_memory_fraction`` caps the process and ComfyUI's memory view
(total/free memory) is set to the same budget, so ``load_models_gpu`` plans its partial load for that card.

Columns: ``peak GiB`` torch's peak allocation during the node call (weights included); ``s/step`` time per
denoising step (understand: per token) from the node's progress reports; ``GB streamed/step`` bytes ComfyUI's
cast path copied from another device per step (the transfer ledger); ``load s`` time spent in
``load_models_gpu`` for that call; ``build s`` making the random model. A row that fails prints the error
(an OOM stays an OOM); ``--max-minutes`` (default 7.5) bounds the whole run: every (precision, VRAM mode)
runs in its own child process (so its model, closures and ``phase_hook`` die with it), which is killed at the
deadline, and inside a child the progress callback stops a node call that runs past it. ``GB streamed/step``
is the transfer ledger's total (ComfyUI's cast copies and the NF4/INT8 Linears' own per-call copies). When comfy-aimdo is importable and
the ComfyUI has ``ModelPatcherDynamic`` (0.33+), every precision also gets Dynamic VRAM rows (``vram`` column
``dynamic``), enabled as ComfyUI's main.py does.

``--device cpu --dims small`` runs the same code on the CPU (ComfyUI in --cpu mode: full loads, no budgets;
"peak" is the process's peak RSS) so the GPU minutes go to measuring. Measured on this repository's 2-core
test VM (AMD EPYC, avx512_bf16; torch 2.14.1 CPU, ComfyUI 0.3.64) with
``--device cpu --dims small --size 256 --steps 3 --tokens 4``: see docs/gpu_check.md.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from gpu_check_parts import (Budget, DeadlineReached, Meter, dynamic_vram_available,  # noqa: E402
                             enable_dynamic_vram)
GB, GiB = 1e9, 1024 ** 3
SKIPPED_INPUTS = {"bagel_model", "prompt", "instruction", "question", "image", "width", "height", "seed",
                  "batch_size", "output_size", "max_new_tokens", "do_sample", "temperature", "think"}


def comfyui_root(path: str) -> Path:
    """The ComfyUI folder: ``path`` itself, or a .tar.gz extracted into a temporary folder."""
    source = Path(path)
    if source.is_dir():
        return source.resolve()
    target = Path(tempfile.mkdtemp(prefix="comfyui-"))
    with tarfile.open(source) as archive:
        archive.extractall(target, filter="data")
    mains = sorted(target.glob("*/main.py"))
    if not mains:
        raise SystemExit(f"{source} holds no ComfyUI folder with main.py")
    return mains[0].parent


def resolve_device(name: str, current_cuda_index=None) -> torch.device:
    """``cuda`` without an index means the current CUDA device (``set_per_process_memory_fraction`` and the
    memory statistics need an indexed device)."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", (current_cuda_index or torch.cuda.current_device)())
    return device


def import_comfy_and_pack(root: Path, device: str, dynamic_vram: bool = False):
    """ComfyUI's memory manager, then this pack the way ComfyUI imports a custom node folder."""
    sys.path.insert(0, str(root))
    from comfy.cli_args import args

    args.cpu = device == "cpu"  # before comfy.model_management is imported, as `main.py --cpu`
    import comfy.model_management as mm

    if dynamic_vram and not enable_dynamic_vram(mm):
        raise RuntimeError("comfy-aimdo is installed but could not initialise the CUDA devices (Dynamic VRAM)")

    spec = importlib.util.spec_from_file_location("bagel_mot_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["bagel_mot_pack"] = pack
    spec.loader.exec_module(pack)
    return pack


def node_defaults(node_class, **overrides) -> dict:
    """Every widget input of a node at its default (sampler settings...), then ``overrides``."""
    values = {}
    for section in ("required", "optional"):
        for name, spec in node_class.INPUT_TYPES().get(section, {}).items():
            options = spec[1] if len(spec) > 1 else {}
            if name not in SKIPPED_INPUTS and "default" in options:
                values[name] = options["default"]
    values.update(overrides)
    return values


def run_modes(pack, handle, args):
    """(mode, callable) for the three modes, each calling the pack's node like ComfyUI would."""
    nodes = pack.NODE_CLASS_MAPPINGS
    t2i, edit, und = nodes["BagelMoTTextToImage"], nodes["BagelMoTEdit"], nodes["BagelMoTUnderstand"]
    side = args.size
    image = torch.rand((1, side, side, 3), generator=torch.Generator().manual_seed(0))
    return [
        (f"t2i {side}²", lambda: t2i().generate(handle, "a red fox in the snow", side, side, 0, 1,
                                                **node_defaults(t2i, steps=args.steps))),
        (f"edit {side}²", lambda: edit().edit(handle, image, "make it night", "custom", side, side, 0,
                                              **node_defaults(edit, steps=args.steps))),
        ("understand", lambda: und().understand(handle, image, "Describe the image.", args.tokens, False, 0.3,
                                                0, False)),
    ]


def make_handle(pack, folder: Path, precision: str, device: torch.device, store: torch.device, seed: int):
    """The loader node's model handle around a random-weight pipeline: layers from the nodes' ComfyUI
    operations, weights made on ``device`` and kept on ``store`` (ComfyUI's offload device), as the loader does."""
    from bagel_model import BagelPipeline
    from bagel_model.checkpoint.quantization import storage_dtype
    from bagel_model.checkpoint.folder import read_config
    from bagel_model.devices import resolve_compute_dtype
    from bagel_model.text.tokenizer import Qwen2Tokenizer
    from random_model import build_random_model

    config = read_config(folder)
    cdtype = resolve_compute_dtype("auto", device)
    comfy_ops = importlib.import_module(pack.__name__ + ".nodes.comfy_ops")
    model_handle = importlib.import_module(pack.__name__ + ".nodes.model_handle")
    operations = comfy_ops.bagel_operations(storage_dtype(precision), cdtype)
    model, vae, seconds = build_random_model(config, precision, cdtype, device, store, seed, operations)
    pipeline = BagelPipeline(model, vae, Qwen2Tokenizer.from_folder(folder), cdtype, folder, device=device)
    pipeline.precision = precision
    return model_handle.BagelMoTModel(pipeline, folder.name, precision), seconds


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    from bagel_model.checkpoint.memory import process_peak_rss_bytes

    return process_peak_rss_bytes()


def measure(mode_call, meter: Meter, device: torch.device) -> dict:
    meter.reset()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    mode_call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, streamed = meter.per_step()
    return {"peak": peak_bytes(device) / GiB, "s_per_step": seconds, "streamed": streamed / GB,
            "load_s": meter.load_seconds}


def print_row(cells) -> None:
    print(" | ".join(str(c) for c in cells), flush=True)


def check_precision(pack, mm, meter, folder: Path, precision: str, args, label_vram: str) -> None:
    """The rows of one precision (all budgets x modes) in this process; ``meter.deadline`` bounds them."""
    device, store = resolve_device(args.device), torch.device("cpu")
    if precision in ("nf4", "int8") and importlib.util.find_spec("bitsandbytes") is None:
        print_row([precision, label_vram, "-", "-", "skipped: bitsandbytes is not installed (carry its wheel)"])
        return
    try:
        handle, build_s = make_handle(pack, folder, precision, device, store, args.seed)
    except (RuntimeError, MemoryError, ValueError) as exc:
        print_row([precision, label_vram, "-", "build", f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"])
        return
    budgets = args.budgets if device.type == "cuda" else [None]
    for gib in budgets:
        with Budget(mm, device, gib):
            for mode, call in run_modes(pack, handle, args):
                label = f"{gib:g} GB" if gib is not None else "host"
                if time.time() > meter.deadline:
                    print_row([precision, label_vram, label, mode, "skipped: --max-minutes reached"])
                    continue
                try:
                    row = measure(call, meter, device)
                except DeadlineReached:
                    print_row([precision, label_vram, label, mode, "stopped: --max-minutes reached"])
                    continue
                except (RuntimeError, MemoryError, ValueError) as exc:  # an OOM is reported as one
                    print_row([precision, label_vram, label, mode, f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"])
                    continue
                print_row([precision, label_vram, label, mode, f"{row['peak']:.2f}", f"{row['s_per_step']:.3f}",
                           f"{row['streamed']:.2f}", f"{row['load_s']:.2f}", f"{build_s:.1f}", "ok"])
    del handle
    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", required=True, help="ComfyUI source folder or its .tar.gz")
    parser.add_argument("--device", default="cuda", help="cuda[:N] or cpu (cuda: the current CUDA device)")
    parser.add_argument("--dims", default="real", choices=["real", "small", "tiny"])
    parser.add_argument("--precisions", default="bf16,fp8_e4m3fn,int8,nf4")
    parser.add_argument("--budgets", default="12,16,24", help="GB (GiB) budgets, CUDA only")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (steps - 1 evaluations)")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024 on CUDA, 256 on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=7.5, help="the whole run, every step included")
    parser.add_argument("--vram", default="auto", choices=["auto", "legacy", "dynamic"],
                        help="auto: legacy rows, plus Dynamic VRAM rows when comfy-aimdo is present")
    parser.add_argument("--child-deadline", type=float, default=None, help=argparse.SUPPRESS)  # epoch seconds
    args = parser.parse_args(argv)
    if args.max_minutes <= 0:
        parser.error("--max-minutes must be > 0")
    args.budgets = [float(b) for b in args.budgets.split(",") if b]
    if any(b <= 0 for b in args.budgets):
        parser.error("--budgets must be positive GiB values")
    args.size = args.size or (1024 if args.device.startswith("cuda") else 256)
    return args


def plan_jobs(args, root: Path) -> list[tuple[str, str]]:
    """(precision, vram mode) pairs, each run in its own child process."""
    if args.vram == "auto":
        modes = ["legacy"] + (["dynamic"] if args.device != "cpu" and dynamic_vram_available(root) else [])
    else:
        modes = [args.vram]
    return [(precision, mode) for precision in args.precisions.split(",") if precision for mode in modes]


MIN_JOB_SECONDS = 20  # a child started with less than this left could not even import torch and ComfyUI


def run_jobs(jobs, deadline: float, spawn, clock=time.time) -> list[tuple[str, str, str]]:
    """Runs ``spawn(precision, mode, deadline)`` (a Popen) per job, each killed when the deadline passes;
    returns (precision, mode, outcome) with outcome ok / killed / skipped / exit N."""
    outcomes = []
    for precision, mode in jobs:
        left = deadline - clock()
        if left < MIN_JOB_SECONDS:
            print_row([precision, mode, "-", "-", "skipped: --max-minutes reached"])
            outcomes.append((precision, mode, "skipped"))
            continue
        child = spawn(precision, mode, deadline)
        try:
            code = child.wait(timeout=left)
            outcomes.append((precision, mode, "ok" if code == 0 else f"exit {code}"))
            if code != 0:
                print_row([precision, mode, "-", "-", f"FAILED: child exited with {code}"])
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            print_row([precision, mode, "-", "-", "killed: --max-minutes reached (rows above are complete)"])
            outcomes.append((precision, mode, "killed"))
    return outcomes


def child_main(args, root: Path, folder: Path) -> None:
    """One (precision, VRAM mode): build, run every row, exit (the process takes its memory with it)."""
    dynamic = args.vram == "dynamic"
    pack = import_comfy_and_pack(root, "cpu" if args.device == "cpu" else "cuda", dynamic)
    import comfy.model_management as mm
    import comfy.utils

    meter = Meter(mm, comfy.utils, args.child_deadline)
    check_precision(pack, mm, meter, folder, args.precisions, args, args.vram)


def spawner(argv: list[str], root: Path, folder: Path):
    def spawn(precision: str, mode: str, deadline: float):
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--comfyui", str(root),
                   "--precisions", precision, "--vram", mode, "--child-deadline", str(deadline),
                   "--child-folder", str(folder)]
        return subprocess.Popen(command)
    return spawn


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    child_folder = None
    if "--child-folder" in argv:  # internal: the parent's test folder
        index = argv.index("--child-folder")
        child_folder, argv = Path(argv[index + 1]), argv[:index] + argv[index + 2:]
    args = parse_args(argv)
    root = comfyui_root(args.comfyui)
    if args.child_deadline is not None:
        child_main(args, root, child_folder)
        return
    deadline = time.time() + 60 * args.max_minutes
    from bagel_model.testing import write_test_folder

    folder, _ = write_test_folder(Path(tempfile.mkdtemp()) / f"BAGEL-random-{args.dims}", args.dims,
                                  root / "comfy" / "text_encoders" / "qwen25_tokenizer")
    name = torch.cuda.get_device_name(resolve_device(args.device)) if args.device.startswith("cuda") else "CPU"
    print(f"gpu_check: {name}, torch {torch.__version__}, ComfyUI {root}, dims {args.dims}, {args.size}², "
          f"{args.steps} steps, {args.tokens} tokens; random weights (timings and memory, not quality)", flush=True)
    print_row(["precision", "vram", "budget", "mode", "peak GiB", "s/step", "GB streamed/step", "load s",
               "build s", "status"])
    passthrough = _without_options(argv, ("--comfyui", "--precisions", "--vram"))
    run_jobs(plan_jobs(args, root), deadline, spawner(passthrough, root, folder))


def _without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the given ``--name value`` / ``--name=value`` options."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(n + "=" for n in names)):
            out.append(arg)
    return out


if __name__ == "__main__":
    main()
