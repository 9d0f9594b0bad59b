"""The bundled workflows and the small settings that make them run in seconds on a tiny checkpoint."""
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_DIR = REPO_ROOT / "workflows"
WORKFLOW_NAMES = sorted(path.stem for path in WORKFLOW_DIR.glob("*.json"))

# Widget values lowered for speed, on the pack's nodes and on the stock nodes that sample or size a BAGEL
# latent in the sampling workflows; everything else runs as shipped.
FAST_WIDGETS = {"steps": 3, "width": 64, "height": 64, "max_new_tokens": 8, "max_think_tokens": 8}
LOWERED_STOCK_NODES = ["KSampler", "EmptySD3LatentImage"]

# Sizes the SaveImage nodes must produce with FAST_WIDGETS and the 96x64 example image:
# text-to-image honours width x height; edit "native" follows BAGEL's resize rule
# (a 3:2 input becomes 768x512, bagel-spec §5.2); "match_input" returns the input size
# (the chain workflow scales the input to 512x512 first and batches before/after).
EXPECTED_IMAGE_SIZES = {
    "BAGEL-MoT Text to Image": [(64, 64)],
    "BAGEL-MoT Think then Generate": [(64, 64)],
    "BAGEL-MoT Image Edit": [(768, 512)],
    "BAGEL-MoT Edit with Before and After": [(512, 512), (512, 512)],
    "BAGEL-MoT Understand Image": [],
    "BAGEL-MoT Question about Two Images": [],
    # the image itself, and core VAE Decode of its LATENT upscaled 2x
    "BAGEL-MoT Live Preview and Latent Upscale": [(64, 64), (128, 128)],
    # ComfyUI's own samplers on the loader's model: an empty latent, or the input's latent (VAE Encode)
    "BAGEL-MoT Text to Image with KSampler": [(64, 64)],
    "BAGEL-MoT Image to Image with KSampler": [(96, 64)],
    "BAGEL-MoT Inpainting with KSampler": [(96, 64)],
    "BAGEL-MoT Image Edit with Custom Sampler": [(96, 64)],
}
TEXT_NODE_TYPES = {"BagelMoTUnderstand", "BagelMoTThink"}


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


def lowers_widgets(class_type: str) -> bool:
    return class_type.startswith("BagelMoT") or class_type in LOWERED_STOCK_NODES


def make_fast(prompt: dict) -> dict:
    """Lowers steps/sizes/token budgets of the pack's nodes and the sampling stock nodes in an API prompt
    (in place)."""
    for node in prompt.values():
        if lowers_widgets(node["class_type"]):
            for name, value in FAST_WIDGETS.items():
                if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                    node["inputs"][name] = value
    return prompt
