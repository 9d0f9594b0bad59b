"""Checks a vLLM-Omni BAGEL server end to end with the pack's own remote client.

    python tools/check_remote.py http://gpu-box:8091 [--size 256] [--steps 12] [--out check_out/]

Runs every mode the nodes use (text to image, think + text to image, edit at native and custom size,
understand, understand with think, think, two concurrent requests), then probes which settings change the
image (same seed twice, another seed, timestep_shift, cfg_text_scale), because vLLM-Omni versions differ in
what they read. The API key, if the server needs one, is read from BAGEL_MOT_API_KEY. Exit status: 0 when
every mode passed, 1 when one failed, 2 when the server could not be used at all.
"""
import argparse
import os
import sys
import time
from pathlib import Path

from PIL import Image, ImageChops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bagel_model.remote import (SCHEMA_VERSION, BagelRemoteError, RemoteBagelClient,  # noqa: E402
                                RemoteConnectionError)

API_KEY_ENV = "BAGEL_MOT_API_KEY"


class Checks:
    def __init__(self, out_dir: Path | None):
        self.failed = 0
        self.out_dir = out_dir
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)

    def run(self, name, check):
        start = time.perf_counter()
        try:
            detail = check()
        except RemoteConnectionError:
            raise
        except (BagelRemoteError, AssertionError) as exc:
            self.failed += 1
            print(f"FAIL {name}: {exc}", flush=True)
            return None
        print(f"PASS {name}: {detail} ({time.perf_counter() - start:.1f} s)", flush=True)
        return detail

    def save(self, name: str, image: Image.Image) -> None:
        if self.out_dir:
            image.save(self.out_dir / f"{name}.png")


def same(first: Image.Image, second: Image.Image) -> bool:
    return first.size == second.size and ImageChops.difference(first, second).getbbox() is None


def image_modes(client, checks, size, steps):
    made = {}

    def text_to_image():
        result = client.generate_image("a red fox in the snow, photo", width=size, height=size, steps=steps, seed=1)
        image = made["t2i"] = result.images[0]
        assert image.size == (size, size), f"asked for {size}x{size}, got {image.size[0]}x{image.size[1]}"
        checks.save("text_to_image", image)
        return f"{image.size[0]}x{image.size[1]} PNG"

    def think_text_to_image():
        result = client.generate_image("a lighthouse at dusk", width=size, height=size, steps=steps, seed=2,
                                       think=True, max_think_tokens=200)
        checks.save("think_text_to_image", result.images[0])
        plan = f"plan of {len(result.thinking)} characters" if result.thinking else "no plan text returned"
        return f"{result.images[0].size[0]}x{result.images[0].size[1]} PNG, {plan}"

    def edit_native():
        source = made.get("t2i") or Image.new("RGB", (size * 3 // 2, size), (40, 90, 200))
        result = client.edit_image([source], "make it night time", steps=steps, seed=3)
        checks.save("edit_native", result.images[0])
        return f"input {source.size[0]}x{source.size[1]} -> {result.images[0].size[0]}x{result.images[0].size[1]}"

    def edit_custom():
        source = made.get("t2i") or Image.new("RGB", (size, size), (40, 90, 200))
        wanted = (size, size // 2)
        result = client.edit_image([source], "add a red hat", steps=steps, seed=4, output_size=wanted)
        assert result.images[0].size == wanted, f"asked for {wanted}, got {result.images[0].size}"
        return f"{wanted[0]}x{wanted[1]} as asked"

    checks.run("text to image", text_to_image)
    checks.run("think + text to image", think_text_to_image)
    checks.run("edit (native size)", edit_native)
    checks.run("edit (custom size)", edit_custom)
    return made.get("t2i") or Image.new("RGB", (size, size), (200, 60, 40))


def text_modes(client, checks, picture):
    def understand():
        answer = client.understand([picture], "Describe this image in one sentence.", max_new_tokens=64).answer
        assert answer.strip(), "empty answer"
        return repr(answer[:80])

    def understand_think():
        result = client.understand([picture], "What is in the image?", think=True, max_new_tokens=256)
        assert result.text.strip(), "empty answer"
        split = "reasoning and answer split" if result.thinking else "no <think> reasoning in the text"
        return f"{split}; answer {result.answer[:60]!r}"

    def think():
        plan = client.think("a cat wearing a tiny crown", max_think_tokens=200).thinking
        assert plan.strip(), "empty plan"
        return f"plan of {len(plan)} characters"

    checks.run("understand", understand)
    checks.run("understand + think", understand_think)
    checks.run("think (plan)", think)


def concurrency(client, checks, size, steps):
    def two_at_once():
        jobs = [dict(prompt="a blue bird", width=size, height=size, steps=steps, seed=seed) for seed in (5, 6)]
        results = client.run_concurrently("generate_image", jobs)
        assert all(result.images for result in results)
        return "2 requests sent side by side, both answered"

    checks.run("concurrent requests", two_at_once)


def probes(client, size, steps):
    """Which settings change the image: printed as NOTE lines, never a failure."""
    def image(**settings):
        return client.generate_image("a green apple on a table", width=size, height=size, steps=steps,
                                     **{"seed": 7, **settings}).images[0]

    base = image()
    if not same(base, image()):
        print("NOTE the same request twice gave different images: the server is not deterministic, so the "
              "probes below cannot tell what it reads.")
        return
    print("NOTE same seed and settings give the same image (deterministic).")
    for label, settings in (("seed", dict(seed=8)), ("timestep_shift", dict(timestep_shift=1.0)),
                            ("cfg_text_scale", dict(cfg_text_scale=1.0)), ("cfg_renorm_min", dict(cfg_renorm_min=1.0))):
        verdict = "ignores" if same(base, image(**settings)) else "honours"
        print(f"NOTE the server {verdict} {label} (changed {label} -> {'same' if verdict == 'ignores' else 'other'} "
              "image).", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server's root URL, e.g. http://gpu-box:8091")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 16)")
    parser.add_argument("--steps", type=int, default=12, help="denoising steps per image")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one answer")
    parser.add_argument("--out", type=Path, help="folder for the generated images")
    parser.add_argument("--no-probes", action="store_true", help="skip the which-settings-are-read probes")
    args = parser.parse_args(argv)
    try:
        client = RemoteBagelClient(args.url, api_key=os.environ.get(API_KEY_ENV) or None, timeout=args.timeout,
                                   max_concurrent_requests=2)
        print(f"Checking {client.server} against the {SCHEMA_VERSION} schema", flush=True)
        checks = Checks(args.out)
        picture = image_modes(client, checks, args.size, args.steps)
        text_modes(client, checks, picture)
        concurrency(client, checks, args.size, args.steps)
        if not args.no_probes and not checks.failed:
            probes(client, args.size, args.steps)
    except (RemoteConnectionError, ValueError) as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    print("All modes passed." if not checks.failed else f"{checks.failed} mode(s) failed.")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
