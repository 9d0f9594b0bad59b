"""The transfer ledger (bagel_model/model/transfer_ledger.py) sees every weight read, for every precision.

Storage and compute placed apart on a CPU-only machine: every layer's own tensors are moved to the ``meta``
device (where nothing can be read) and the real values are served only through the layers' cast path (their
``stored`` hook, the copy standing in for the one a host would move). The flows must give the outputs of the
resident run, so no layer read a tensor around the path, and the ledger must count every read as a copy from
the storage device: per (layer kind, precision), the same bytes the resident run read in place.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from bagel_model import BagelPipeline
from bagel_model.model.ops import CastAtUse
from bagel_model.model.transfer_ledger import TransferLedger, ledger

from quant_helpers import PRECISIONS

_KIND_PRECISION = {"nf4": ("NF4Linear", "nf4"), "int8": ("Int8Linear", "int8"),
                   "fp8_e4m3fn": ("Fp8Linear", "fp8_e4m3fn")}


def flows(pipe) -> dict:
    image = Image.new("RGB", (96, 80), (200, 40, 90))
    with torch.no_grad():
        t2i = pipe.generate_image("a red cube", width=64, height=48, steps=2, seed=1)
        und = pipe.understand([image], "What is this?", max_new_tokens=3)
    return {"t2i": t2i.latents[0], "image": torch.from_numpy(np.asarray(t2i.images[0]).copy()),
            "understand": und.token_ids}


def layers_of(pipe) -> list:
    owned = lambda m: list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))  # noqa: E731
    return [m for root in (pipe.model.bagel, pipe.model.vae) for m in root.modules() if owned(m)]


def store_on_meta(module) -> None:
    """The layer's tensors go to 'meta'; ``stored`` serves CPU copies of them (the 'transferred' values)."""
    copy = {name: t.detach().clone() for name, t in
            list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))}
    module.stored = lambda name: copy.get(name)
    module.to("meta")


def test_ledger_api():
    book = TransferLedger()
    book.record("Linear", "bf16", 10, crossed_devices=True)
    book.record("Linear", "bf16", 5, crossed_devices=False)
    book.record("NF4Linear", "nf4", 7, crossed_devices=True)
    assert book.snapshot() == {("Linear", "bf16"): 10, ("NF4Linear", "nf4"): 7} and book.total() == 17
    assert book.reads() == {("Linear", "bf16"): 15, ("NF4Linear", "nf4"): 7}
    book.reset()
    assert book.snapshot() == {} and book.reads() == {} and book.total() == 0


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_read_goes_through_the_ledger_with_storage_apart_from_compute(tiny_checkpoint, precision):
    pipe = BagelPipeline.from_pretrained(tiny_checkpoint, precision=precision, device="cpu", compute_dtype="fp32")
    layers = layers_of(pipe)
    assert layers and all(isinstance(m, CastAtUse) for m in layers)
    ledger.reset()
    resident = flows(pipe)
    resident_reads = ledger.reads()
    assert ledger.snapshot() == {}  # everything on the compute device: read in place, nothing copied
    kinds = {type(m).__name__ for m in layers}
    assert {kind for kind, _ in resident_reads} == kinds  # every kind of layer reports
    if precision in _KIND_PRECISION:
        assert resident_reads[_KIND_PRECISION[precision]] > 0

    for module in layers:
        store_on_meta(module)
    ledger.reset()
    streamed = flows(pipe)
    for key, value in resident.items():
        assert (torch.equal(streamed[key], value) if isinstance(value, torch.Tensor) else streamed[key] == value), key
    assert ledger.snapshot() == ledger.reads() == resident_reads  # every read counted as a copy, same bytes

    # Control: a layer whose tensors are read around the cast path cannot run (meta holds no values).
    del layers[0].stored
    with pytest.raises((RuntimeError, NotImplementedError)):
        flows(pipe)
