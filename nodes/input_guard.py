"""Refuses bad values for every node of the pack, as one validation error that names the input, before anything
runs: NaN, +-inf and non-boolean switches for every node, and what a node declares in its INPUT_CHECKS (sizes,
cfg interval; rows of validation.InputCheck).

ComfyUI's own checks let the first kind through (0.3.64 and 0.33 alike): its min/max test is false for NaN, as
every comparison with NaN is, and it turns any value of a BOOLEAN input into bool(value) before a node's
VALIDATE_INPUTS could see it (NaN or "no" becomes True). And a VALIDATE_INPUTS message is repeated once for every
argument VALIDATE_INPUTS takes, so a check there that reads several inputs shows one mistake several times. So the
values are checked earlier, on the prompt as posted (PromptServer's on-prompt hook), against each class's
INPUT_TYPES and INPUT_CHECKS: FLOAT and INT inputs must be finite numbers, BOOLEAN inputs true or false, and each
INPUT_CHECKS row refuses the one input it names. A refused value is replaced by a RefusedValue whose conversion to
the input's type raises the message, so ComfyUI's own type check reports exactly one error for that input (type
`invalid_input_type`, our message in its details) and skips its min/max test for it; a VALIDATE_INPUTS that
would get the value is not asked about that prompt, so it never computes with it. Values that arrive through
links are checked, by the same rules, when the node runs.

`guard_nodes` is applied once, where the pack registers its nodes (nodes/__init__.py), so every node the
registry holds gets it without code of its own.
"""
import functools
import inspect
import json
import logging
import math
import sys

logger = logging.getLogger(__name__)

GUARDED_TYPES = ("FLOAT", "INT", "BOOLEAN")
_GUARDED_MARK = "_bagel_mot_input_guard"


class RefusedValue(str):
    """Stands in for a refused literal in the posted prompt: reads as the value the user sent (it is echoed back
    in ComfyUI's error response, which must stay JSON), and raises the reason when ComfyUI converts it."""

    def __new__(cls, shown: str, problem: str):
        value = super().__new__(cls, shown)
        value.problem = problem
        return value

    def _refuse(self, *_):
        raise ValueError(self.problem)

    __float__ = __int__ = __index__ = __bool__ = _refuse


@functools.cache
def input_specs(node_class) -> dict[str, tuple[str, dict]]:
    """{input name: (type, options)} of the FLOAT/INT/BOOLEAN inputs, required and optional (read once per
    class: only combo lists change while ComfyUI runs)."""
    declared = node_class.INPUT_TYPES()
    specs = {}
    for section in ("required", "optional"):
        for name, spec in (declared.get(section) or {}).items():
            kind = spec[0] if isinstance(spec, (tuple, list)) and spec else None
            if isinstance(kind, str) and kind in GUARDED_TYPES:
                specs[name] = (kind, spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    return specs


def value_problem(name: str, kind: str, options: dict, value) -> str | None:
    """None when ``value`` fits an input of type ``kind``, else the message (names the input and what it takes)."""
    default = f" (default {_shown(options['default'])})" if "default" in options else ""
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return None
        return f"{name}={_shown(value)} is not a boolean: {name} takes true or false{default}."
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None  # not a number at all: ComfyUI's own conversion names it
    if math.isfinite(number):
        return None
    what = "a whole number" if kind == "INT" else "a number"
    bounds = (f" from {options['min']} to {options['max']}" if "min" in options and "max" in options else "")
    return f"{name}={_shown(value)} is not a finite number: {name} takes {what}{bounds}{default}."


def _shown(value) -> str:
    try:
        return json.dumps(value)  # NaN, Infinity, "text", true: as the user wrote it in JSON
    except (TypeError, ValueError):
        return repr(value)


def _literal(value):
    """The value a prompt gives an input, or None for a link ([node id, output index])."""
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    return None if isinstance(value, list) else value


def _converted(kind: str, value):
    """A literal as ComfyUI hands it to the node (int()/float() for INT/FLOAT), or None where that conversion
    fails (ComfyUI's own error names the input) or the value is already refused."""
    if isinstance(value, RefusedValue):
        return None
    if kind not in ("INT", "FLOAT") or value is None:
        return value
    try:
        return int(value) if kind == "INT" else float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def check_problems(node_class, values: dict):
    """(input, message) for each input an INPUT_CHECKS row of ``node_class`` refuses, the first row's message."""
    refused = set()
    for check in getattr(node_class, "INPUT_CHECKS", ()):
        problem = None if check.input in refused else check.problem(values)
        if problem:
            refused.add(check.input)
            yield check.input, problem


def _refuse(node: dict, name: str, value, problem: str) -> None:
    logger.warning("%s: %s", node.get("class_type"), problem)
    node["inputs"][name] = RefusedValue(_shown(value), problem)


def refuse_bad_values(node_classes: dict, json_data):
    """PromptServer on-prompt hook: replaces each refused literal of the pack's nodes by a RefusedValue (first
    NaN/inf/non-booleans, then the node's INPUT_CHECKS on the values left; a link is None to them)."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    for node in (prompt.values() if isinstance(prompt, dict) else ()):
        node_class = node_classes.get(node.get("class_type")) if isinstance(node, dict) else None
        inputs = node.get("inputs") if node_class is not None else None
        if not isinstance(inputs, dict):
            continue
        specs = input_specs(node_class)
        for name, (kind, options) in specs.items():
            value = _literal(inputs.get(name))
            if name not in inputs or (value is None and kind != "BOOLEAN") or isinstance(inputs[name], list):
                continue
            problem = value_problem(name, kind, options, value)
            if problem:
                _refuse(node, name, value, problem)
        values = {name: _converted(specs.get(name, ("",))[0], _literal(raw)) for name, raw in inputs.items()}
        for name, problem in check_problems(node_class, values):
            if values.get(name) is not None:  # known now; a linked one is checked when the node runs
                _refuse(node, name, _literal(inputs[name]), problem)
    return json_data


def _skip_validation_when_refused(node_class) -> None:
    """VALIDATE_INPUTS, same signature (ComfyUI reads its arguments to decide which built-in checks to skip),
    not called with a RefusedValue: ComfyUI has already reported that input."""
    original = getattr(node_class, "VALIDATE_INPUTS", None)
    if not inspect.ismethod(original):  # none, or not a V1 classmethod: nothing to keep from a RefusedValue
        return

    def validate(cls, *args, **kwargs):
        if any(isinstance(value, RefusedValue) for value in (*args, *kwargs.values())):
            return True
        return original(*args, **kwargs)

    validate.__signature__ = inspect.signature(original.__func__)
    validate.__doc__ = original.__doc__
    node_class.VALIDATE_INPUTS = classmethod(validate)


def _called_values(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """{input name: value} of a call of the node's function (ComfyUI passes keywords; direct callers may not)."""
    try:
        bound = signature.bind_partial(None, *args, **kwargs)  # None: self, not an input
    except TypeError:
        return dict(kwargs)  # a wrong call: the function itself says what is wrong
    values = {}
    for name, value in list(bound.arguments.items())[1:]:
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            values.update(value)
        else:
            values[name] = value
    return values


def _check_when_run(node_class) -> None:
    """The node's function refuses the same values when they come through links (known only at run time)."""
    original = getattr(node_class, getattr(node_class, "FUNCTION", ""), None)
    if not callable(original):
        return
    signature = inspect.signature(original)

    def problems(args, kwargs) -> None:
        specs, values = input_specs(node_class), _called_values(signature, args, kwargs)
        for name, value in values.items():
            problem = value_problem(name, *specs[name], value) if name in specs else None
            if problem:
                raise ValueError(f"{problem} (It came through a link; fix the node that feeds '{name}'.)")
        for _, problem in check_problems(node_class, values):
            raise ValueError(problem)

    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def run(self, *args, **kwargs):
            problems(args, kwargs)
            return await original(self, *args, **kwargs)
    else:
        @functools.wraps(original)
        def run(self, *args, **kwargs):
            problems(args, kwargs)
            return original(self, *args, **kwargs)
    setattr(node_class, node_class.FUNCTION, run)


def _require_refusable_checks(node_class) -> None:
    """Each INPUT_CHECKS row must name a FLOAT, INT or BOOLEAN input: ComfyUI turns a STRING input's value into
    str(value), which a RefusedValue survives, so a refused text would pass validation unnoticed."""
    specs = input_specs(node_class)
    for check in getattr(node_class, "INPUT_CHECKS", ()):
        if check.input not in specs:
            raise TypeError(f"{node_class.__name__}.INPUT_CHECKS: '{check.input}' is not a FLOAT, INT or BOOLEAN "
                            f"input of the node; check text in a one-argument VALIDATE_INPUTS instead.")


def guard_nodes(node_classes: dict) -> None:
    """Applies the checks to every class of ``node_classes`` (once each) and, in a running ComfyUI, hooks the
    prompt handler; the hook reads ``node_classes`` at each prompt."""
    for node_class in node_classes.values():
        if not node_class.__dict__.get(_GUARDED_MARK):
            _require_refusable_checks(node_class)
            _skip_validation_when_refused(node_class)
            _check_when_run(node_class)
            setattr(node_class, _GUARDED_MARK, True)
    # A running ComfyUI has created its PromptServer before it loads custom nodes. The pack does not import
    # server.py itself: in a process without the web app (node tests, scripts) that would start importing it.
    prompt_server_class = getattr(sys.modules.get("server"), "PromptServer", None)
    server = getattr(prompt_server_class, "instance", None)
    if server is not None and not getattr(server, _GUARDED_MARK, False):
        server.add_on_prompt_handler(functools.partial(refuse_bad_values, node_classes))
        setattr(server, _GUARDED_MARK, True)
