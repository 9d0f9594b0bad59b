"""Seconds per denoise step of BAGEL through ComfyUI's own sampling, against the pack's Text to Image node.

Drives ComfyUI's node classes in this process (ComfyUI from --comfyui, the pack loaded by ComfyUI's custom-node
loader, as in the tests), on a random checkpoint of a preset (default `small`, 256²), and times:

  t2i node         BagelMoTTextToImage
  custom + BAGEL   SamplerCustomAdvanced(BagelMoTNoise, BagelMoTGuider, KSamplerSelect euler, BagelMoTSigmas)
  custom + CFG     the same with stock CFGGuider (positive prompt / empty prompt: prefixes of different lengths)
  ksampler + CFG   stock KSampler (euler, simple) on the loader's model, stock CFG
  edit: BAGEL      SamplerCustomAdvanced with BagelMoTGuider, three branches (prompt+image / image / prompt)
  edit: DualCFG    the same three contexts through stock DualCFGGuider (nested)

Every path runs the same guidance work per step (cfg 4, interval 0-1, so two branches every step for text to image,
three for the edit). A step's cost is timed inside the denoise loop, between the progress updates of its first
and last step, so the prefill, the VAE and model loads are left out. Rounds alternate the paths and the fastest
round counts, because other processes may share the CPU; CPU seconds of this process are printed beside wall
seconds (the steadier number on a shared machine).

Usage: python bench/bench_comfy_sampling.py --comfyui /path/to/ComfyUI [--preset small] [--size 256]
                                             [--steps 15] [--rounds 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = "A lighthouse on a rocky coast at sunset, oil painting"
EDIT_PROMPT = "Make the sky stormy and add a red boat"
SEED = 0
CFG = 4.0


def load_comfy(comfyui: Path):
    """ComfyUI's nodes module with the pack loaded through ComfyUI's own loader (CPU, as `main.py --cpu`)."""
    sys.path.insert(0, str(comfyui))  # ComfyUI's `nodes` must win over this repository's `nodes/` package
    sys.path.append(str(REPO_ROOT))
    from comfy.cli_args import args

    args.cpu = True
    import nodes

    if not asyncio.run(nodes.load_custom_node(str(REPO_ROOT))):
        raise SystemExit(f"ComfyUI at {comfyui} could not import the pack from {REPO_ROOT} (see the log above).")
    return nodes


def call(node_class, **inputs) -> tuple:
    """Runs a node class the way ComfyUI would: V3 nodes (classmethod execute) and V1 nodes (FUNCTION)."""
    if hasattr(node_class, "define_schema"):
        return tuple(node_class.execute(**inputs).result)
    return tuple(getattr(node_class(), node_class.FUNCTION)(**inputs))


class Paths:
    """The graphs to time, each as a function of the number of BAGEL timesteps (steps − 1 model steps)."""

    def __init__(self, comfy_nodes, checkpoint: Path, precision: str, size: int):
        import folder_paths
        from comfy_extras import nodes_custom_sampler as custom
        from comfy_extras.nodes_sd3 import EmptySD3LatentImage

        self.comfy, self.custom, self.size = comfy_nodes, custom, size
        self.ours = comfy_nodes.NODE_CLASS_MAPPINGS
        folder_paths.add_model_folder_path("bagel", str(checkpoint.parent))
        self.bagel, self.vae, self.model, self.clip = call(
            self.ours["BagelMoTModelLoader"], model_folder=checkpoint.name, precision=precision,
            download_if_missing=False)[:4]
        self.positive = self.encode(PROMPT)
        self.negative = self.encode("")
        self.latent = call(EmptySD3LatentImage, width=size, height=size, batch_size=1)[0]
        self.sampler = call(custom.KSamplerSelect, sampler_name="euler")[0]
        self.noise = call(self.ours["BagelMoTNoise"], seed=SEED)[0]
        self.edit_image, self.edit_latent, self.edit_conds = None, None, None

    def encode(self, text: str):
        return call(self.comfy.CLIPTextEncode, clip=self.clip, text=text)[0]

    def decode(self, latent: dict):
        return call(self.comfy.VAEDecode, samples=latent, vae=self.vae)[0]

    def bagel_guider(self, positive, negative, img_scale=1.0, without_images=None, renorm_type="global"):
        inputs = dict(model=self.model, positive=positive, negative=negative, cfg_text_scale=CFG,
                      cfg_img_scale=img_scale, cfg_interval_start=0.0, cfg_interval_end=1.0, cfg_renorm_min=0.0,
                      cfg_renorm_type=renorm_type)
        if without_images is not None:
            inputs["without_images"] = without_images
        return call(self.ours["BagelMoTGuider"], **inputs)[0]

    def custom_sample(self, guider, steps: int, latent=None):
        sigmas = call(self.ours["BagelMoTSigmas"], steps=steps, timestep_shift=3.0)[0]
        out = call(self.custom.SamplerCustomAdvanced, noise=self.noise, guider=guider, sampler=self.sampler,
                   sigmas=sigmas, latent_image=latent or self.latent)[0]
        return self.decode(out)

    # ---- the timed paths -------------------------------------------------------------------------------

    def context_lengths(self, edit: bool) -> str:
        """Token lengths of the branches' contexts, as the core builds them (what the stock guiders cannot
        batch when they differ)."""
        from PIL import Image

        builder = self.bagel.pipeline.builder
        if not edit:
            cond = builder.build([PROMPT], None, use_vae=True, generator=None)
            return f"prompt {cond.gen.length} tokens, empty prompt {cond.cfg_text.length} tokens"
        pixels = (self.edit_image[0].numpy() * 255).astype("uint8")
        cond = builder.build([Image.fromarray(pixels), EDIT_PROMPT], None, use_vae=True,
                             generator=torch.Generator().manual_seed(SEED))
        without_images = builder.image_cfg_context(cond)
        return (f"prompt + image {cond.gen.length} tokens, image only {cond.cfg_text.length}, "
                f"prompt only {without_images.length}")

    def t2i_node(self, steps: int):
        return call(self.ours["BagelMoTTextToImage"], bagel_model=self.bagel, prompt=PROMPT, width=self.size,
                    height=self.size, seed=SEED, batch_size=1, steps=steps, cfg_text_scale=CFG, cfg_img_scale=1.0,
                    cfg_interval_start=0.0, cfg_interval_end=1.0, timestep_shift=3.0, cfg_renorm_min=0.0,
                    cfg_renorm_type="global")[0]

    def custom_bagel(self, steps: int):
        return self.custom_sample(self.bagel_guider(self.positive, self.negative), steps)

    def custom_stock_cfg(self, steps: int):
        guider = call(self.custom.CFGGuider, model=self.model, positive=self.positive, negative=self.negative,
                      cfg=CFG)[0]
        return self.custom_sample(guider, steps)

    def ksampler_stock_cfg(self, steps: int):
        out = call(self.comfy.KSampler, model=self.model, seed=SEED, steps=steps - 1, cfg=CFG, sampler_name="euler",
                   scheduler="simple", positive=self.positive, negative=self.negative, latent_image=self.latent,
                   denoise=1.0)[0]
        return self.decode(out)

    def prepare_edit(self) -> None:
        """The edit's contexts: full (prompt + image), without the text (image), without the images (prompt)."""
        ramp = torch.linspace(0, 1, self.size)
        self.edit_image = torch.stack([ramp[None, :].expand(self.size, -1), ramp[:, None].expand(-1, self.size),
                                       torch.full((self.size, self.size), 0.3)], dim=-1)[None]
        context = self.ours["BagelMoTContextImages"]
        full = call(context, conditioning=self.encode(EDIT_PROMPT), image=self.edit_image)[0]
        no_text = call(context, conditioning=self.negative, image=self.edit_image)[0]
        self.edit_conds = (full, no_text, self.encode(EDIT_PROMPT))
        self.edit_latent = call(self.comfy.VAEEncode, pixels=self.edit_image, vae=self.vae)[0]

    def edit_bagel(self, steps: int):
        full, no_text, no_images = self.edit_conds
        guider = self.bagel_guider(full, no_text, img_scale=2.0, without_images=no_images, renorm_type="global")
        return self.custom_sample(guider, steps, self.edit_latent)

    def edit_dual_cfg(self, steps: int):
        full, no_text, no_images = self.edit_conds
        guider = call(self.custom.DualCFGGuider, model=self.model, cond1=full, cond2=no_text, negative=no_images,
                      cfg_conds=CFG, cfg_cond2_negative=2.0, style="nested")[0]
        return self.custom_sample(guider, steps, self.edit_latent)


class StepClock:
    """Wall and CPU time at every progress update (one per denoise step on every path timed here: the pack's
    node reports its steps, ComfyUI's samplers theirs), so a step's cost excludes the prefill, the VAE and any
    model (re)load before the loop."""

    def __init__(self):
        import comfy.utils

        self.marks: list[tuple[float, float]] = []
        self._bar, self._original = comfy.utils.ProgressBar, comfy.utils.ProgressBar.update_absolute

    def __enter__(self):
        clock, original = self, self._original

        def update_absolute(bar, value, total=None, preview=None):
            clock.marks.append((time.perf_counter(), time.process_time()))
            return original(bar, value, total, preview)

        self._bar.update_absolute = update_absolute
        return self

    def __exit__(self, *exc):
        self._bar.update_absolute = self._original

    def per_step(self) -> tuple[float, float]:
        """(wall, CPU) seconds per step between the first and the last step's update."""
        if len(self.marks) < 3:
            raise RuntimeError(f"saw {len(self.marks)} progress updates; run at least 3 timesteps")
        (wall0, cpu0), (wall1, cpu1) = self.marks[0], self.marks[-1]
        steps = len(self.marks) - 1
        return (wall1 - wall0) / steps, (cpu1 - cpu0) / steps


def timed(run, steps: int) -> tuple[float, float]:
    with StepClock() as clock:
        run(steps)
    if len(clock.marks) != steps - 1:  # another progress bar in the run would skew the per-step time
        raise RuntimeError(f"expected {steps - 1} progress updates (one per model step), saw {len(clock.marks)}")
    return clock.per_step()


def measure(paths: dict, steps: int, rounds: int) -> dict:
    """{label: (wall s/step, CPU s/step)}: the fastest round of each path."""
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in paths}
    for round_index in range(rounds):
        for label, run in paths.items():
            runs[label].append(timed(run, steps))
            wall, cpu = runs[label][-1]
            print(f"  round {round_index + 1}: {label}: {wall:.3f} s/step wall, {cpu:.3f} s/step CPU",
                  file=sys.stderr, flush=True)
    return {label: (min(w for w, _ in values), min(c for _, c in values)) for label, values in runs.items()}


def report(title: str, results: dict, base: str) -> None:
    print(f"\n{title}")
    print(f"{'path':28s} {'s/step':>8s} {'CPU s/step':>10s} {'CPU vs ' + base:>22s}")
    for label, (wall, cpu) in results.items():
        print(f"{label:28s} {wall:8.3f} {cpu:10.3f} {cpu / results[base][1]:21.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="a ComfyUI source folder")
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--checkpoint", help="reuse this checkpoint folder instead of making a random one")
    parser.add_argument("--precision", default="auto", help="the loader's precision choice")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=15, help="BAGEL timesteps per run (steps - 1 model steps)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: less disturbed by a shared CPU)")
    parser.add_argument("--skip-edit", action="store_true")
    parser.add_argument("--only", action="append",
                        help="time only the text-to-image paths whose label contains this (repeatable)")
    args = parser.parse_args()
    if not args.comfyui or not (Path(args.comfyui) / "main.py").is_file():
        parser.error(f"--comfyui (or COMFYUI_PATH) must be a ComfyUI source folder with main.py, got {args.comfyui!r}")
    torch.set_num_threads(args.threads)
    comfy_nodes = load_comfy(Path(args.comfyui).resolve())
    from bagel_model import make_test_checkpoint

    checkpoint = Path(args.checkpoint) if args.checkpoint else Path(
        make_test_checkpoint(Path(tempfile.mkdtemp()) / f"BAGEL-{args.preset}", args.preset, seed=0))
    paths = Paths(comfy_nodes, checkpoint, args.precision, args.size)
    import comfyui_version

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); ComfyUI {comfyui_version.__version__}; preset "
          f"{args.preset if not args.checkpoint else checkpoint}, precision {args.precision}, {args.size}x{args.size}; "
          f"{args.steps} timesteps, cfg {CFG}, interval 0-1; {args.rounds} alternating rounds")
    t2i = {"t2i node": paths.t2i_node, "custom + BAGEL guider": paths.custom_bagel,
           "custom + stock CFGGuider": paths.custom_stock_cfg, "ksampler + stock CFG": paths.ksampler_stock_cfg}
    if args.only:
        t2i = {label: run for label, run in t2i.items() if any(part in label for part in args.only)}
    for run in t2i.values():  # warm up kernels and the model's first load
        run(3)
    print(f"text to image contexts: {paths.context_lengths(edit=False)}")
    report("Text to image (two branches per step)", measure(t2i, args.steps, args.rounds), "t2i node")
    if not args.skip_edit:
        paths.prepare_edit()
        print(f"\nedit contexts: {paths.context_lengths(edit=True)}")
        edit = {"edit: BAGEL guider": paths.edit_bagel, "edit: stock DualCFGGuider": paths.edit_dual_cfg}
        for run in edit.values():
            run(3)
        report("Edit (three branches per step, prefixes of different lengths)",
               measure(edit, args.steps, args.rounds), "edit: BAGEL guider")


if __name__ == "__main__":
    main()
