"""What the demo changes in a workflow to run it on the random demo checkpoint in about a minute on a CPU, and the
words that say what it ran. Both go by input names (width, height, steps, output_size, max_new_tokens, ...), for
every node of the API prompt, the pack's and ComfyUI's own (EmptySD3LatentImage, KSampler, ...), so a new
workflow needs no change here; the report is read from the prompt as it was submitted."""
import copy
from pathlib import Path

from PIL import Image

# Upper limits on the demo checkpoint: a CPU run of each bundled workflow stays near a minute (README, set-up).
DEMO_LIMITS = {"width": 256, "height": 256, "steps": 10, "max_new_tokens": 48, "max_think_tokens": 48}
# An edit's own size choices (native, match_input) follow the input image (768x768 for ComfyUI's example.png):
# the demo generates at width x height instead.
SIZE_CHOICE, SIZE_CHOICE_DEMO = "output_size", "custom"
TOKEN_INPUTS = ("max_new_tokens", "max_think_tokens")
REPORTED = ("image", "output_size", "width", "height", "steps", *TOKEN_INPUTS)
# Input images (LoadImage's `image`, a file in ComfyUI's input folder) larger than this are replaced by a copy
# scaled down into a sub-folder: an edit's or a question's cost is mostly its input image's tokens.
IMAGE_SIDE_LIMIT = 256


def _literal(inputs: dict, name: str):
    value = inputs.get(name)
    return None if isinstance(value, list) else value  # a list is a link


def lower_for_demo(prompt: dict, object_info: dict) -> dict:
    """A copy of the API ``prompt`` with every node's sizes, steps and token budgets at most DEMO_LIMITS."""
    lowered = copy.deepcopy(prompt)
    for node in lowered.values():
        inputs = node["inputs"]
        for name, limit in DEMO_LIMITS.items():
            value = _literal(inputs, name)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                inputs[name] = limit
        if _literal(inputs, SIZE_CHOICE) not in (None, SIZE_CHOICE_DEMO) and \
                SIZE_CHOICE_DEMO in _choices(object_info, node["class_type"], SIZE_CHOICE):
            inputs[SIZE_CHOICE] = SIZE_CHOICE_DEMO
    return lowered


def shrink_input_images(prompt: dict, input_dir: Path, subfolder: str) -> None:
    """Points every literal ``image`` file input larger than IMAGE_SIDE_LIMIT at a scaled-down copy written to
    ``input_dir/subfolder`` (the original file is left as it is)."""
    for node in prompt.values():
        name = _literal(node["inputs"], "image")
        source = input_dir / name if isinstance(name, str) else None
        if source is None or not source.is_file():
            continue
        with Image.open(source) as picture:
            if max(picture.size) <= IMAGE_SIDE_LIMIT:
                continue
            # Alpha is Load Image's mask (the inpainting workflow's): keep it.
            small = picture.convert("RGBA" if "A" in picture.getbands() else "RGB")
            small = small.resize(_demo_size(small.size), Image.Resampling.LANCZOS)
        target = input_dir / subfolder / f"{Path(name).stem}-{small.width}x{small.height}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        small.save(target)
        node["inputs"]["image"] = f"{subfolder}/{target.name}"


def _demo_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled to fit IMAGE_SIDE_LIMIT with sides rounded down to multiples of 16: a latent BAGEL's MODEL
    denoises (VAE Encode, then KSampler) must be a whole number of 2x2 patches of 8-pixel cells."""
    scale = IMAGE_SIDE_LIMIT / max(size)
    return tuple(max(16, int(side * scale) // 16 * 16) for side in size)


def _choices(object_info: dict, class_type: str, name: str) -> list:
    inputs = object_info.get(class_type, {}).get("input", {})
    spec = {**inputs.get("required", {}), **inputs.get("optional", {})}.get(name)
    if not spec:
        return []
    if isinstance(spec[0], list):
        return spec[0]
    return (spec[1] if len(spec) > 1 else {}).get("options", [])  # COMBO spelled as in newer ComfyUI


def describe(inputs: dict) -> str:
    """'output_size custom, 256x256, 10 steps, at most 48 new tokens' from a node's literal inputs."""
    values = {name: _literal(inputs, name) for name in REPORTED}
    parts = [f"image {values['image']}"] if isinstance(values["image"], str) else []
    parts += [f"output_size {values['output_size']}"] if values["output_size"] is not None else []
    size_used = values["output_size"] in (None, SIZE_CHOICE_DEMO)  # native/match_input ignore width x height
    if size_used and values["width"] is not None and values["height"] is not None:
        parts.append(f"{values['width']}x{values['height']}")
    if values["steps"] is not None:
        parts.append(f"{values['steps']} steps")
    parts += [f"at most {values[name]} {'new' if name == 'max_new_tokens' else 'thinking'} tokens"
              for name in TOKEN_INPUTS if values[name] is not None]
    return ", ".join(parts)


def _title(node_id: str, node: dict) -> str:
    title = node.get("_meta", {}).get("title") or node["class_type"]
    return f"{title} (node {node_id})"


def what_ran(submitted: dict, original: dict) -> list[str]:
    """One line per node with sizes, steps or token budgets: what it ran with, and what the workflow file has
    where the demo changed it."""
    lines = []
    for node_id, node in submitted.items():
        ran = describe(node["inputs"])
        if not ran:
            continue
        shipped = describe(original[node_id]["inputs"])
        change = f" (the workflow file has {shipped}; lowered for the demo)" if shipped != ran else ""
        lines.append(f"{_title(node_id, node)}: {ran}{change}")
    return lines


def text_cap(submitted: dict) -> int | None:
    """The largest token budget of the submitted text nodes, None when no node has one."""
    budgets = [value for node in submitted.values() for name in TOKEN_INPUTS
               if isinstance(value := _literal(node["inputs"], name), int)]
    return max(budgets) if budgets else None
