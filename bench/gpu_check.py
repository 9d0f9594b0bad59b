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
cast path copied from another device per step (``comfy.model_management.cast_to``); ``load s`` time spent in
``load_models_gpu`` for that call; ``build s`` making the random model. A row that fails prints the error
(an OOM stays an OOM); ``--max-minutes`` (default 7.5) skips what would start after that.

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
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
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


def import_comfy_and_pack(root: Path, device: str):
    """ComfyUI's memory manager, then this pack the way ComfyUI imports a custom node folder."""
    sys.path.insert(0, str(root))
    from comfy.cli_args import args

    args.cpu = device == "cpu"  # before comfy.model_management is imported, as `main.py --cpu`
    import comfy.model_management as mm  # noqa: F401

    spec = importlib.util.spec_from_file_location("bagel_mot_pack", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["bagel_mot_pack"] = pack
    spec.loader.exec_module(pack)
    return pack


class Meter:
    """Counts what ComfyUI streams and how long it loads; records the progress reports of a node call."""

    def __init__(self, mm, comfy_utils):
        self.streamed = 0
        self.load_seconds = 0.0
        self.events: list[tuple[float, int]] = []
        real_cast, real_load = mm.cast_to, mm.load_models_gpu

        def counting_cast(weight, dtype=None, device=None, *args, **kwargs):
            if device is not None and weight.device != torch.device(device):
                self.streamed += weight.numel() * weight.element_size()
            return real_cast(weight, dtype, device, *args, **kwargs)

        def timed_load(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real_load(*args, **kwargs)
            finally:
                self.load_seconds += time.perf_counter() - start

        mm.cast_to, mm.load_models_gpu = counting_cast, timed_load
        comfy_utils.set_progress_bar_global_hook(
            lambda value, total, preview, node_id=None: self.events.append((time.perf_counter(), self.streamed)))

    def reset(self) -> None:
        self.streamed, self.load_seconds, self.events = 0, 0.0, []

    def per_step(self) -> tuple[float, float]:
        """(seconds, bytes streamed) per progress step, between the first and the last report."""
        if len(self.events) < 2:
            return float("nan"), float("nan")
        (t0, b0), (t1, b1) = self.events[0], self.events[-1]
        steps = len(self.events) - 1
        return (t1 - t0) / steps, (b1 - b0) / steps


class Budget:
    """Caps the CUDA allocator at ``gib`` and shows ComfyUI a card of that size (total and free memory)."""

    def __init__(self, mm, device: torch.device, gib: float | None):
        self.mm, self.device, self.gib = mm, device, gib
        self.saved = (mm.get_total_memory, mm.get_free_memory)

    def __enter__(self):
        mm, device = self.mm, self.device
        mm.unload_all_models()
        mm.soft_empty_cache()
        if self.gib is None or device.type != "cuda":
            return self
        limit = int(self.gib * GiB)
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
        real_total, real_free = self.saved

        def total_memory(dev=None, torch_total_too=False):
            if dev is not None and torch.device(dev).type != "cuda":
                return real_total(dev, torch_total_too)
            return (limit, limit) if torch_total_too else limit

        def free_memory(dev=None, torch_free_too=False):
            if dev is not None and torch.device(dev).type != "cuda":
                return real_free(dev, torch_free_too)
            torch_free = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            free = max(0, limit - torch.cuda.memory_reserved(device)) + torch_free
            return (free, torch_free) if torch_free_too else free

        mm.get_total_memory, mm.get_free_memory = total_memory, free_memory
        return self

    def __exit__(self, *exc):
        self.mm.get_total_memory, self.mm.get_free_memory = self.saved
        self.mm.unload_all_models()
        self.mm.soft_empty_cache()
        if self.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)


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


def check_precision(pack, mm, meter, folder: Path, precision: str, args, deadline: float) -> None:
    device = torch.device(args.device)
    store = torch.device("cpu")
    if precision in ("nf4", "int8") and importlib.util.find_spec("bitsandbytes") is None:
        print_row([precision, "-", "-", "skipped: bitsandbytes is not installed (carry its wheel)"])
        return
    try:
        handle, build_s = make_handle(pack, folder, precision, device, store, args.seed)
    except (RuntimeError, MemoryError, ValueError) as exc:
        print_row([precision, "-", "build", f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"])
        return
    budgets = args.budgets if device.type == "cuda" else [None]
    for gib in budgets:
        with Budget(mm, device, gib):
            for mode, call in run_modes(pack, handle, args):
                label = f"{gib:g} GB" if gib is not None else "host"
                if time.monotonic() > deadline:
                    print_row([precision, label, mode, "skipped: --max-minutes reached"])
                    continue
                try:
                    row = measure(call, meter, device)
                except (RuntimeError, MemoryError, ValueError) as exc:  # an OOM is reported as one
                    print_row([precision, label, mode, f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"])
                    continue
                print_row([precision, label, mode, f"{row['peak']:.2f}", f"{row['s_per_step']:.3f}",
                           f"{row['streamed']:.2f}", f"{row['load_s']:.2f}", f"{build_s:.1f}", "ok"])
    del handle
    mm.unload_all_models()
    gc.collect()  # the model of this precision must be gone before the next one is built
    mm.soft_empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", required=True, help="ComfyUI source folder or its .tar.gz")
    parser.add_argument("--device", default="cuda", help="cuda[:N] or cpu")
    parser.add_argument("--dims", default="real", choices=["real", "small", "tiny"])
    parser.add_argument("--precisions", default="bf16,fp8_e4m3fn,int8,nf4")
    parser.add_argument("--budgets", default="12,16,24", help="GB (GiB) budgets, CUDA only")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (steps - 1 evaluations)")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024 on CUDA, 256 on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=7.5)
    args = parser.parse_args()
    deadline = time.monotonic() + 60 * args.max_minutes
    args.budgets = [float(b) for b in args.budgets.split(",") if b]
    args.size = args.size or (1024 if args.device.startswith("cuda") else 256)
    root = comfyui_root(args.comfyui)
    pack = import_comfy_and_pack(root, "cpu" if args.device == "cpu" else "cuda")
    import comfy.model_management as mm
    import comfy.utils

    from bagel_model.testing import write_test_folder

    folder, _ = write_test_folder(Path(tempfile.mkdtemp()) / f"BAGEL-random-{args.dims}", args.dims,
                                  root / "comfy" / "text_encoders" / "qwen25_tokenizer")
    meter = Meter(mm, comfy.utils)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"gpu_check: {name}, torch {torch.__version__}, ComfyUI {root}, dims {args.dims}, {args.size}², "
          f"{args.steps} steps, {args.tokens} tokens; random weights (timings and memory, not quality)")
    print_row(["precision", "budget", "mode", "peak GiB", "s/step", "GB streamed/step", "load s", "build s",
               "status"])
    for precision in args.precisions.split(","):
        check_precision(pack, mm, meter, folder, precision, args, deadline)


if __name__ == "__main__":
    main()
