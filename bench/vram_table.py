"""ESTIMATED VRAM table for the README: per precision x mode x card size, what stays resident and what
ComfyUI streams per denoising step, and which cards each combination targets. Nothing is measured here.

    python bench/vram_table.py [--cards 8,12,16,24] [--markdown]

From the configs of the real BAGEL-7B-MoT (bagel_model.checkpoint.memory.estimate_memory) and the rule of
``precision="auto"`` (bagel_model.checkpoint.auto_precision): a card of N GiB shows ComfyUI about N - 0.4 GiB; ComfyUI keeps
0.8 GiB + 0.4 GiB (Linux) free; the call's working memory (KV cache + activation peak) comes first; weights
fill the rest and whatever does not fit is streamed, i.e. copied to the GPU on every forward (once per step
with the CFG branches batched, the CUDA default). That is an upper bound for a denoising step: ``lm_head``
and the ViT are not used while denoising, so bytes of theirs left off the GPU are not copied then.
"target" = the combination fits entirely or streams at most half of its weights (the auto rule's limit);
nf4/int8 count as streamable only when ``--bnb-streamable`` says the bitsandbytes layers are castable.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bagel_model.checkpoint.auto_precision import (AUTO_ORDER, STREAMABLE, DeviceMemory, choose_precision,  # noqa: E402
                                        evaluate_precision)
from bagel_model.config import BagelConfig  # noqa: E402
from bagel_model.checkpoint.memory import GiB  # noqa: E402

CALLS = {"T2I 1024²": {"task": "t2i", "width": 1024, "height": 1024},
         "edit 1024²": {"task": "edit", "width": 1024, "height": 1024, "input_size": (1024, 1024)},
         "understand 1024² image": {"task": "understand", "width": 1024, "height": 1024,
                                    "input_size": (1024, 1024), "generated_tokens": 512}}
CARDS = {8: "RTX 4060 / 3070 / 2080", 12: "RTX 3060 12 GB / 4070 / 3080 12 GB",
         16: "RTX 4060 Ti 16 GB / 4070 Ti Super / 4080 / 5080", 24: "RTX 3090 / 4090 / A5000"}
VISIBLE_LOSS_GIB = 0.4  # total memory torch reports below the nominal card size (driver, context)
COMFY_RESERVE = int(0.8 * GiB) + 400 * 1024 ** 2  # minimum_inference_memory() on Linux


def card_memory(gib: int) -> DeviceMemory:
    return DeviceMemory(int((gib - VISIBLE_LOSS_GIB) * GiB), COMFY_RESERVE, streaming=True)


def cell(option) -> str:
    resident = min(option.weights_bytes, max(option.resident_room_bytes, 0)) / GiB
    if option.verdict == "fits":
        return f"{resident:.1f} / 0"
    if option.resident_room_bytes <= 0:
        return "no room"
    if "cannot be streamed" in option.verdict:
        return "won't fit (full load only)"
    text = f"{resident:.1f} / {option.streamed_bytes / GiB:.1f}"
    return text if option.acceptable else text + " (over half)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cards", default="8,12,16,24")
    parser.add_argument("--bnb-streamable", action="store_true", help="nf4/int8 layers are castable")
    args = parser.parse_args()
    config = BagelConfig()
    cards = [int(c) for c in args.cards.split(",")]
    streamable = STREAMABLE | ({"nf4", "int8"} if args.bnb_streamable else set())
    print("ESTIMATED (not measured): GiB of weights resident / GiB streamed per step (understand: per token), "
          "real BAGEL-7B-MoT, CUDA, bf16 compute")
    print("| precision | mode | " + " | ".join(f"{c} GB" for c in cards) + " | targets |")
    print("|---|---|" + "---:|" * len(cards) + "---|")
    for precision in AUTO_ORDER:
        for mode, call in CALLS.items():
            options = [evaluate_precision(config, precision, card_memory(c), device="cuda", compute_dtype=None,
                                          streamable=streamable, call=call) for c in cards]
            targets = [f"{c} GB" for c, o in zip(cards, options) if o.acceptable]
            print(f"| {precision} | {mode} | " + " | ".join(cell(o) for o in options)
                  + f" | {', '.join(targets) or '> ' + str(cards[-1]) + ' GB'} |")
    print("\n| card | examples | auto picks |")
    print("|---|---|---|")
    for c in cards:
        choice = choose_precision(config, card_memory(c), streamable=streamable)
        print(f"| {c} GB | {CARDS.get(c, '')} | {choice.precision}: {choice.reason.split(' (')[0]} |")


if __name__ == "__main__":
    main()
