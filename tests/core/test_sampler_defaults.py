"""Sampler defaults are defined once (generation/sampler.py); the API signatures and the CLI use them."""
import dataclasses
import inspect

import pytest

from bagel_model import BagelPipeline
from bagel_model.cli import build_parser
from bagel_model.generation.sampler import EDIT_DEFAULTS, GENERATE_DEFAULTS


@pytest.mark.parametrize("method, defaults", [("generate_image", GENERATE_DEFAULTS), ("edit_image", EDIT_DEFAULTS)])
def test_api_signature_uses_the_sampler_defaults(method, defaults):
    parameters = inspect.signature(getattr(BagelPipeline, method)).parameters
    for field in dataclasses.fields(defaults):
        assert parameters[field.name].default == getattr(defaults, field.name), field.name


@pytest.mark.parametrize("command, defaults", [("generate", GENERATE_DEFAULTS), ("edit", EDIT_DEFAULTS)])
def test_cli_uses_the_sampler_defaults(command, defaults):
    argv = [command, "--model", "m", "--prompt", "p", "--out", "o.png"] + (["--image", "x.png"] if command == "edit" else [])
    args = build_parser().parse_args(argv)
    for field in dataclasses.fields(defaults):
        value = getattr(args, field.name)
        assert (tuple(value) if field.name == "cfg_interval" else value) == getattr(defaults, field.name), field.name
