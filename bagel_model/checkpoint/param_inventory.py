"""Every tensor of a BAGEL checkpoint (name, shape, owning Linear), read off the skeleton built on the meta
device: the same modules the loader fills, so the memory estimate and the checkpoint keys are one description.

The memory estimate must answer before any weight is read (and for the real 29 GB model on a machine that
cannot hold it); a meta-device build allocates nothing. It is cached per config because the estimate asks for
every precision in turn.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from torch import nn

from ..config import AEConfig, BagelConfig
from .loading import build_skeleton


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    linear: str | None = None  # qualified name of the Linear this weight/bias belongs to

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_linear_weight(self) -> bool:
        return self.linear is not None and self.name.endswith(".weight")


@functools.lru_cache(maxsize=8)
def bagel_tensors(config: BagelConfig) -> tuple[TensorSpec, ...]:
    """Every tensor of ``ema.safetensors`` for this config, in the skeleton's state-dict order."""
    model, _ = build_skeleton(config)
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    specs = []
    for key, tensor in model.state_dict().items():
        owner = key.rpartition(".")[0]
        specs.append(TensorSpec(key, tuple(tensor.shape), owner if owner in linears else None))
    return tuple(specs)


@functools.lru_cache(maxsize=8)
def autoencoder_parameter_count(ae: AEConfig) -> int:
    """Parameters of the FLUX autoencoder (encoder + decoder), spec §5.4."""
    _, vae = build_skeleton(BagelConfig(ae=ae))
    return sum(tensor.numel() for tensor in vae.state_dict().values())
