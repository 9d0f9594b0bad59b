"""The transfer ledger: one place that counts the weight bytes BAGEL's layers read through their cast path.

Every layer reads its stored tensors only through its cast path (``ops.CastAtUse.fetch``, the quantized
Linears' ``fetch`` of their side tensors, and the ComfyUI nodes' cast ops, which report the tensors ComfyUI's
own cast moves). Each read is reported here with the layer's kind (``Linear``, ``NF4Linear``, ``Embedding``
...) and precision (the stored format: ``bf16``, ``fp16``, ``fp32``, ``nf4``, ``int8``, ``fp8_e4m3fn``), and
counted twice:

* ``copied``: the bytes that crossed from the storage device to another device (a streamed layer: what a
  partially loaded model moves over the bus per call). This is what ``snapshot()`` returns.
* ``read``: every byte read through the path, wherever it lives (what tests use to prove that no weight is read
  around the path: a resident layer reads in place and still reports).

Usage, e.g. per denoise step::

    from bagel_model.model.transfer_ledger import ledger
    ledger.reset()
    ...  # one step
    per_kind = ledger.snapshot()        # {(kind, precision): bytes copied to another device}
    total = ledger.total()              # sum of the above

Under ComfyUI's Dynamic VRAM the weights stay on the host and ComfyUI keeps a cache of recently used layers on
the GPU that the layer cannot see; there ``copied`` counts what the layers asked ComfyUI to bring (an upper
bound of the bytes really moved).

No ComfyUI import: the nodes report into the same instance.
"""
from __future__ import annotations

Key = tuple[str, str]


class TransferLedger:
    """Byte counters per (layer kind, precision). Plain dict updates: one process, one model call at a time."""

    def __init__(self):
        self._copied: dict[Key, int] = {}
        self._read: dict[Key, int] = {}

    def record(self, kind: str, precision: str, nbytes: int, crossed_devices: bool) -> None:
        """Counts ``nbytes`` read by a ``kind`` layer stored as ``precision``; ``crossed_devices``: the read
        copied them from the storage device to another device."""
        key = (kind, precision)
        self._read[key] = self._read.get(key, 0) + nbytes
        if crossed_devices:
            self._copied[key] = self._copied.get(key, 0) + nbytes

    def reset(self) -> None:
        self._copied.clear()
        self._read.clear()

    def snapshot(self) -> dict[Key, int]:
        """Bytes copied from the storage device to another device since the last ``reset``."""
        return dict(self._copied)

    def reads(self) -> dict[Key, int]:
        """Every byte read through the cast path since the last ``reset`` (resident or not)."""
        return dict(self._read)

    def total(self) -> int:
        """Sum of ``snapshot()``."""
        return sum(self._copied.values())


# The process-wide ledger every layer reports into.
ledger = TransferLedger()


def tensor_bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()
