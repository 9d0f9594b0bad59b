"""The cond that carries a prefilled BAGEL context through ComfyUI's sampler to the model's forward.

ComfyUI batches the conds of one step into one model call when their ``can_concat`` agrees. A BAGEL context
is a KV cache, not a tensor: it is never repeated or copied, the batch is a list of references, one per latent
row. Contexts of different lengths concatenate too, because the model's forward runs every row against its own
context in one LM call (bagel_model.generation.latent_velocity) — so CFGGuider, DualCFGGuider and the BAGEL
guider all run the branches of a step in a single forward.
"""
import comfy.conds

from bagel_model.model.kv_cache import Context

PREFIX_KEY = "bagel_prefix"  # the keyword under which the forward receives the contexts of its rows


class BagelPrefixCond(comfy.conds.CONDRegular):
    """``cond``: the contexts of the rows, in row order (one per latent row once processed)."""

    def __init__(self, cond: list[Context]):
        super().__init__(list(cond))

    def process_cond(self, batch_size, **kwargs):
        contexts = self.cond
        return self._copy_with([contexts[row % len(contexts)] for row in range(batch_size)])

    def can_concat(self, other):
        return isinstance(other, BagelPrefixCond)

    def concat(self, others):
        rows = list(self.cond)
        for other in others:
            rows += other.cond
        return rows

    def size(self):
        """[rows, longest context]: what the model's memory estimate needs (``memory_required``)."""
        return [len(self.cond), max((context.length for context in self.cond), default=0)]
