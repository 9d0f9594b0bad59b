"""Input checks of the nodes, each returning None when the value is fine, else a message that names the input and
the fix.

Checks of numbers are declared per node in INPUT_CHECKS (InputCheck rows) and applied by the input guard
(nodes/input_guard.py): on the prompt as posted, where a refused value is one error on the row's input, and again
when the node runs, for values that came through links. Text checks stay in a one-argument VALIDATE_INPUTS (a
STRING input cannot be refused by the guard) and in the node function. A value that is not known yet (a link
while the prompt is validated) is None here, and None always passes.
"""
from typing import Callable, NamedTuple

from bagel_model.generation.images import nearest_sizes

SIZE_MULTIPLE = 16
MIN_SIDE = 16
MAX_SIDE = 1024
INTERVAL_RULE = "0 <= start <= end <= 1 (the part of the schedule that uses guidance)"


class InputCheck(NamedTuple):
    """A row of a node's INPUT_CHECKS: ``problem(values)`` reads the node's input values by name and returns None
    or the message. A problem is reported on ``input`` alone, so a check that reads several inputs still gives one
    error per mistake; ``input`` must be a FLOAT, INT or BOOLEAN input (the guard can refuse only those)."""
    input: str
    problem: Callable[[dict], str | None]


def size_problem(name: str, value) -> str | None:
    if value is None:
        return None
    if not MIN_SIDE <= int(value) <= MAX_SIDE or int(value) % SIZE_MULTIPLE:
        return (
            f"{name}={value} is not supported: BAGEL generates sides that are multiples of "
            f"{SIZE_MULTIPLE} between {MIN_SIDE} and {MAX_SIDE} pixels; use "
            f"{nearest_sizes(value, SIZE_MULTIPLE, MIN_SIDE, MAX_SIDE)}."
        )
    return None


def text_problem(name: str, value) -> str | None:
    if value is None:
        return None
    if not str(value).strip():
        return f"'{name}' is empty; type what BAGEL should do."
    return None


def _fraction_problem(name: str, value) -> str | None:
    if value is None or 0.0 <= float(value) <= 1.0:
        return None
    return f"{name}={value} is outside 0..1: cfg_interval_start and cfg_interval_end must satisfy {INTERVAL_RULE}."


def interval_start_problem(start, end) -> str | None:
    """A reversed interval is reported on the start alone; an end outside 0..1 is the end's own error."""
    if start is None:
        return None
    problem = _fraction_problem("cfg_interval_start", start)
    if problem or end is None or _fraction_problem("cfg_interval_end", end) or float(start) <= float(end):
        return problem
    return (f"cfg_interval_start={start} is after cfg_interval_end={end}: they must satisfy {INTERVAL_RULE}; "
            f"lower cfg_interval_start or raise cfg_interval_end.")


def size_checks(applies: Callable[[dict], bool] = lambda values: True) -> tuple[InputCheck, ...]:
    """width and height, each on its own input; ``applies(values)`` False skips them (Edit's non-custom sizes)."""
    def check(name: str) -> InputCheck:
        return InputCheck(name, lambda values: size_problem(name, values.get(name)) if applies(values) else None)
    return check("width"), check("height")


INTERVAL_CHECKS = (
    InputCheck("cfg_interval_start",
               lambda values: interval_start_problem(values.get("cfg_interval_start"), values.get("cfg_interval_end"))),
    InputCheck("cfg_interval_end",
               lambda values: _fraction_problem("cfg_interval_end", values.get("cfg_interval_end"))),
)


def first_problem(*problems: str | None) -> str | bool:
    """VALIDATE_INPUTS result: True, or the first message."""
    for problem in problems:
        if problem:
            return problem
    return True


def raise_if_problem(*problems: str | None) -> None:
    """Run-time twin of first_problem for values that arrived through links."""
    for problem in problems:
        if problem:
            raise ValueError(problem)
