"""Relative L2 of our final latents vs the golden reference (../shared/golden/tiny), per mode and CFG path.

The uncached default path must stay bit-exact for t2i and think (rel L2 0.0); run before committing core changes.
Usage: python bench/golden_exactness.py [golden_dir]
"""
import json
import sys
from pathlib import Path

from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bagel_model import BagelPipeline  # noqa: E402


def main() -> None:
    golden = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/golden/tiny"
    modes = json.loads((golden / "reference" / "reference.json").read_text())["modes"]
    pipe = BagelPipeline.from_pretrained(golden / "checkpoint", device="cpu", compute_dtype="bf16")
    for mode in ("t2i", "think", "edit"):
        s = modes[mode]["settings"]
        kwargs = dict(steps=s["num_timesteps"], cfg_text_scale=s["cfg_text_scale"], cfg_img_scale=s["cfg_img_scale"],
                      cfg_interval=tuple(s["cfg_interval"]), timestep_shift=s["timestep_shift"],
                      cfg_renorm_min=s["cfg_renorm_min"], cfg_renorm_type=s["cfg_renorm_type"], seed=s["seed"])
        ref = load_file(golden / "reference" / f"{mode}.safetensors")["latent_nchw"]
        for batch_cfg in (False, True):
            if mode == "edit":
                image = Image.open(golden / "reference" / "edit_input.png")
                res = pipe.edit_image([image], s["prompt"], batch_cfg=batch_cfg, **kwargs)
            else:
                h, w = s["image_shapes"]
                extra = dict(think=True, max_think_tokens=s["max_think_token_n"] - 1) if mode == "think" else {}
                res = pipe.generate_image(s["prompt"], width=w, height=h, batch_cfg=batch_cfg, **extra, **kwargs)
            rel = float((res.latents[0] - ref).norm() / ref.norm())
            print(f"{mode:6s} batch_cfg={batch_cfg!s:5s} latent rel L2 vs golden = {rel:.3e}")


if __name__ == "__main__":
    main()
