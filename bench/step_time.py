"""One denoising step with every CFG branch on, set up the way the pipeline does it, and timed.

Shared by ``bench/profile_step.py`` and ``bench/bench_step_versions.py``. Works against any checkout of the
project: ``BAGEL_BENCH_ROOT`` (default: this checkout) is the repository whose ``bagel_model`` is imported, so the
same step can be timed on an older commit (``git worktree add ../base <commit>``) in its own process.

The step: ``denoise`` with 2 timesteps (one Euler step at t = 1, where CFG applies in both modes): text to image
runs the ``gen`` and ``cfg_text`` branches, edit ``gen``, ``cfg_text`` and ``cfg_img`` (official defaults of
each task). One LM call per branch unless ``batch_cfg`` (the CPU default is one call per branch).

As a script (one process, prints one JSON line):
    BAGEL_BENCH_ROOT=../base python bench/step_time.py --checkpoint DIR --mode t2i --compute-dtype fp32 --reps 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("BAGEL_BENCH_ROOT") or Path(__file__).resolve().parents[1]).resolve()
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bagel_model import BagelPipeline  # noqa: E402
from bagel_model.generation.denoise import denoise  # noqa: E402
from bagel_model.generation.sampler import EDIT_DEFAULTS, GENERATE_DEFAULTS, SamplerSettings  # noqa: E402

PROMPT = "A lighthouse on a rocky coast at sunset, oil painting"
EDIT_PROMPT = "Make the sky stormy and add a red boat"
MODES = ("t2i", "edit")


class StepSetup:
    """Everything one step needs: the pipeline's runtime, contexts, query, noise and settings."""

    def __init__(self, checkpoint: str | Path, mode: str, size: int, compute_dtype: str, seed: int = 0,
                 batch_cfg: bool = False):
        self.pipe = BagelPipeline.from_pretrained(checkpoint, precision="bf16", device="cpu",
                                                  compute_dtype=compute_dtype)
        self.mode, self.size, self.batch_cfg = mode, size, batch_cfg
        generator = torch.Generator("cpu").manual_seed(seed)
        builder = self.pipe.builder
        if mode == "t2i":
            defaults = GENERATE_DEFAULTS
            self.cond = builder.build([PROMPT], None, use_vae=True, generator=generator)
            width = height = size
        else:
            defaults = EDIT_DEFAULTS
            ramp = np.linspace(0, 255, size * size * 3).reshape(size, size, 3).astype(np.uint8)
            self.cond = builder.build([Image.fromarray(ramp), EDIT_PROMPT], None, use_vae=True, generator=generator)
            width, height = self.cond.image_size
        self.cfg_img = builder.image_cfg_context(self.cond) if defaults.cfg_img_scale > 1 else None
        self.query = self.pipe.runtime.generation_query(height, width)
        self.noise = torch.randn((self.query.num_tokens, self.pipe.config.patch_latent_dim), generator=generator)
        self.settings = SamplerSettings(2, defaults.cfg_text_scale, defaults.cfg_img_scale, defaults.cfg_interval,
                                        defaults.timestep_shift, defaults.cfg_renorm_min, defaults.cfg_renorm_type)

    def contexts(self) -> list:
        """The contexts the step attends to, one per branch."""
        return [c for c in (self.cond.gen, self.cond.cfg_text, self.cfg_img) if c is not None]

    def step(self) -> torch.Tensor:
        return denoise(self.pipe.runtime, self.settings, self.query, self.noise, self.cond.gen, self.cond.cfg_text,
                       self.cfg_img, batch_cfg=self.batch_cfg)

    def describe(self) -> str:
        llm = self.pipe.config.llm
        lengths = ", ".join(str(c.length) for c in self.contexts())
        return (f"{self.mode} {self.query.grid_w * 16}x{self.query.grid_h * 16} ({self.query.num_tokens} latent "
                f"tokens), context lengths {lengths}, LM hidden {llm.hidden_size} x {llm.num_hidden_layers} layers, "
                f"intermediate {llm.intermediate_size}, compute {self.pipe.compute_dtype}, "
                f"batch_cfg {self.batch_cfg}")


def time_steps(setup: StepSetup, reps: int) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of ``reps`` steps after one warm-up step."""
    setup.step()
    walls, cpus = [], []
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        setup.step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--mode", choices=MODES, default="t2i")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--compute-dtype", default="fp32", choices=["bf16", "fp32"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-cfg", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = StepSetup(args.checkpoint, args.mode, args.size, args.compute_dtype, batch_cfg=args.batch_cfg)
    walls, cpus = time_steps(setup, args.reps)
    latents = setup.step()
    print(json.dumps({"root": str(ROOT), "describe": setup.describe(), "wall": walls, "cpu": cpus,
                      "latent_sum": float(latents.double().sum()), "latent_absmax": float(latents.abs().max())}))


if __name__ == "__main__":
    main()
