"""ESTIMATED VRAM table for the README: per precision x mode x card size, what stays resident and what
ComfyUI streams per step, which cards each combination targets, and what ``precision=auto`` picks.

    python bench/vram_table.py [--cards 8,12,16,24]

Nothing is measured here (bench/gpu_check.py measures). From the configs of the real BAGEL-7B-MoT:
* T2I / edit: ``bagel_model.checkpoint.residency.denoise_residency`` (the phase-aware plan of the ComfyUI nodes: during
  denoising the gen expert is made resident first, the und expert gets what is left, ViT and autoencoder are
  offloaded; ComfyUI keeps the call's working memory and its reserve free);
* understand: the decoding phase uses only the und expert and ``lm_head`` (the token table is looked up row by
  row where it lives), streamed per token;
* a card of N GiB shows ComfyUI about N - 0.4 GiB;
* "targets": at least half of the phase's weights stay resident (the limit of the ``auto`` rule).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bagel_model.checkpoint.auto_precision import (AUTO_ORDER, MAX_STREAMED_FRACTION, DeviceMemory,  # noqa: E402
                                                   choose_precision)
from bagel_model.checkpoint.memory import GiB, estimate_memory  # noqa: E402
from bagel_model.config import BagelConfig  # noqa: E402
from bagel_model.checkpoint.residency import (COMFY_MIN_INFERENCE, COMFY_RESERVE, denoise_residency,  # noqa: E402
                                              group_bytes)

CARDS = {8: "RTX 4060 / 3070 / 2080", 12: "RTX 3060 12 GB / 4070 / 3080 12 GB",
         16: "RTX 4060 Ti 16 GB / 4070 Ti Super / 4080 / 5080", 24: "RTX 3090 / 4090 / A5000"}
VISIBLE_LOSS_GIB = 0.4  # total memory torch reports below the nominal card size (driver, context)


def budget_bytes(card_gib: int) -> int:
    return int((card_gib - VISIBLE_LOSS_GIB) * GiB)


def denoise_cell(config, precision: str, task: str, card: int) -> tuple[str, bool]:
    plan = denoise_residency(config, precision, budget_bytes(card), task, 1024, 1024)
    if not plan.fits:
        return "working memory does not fit", False
    used = sum(plan.resident.values()) + sum(plan.streamed.values())
    resident, streamed = sum(plan.resident.values()), plan.streamed_per_step
    return f"{resident / GiB:.1f} / {streamed / GiB:.1f}", streamed <= MAX_STREAMED_FRACTION * used


def understand_cell(config, precision: str, card: int) -> tuple[str, bool]:
    estimate = estimate_memory(config, precision, "understand", 1024, 1024, input_size=(1024, 1024),
                               generated_tokens=512, _with_alternatives=False)
    working = estimate.kv_cache_bytes + estimate.activation_bytes
    room = budget_bytes(card) - max(COMFY_MIN_INFERENCE + COMFY_RESERVE, working + COMFY_RESERVE)
    if room <= 0:
        return "working memory does not fit", False
    sizes = group_bytes(config, precision)
    und = sizes["und"] + sizes["text_io"]
    resident = min(und, room)
    return f"{resident / GiB:.1f} / {(und - resident) / GiB:.1f}", und - resident <= MAX_STREAMED_FRACTION * und


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", default="8,12,16,24")
    args = parser.parse_args()
    config = BagelConfig()
    cards = [int(c) for c in args.cards.split(",")]
    print("ESTIMATED (not measured). GiB of weights resident / GiB streamed per step (understand: per token); "
          "real BAGEL-7B-MoT, CUDA, bf16 compute, ComfyUI's partial loading")
    print("\n| precision | mode | " + " | ".join(f"{c} GB" for c in cards) + " | targets |")
    print("|---|---|" + "---:|" * len(cards) + "---|")
    modes = {"T2I 1024²": lambda p, c: denoise_cell(config, p, "t2i", c),
             "edit 1024²": lambda p, c: denoise_cell(config, p, "edit", c),
             "understand (1024² image)": lambda p, c: understand_cell(config, p, c)}
    for precision in AUTO_ORDER:
        for mode, cell in modes.items():
            cells = [cell(precision, c) for c in cards]
            targets = ", ".join(f"{c} GB" for c, (_, ok) in zip(cards, cells) if ok) or f"> {cards[-1]} GB"
            print(f"| {precision} | {mode} | " + " | ".join(text for text, _ in cells) + f" | {targets} |")
    print("\n| card | e.g. | auto picks |")
    print("|---|---|---|")
    for c in cards:
        memory = DeviceMemory(budget_bytes(c), COMFY_MIN_INFERENCE + COMFY_RESERVE, streaming=True)
        choice = choose_precision(config, memory)
        print(f"| {c} GB | {CARDS.get(c, '')} | {choice.precision} ({choice.reason.split(' (')[0]}) |")


if __name__ == "__main__":
    main()
