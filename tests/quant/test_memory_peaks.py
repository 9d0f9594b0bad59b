"""The memory estimate covers the transient peaks of a call: a growing KV cache, attention scores (bounded by
query blocks wherever SDPA's math kernel would hold them), and the LM prefill of an input image's ViT block."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bagel_model.checkpoint import memory
from bagel_model.config import BagelConfig
from bagel_model.model import attention, kv_cache
from bagel_model.model.attention import attend

REAL = BagelConfig()


class LiveBuffers:
    """Bytes of every live cache buffer, and the peak, tracked at each growth (old and new coexist there)."""

    def __init__(self, cache: kv_cache.KVCache, monkeypatch):
        self.cache, self.peak = cache, 0
        real_grow = kv_cache._grow

        def grow(buffer, needed, like):
            grown = real_grow(buffer, needed, like)
            extra = 0 if grown is buffer or buffer is None else buffer.numel() * buffer.element_size()
            self.peak = max(self.peak, self.live() + extra + (0 if grown is buffer else self.nbytes(grown)))
            return grown
        monkeypatch.setattr(kv_cache, "_grow", grow)

    @staticmethod
    def nbytes(t):
        return t.numel() * t.element_size()

    def live(self) -> int:
        return sum(self.nbytes(t) for t in self.cache._keys + self.cache._values if t is not None)


def test_kv_cache_peak_while_growing_stays_within_the_estimate_bound(monkeypatch):
    layers, kv_heads, head_dim = 4, 2, 8
    cache = kv_cache.KVCache(layers)
    tracker = LiveBuffers(cache, monkeypatch)
    length = 0
    blocks = [70, 4902, 30] + [1] * 600  # system/prompt, ViT block, question, then decoded tokens
    for block in blocks:
        for layer in range(layers):
            cache.write(layer, length, torch.zeros(block, kv_heads, head_dim), torch.zeros(block, kv_heads, head_dim))
        length += block
        cache.length = length
    per_layer_token = 2 * kv_heads * head_dim * 4  # keys + values, fp32
    bound = kv_cache.peak_tokens(length, layers) * per_layer_token
    assert tracker.peak <= bound
    assert tracker.peak >= 0.9 * bound  # the bound is tight, not a blanket factor
    doubling_final = 2 * layers * (4902 + 70) * per_layer_token  # what doubling growth ends with here
    assert bound < doubling_final


def test_estimate_counts_the_growing_caches():
    estimate = memory.estimate_memory(REAL, "bf16", "understand", 1024, 1024, input_size=(1024, 1024),
                                      generated_tokens=512, _with_alternatives=False)
    llm = REAL.llm
    per_layer_token = 2 * llm.num_key_value_heads * llm.head_dim * 2
    expected = sum(kv_cache.peak_tokens(n, llm.num_hidden_layers) * per_layer_token
                   for n in estimate.details["context_tokens"].values() if n)
    assert estimate.kv_cache_bytes == int(expected)
    steady = sum(estimate.details["context_tokens"].values()) * estimate.details["kv_bytes_per_token"]
    assert estimate.kv_cache_bytes > steady


def _qkv(num_q, num_k, heads=8, kv_heads=2, d=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(num_q, heads, d, generator=g, dtype=dtype),
            torch.randn(num_k, kv_heads, d, generator=g, dtype=dtype),
            torch.randn(num_k, kv_heads, d, generator=g, dtype=dtype))


def _count_sdpa_calls(monkeypatch) -> list:
    """Score-matrix bytes of every SDPA call from now on."""
    sizes = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query, key, value, **kwargs):
        sizes.append(4 * query.shape[1] * query.shape[2] * key.shape[2])
        return real_sdpa(query, key, value, **kwargs)
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", sdpa)
    return sizes


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_query_blocks_bound_the_score_matrix_and_keep_the_result(monkeypatch, causal, dtype):
    q, k, v = _qkv(300, 420, dtype=dtype)
    budget = 4 * 8 * 420 * 37  # 37 query rows per block
    with sdpa_kernel(SDPBackend.MATH):  # the kernel that materialises the scores: blocks bound them
        whole = attend(q, k, v, causal)
        monkeypatch.setattr(attention, "SCORE_BLOCK_BYTES", budget)
        sizes = _count_sdpa_calls(monkeypatch)
        blocked = attend(q, k, v, causal)
    assert len(sizes) == -(-300 // 37) and max(sizes) <= budget
    torch.testing.assert_close(blocked, whole, rtol=0, atol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_tiled_kernel_gets_the_whole_block_in_one_call(monkeypatch, causal):
    """CPU flash attention never holds the score matrix: one call, however small the budget."""
    q, k, v = _qkv(300, 420)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        expected = attend(q, k, v, causal)
        monkeypatch.setattr(attention, "SCORE_BLOCK_BYTES", 4 * 8 * 420 * 37)
        sizes = _count_sdpa_calls(monkeypatch)
        assert torch.equal(attend(q, k, v, causal), expected)
    assert len(sizes) == 1


def test_estimate_counts_one_score_block_and_the_vit_prefill():
    estimate = memory.estimate_memory(REAL, "bf16", "understand", 1024, 1024, input_size=(1024, 1024),
                                      generated_tokens=512, _with_alternatives=False)
    peaks = estimate.details["peaks"]
    vit_block = 70 * 70 + 2  # 1024² input: 70x70 SigLIP patches + the two markers
    prefill = memory._lm_forward_bytes(REAL, vit_block, vit_block + 64 + 128, 2)
    scores = memory._score_bytes(REAL, vit_block, vit_block + 64 + 128)
    # The full fp32 score matrix of this prefill would be 2.7 GB; one block of it is counted (and computed).
    assert scores == int(memory._LM_OVERHEAD * 2 * attention.SCORE_BLOCK_BYTES)
    assert peaks["lm_image_prefill"] >= prefill + scores
    assert estimate.activation_bytes >= peaks["lm_image_prefill"] > peaks["lm_layer"]
    edit = memory.estimate_memory(REAL, "bf16", "edit", 1024, 1024, input_size=(1024, 1024),
                                  _with_alternatives=False)
    assert "lm_image_prefill" in edit.details["peaks"]
