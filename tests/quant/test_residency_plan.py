"""The estimated denoise residency at real dims: the gen expert fills the budget first, the und expert what is
left, everything not resident is streamed, and the table prints one labelled row per combination."""
import pytest

from bagel_model.checkpoint.memory import GiB
from bagel_model.checkpoint.residency import denoise_residency, group_bytes, residency_table
from bagel_model.config import BagelConfig

REAL = BagelConfig()


@pytest.mark.parametrize("precision", ["bf16", "int8", "nf4"])
def test_gen_expert_first_then_und_and_the_rest_streams(precision):
    sizes = group_bytes(REAL, precision)
    previous = None
    for budget in (8, 12, 16, 24, 48):
        plan = denoise_residency(REAL, precision, budget * GiB, "t2i")
        for group in ("gen", "und"):
            assert plan.resident[group] + plan.streamed[group] == sizes[group]
        if plan.resident["und"] > 0:
            assert plan.streamed["gen"] == 0  # und only gets what the whole gen expert leaves
        if previous is not None:
            assert plan.streamed_per_step <= previous.streamed_per_step
        previous = plan
    assert previous.streamed_per_step == 0  # 48 GiB holds both experts in every precision


def test_bf16_on_24_gib_keeps_the_gen_expert_and_streams_part_of_und():
    plan = denoise_residency(REAL, "bf16", 24 * GiB, "t2i")
    assert plan.streamed["gen"] == 0 and 0 < plan.streamed["und"] < group_bytes(REAL, "bf16")["und"]
    one_branch_at_a_time = denoise_residency(REAL, "bf16", 24 * GiB, "t2i", batch_cfg=False)
    assert one_branch_at_a_time.calls_per_step == 2
    assert one_branch_at_a_time.streamed_per_step > plan.streamed_per_step


def test_table_rows_are_labelled_estimated():
    rows = residency_table(REAL, ["bf16", "nf4"], (8, 24), tasks=("t2i",))
    assert "ESTIMATED" in rows[0] and len(rows) == 1 + 2 * 2
    assert rows[1].startswith("bf16") and "GiB" in rows[1]


def test_auto_rule_reports_the_residency_tables_streamed_bytes():
    from bagel_model.checkpoint.auto_precision import DeviceMemory, choose_precision
    from bagel_model.checkpoint.residency import COMFY_MIN_INFERENCE, COMFY_RESERVE

    for card in (8, 12, 16, 24):
        budget = int((card - 0.4) * GiB)  # bench/vram_table.py's card budget
        choice = choose_precision(REAL, DeviceMemory(budget, COMFY_MIN_INFERENCE + COMFY_RESERVE, streaming=True))
        for option in choice.options:
            if option.verdict == "fits":
                continue
            plan = denoise_residency(REAL, option.precision, budget, "t2i")
            assert option.streamed_bytes == plan.streamed_per_step, (card, option.precision)
