"""Input checks shared by VALIDATE_INPUTS (HTTP 400 before a run) and the node functions.

Each check returns None when the value is fine, else a message that names the input and the fix.
VALIDATE_INPUTS receives linked inputs as None, so None always passes here and the node function
checks the real value again at run time.
"""
from bagel_model.generation.images import nearest_sizes

SIZE_MULTIPLE = 16
MIN_SIDE = 16
MAX_SIDE = 1024


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


def interval_problem(start, end) -> str | None:
    if start is None or end is None:
        return None
    if not 0.0 <= float(start) <= float(end) <= 1.0:
        return (
            f"cfg_interval_start={start} and cfg_interval_end={end} must satisfy "
            "0 <= start <= end <= 1 (the part of the schedule that uses guidance)."
        )
    return None


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
