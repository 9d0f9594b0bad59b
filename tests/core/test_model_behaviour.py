"""KV-cache decoding, causal alignment, MoT routing, contexts/RoPE per flow, noise order, determinism."""
import torch
from PIL import Image

import bagel_model.pipeline as pipeline_module
from bagel_model.generation import branch_velocities
from bagel_model.model.attention import attend, bottom_right_causal_mask
from bagel_model.model.kv_cache import Context
from bagel_model.model.qwen2_mot import GEN, UND, Block, Segment
from bagel_model.model.embeddings import rope_cos_sin, rope_inv_freq


def _text_block(pipe, ids, start):
    runtime = pipe.runtime
    cos, sin = runtime._rope(torch.arange(start, start + len(ids)))
    return Block([Segment(0, len(ids), UND)], cos, sin, causal=True, fp32_qk=False)


def test_kv_cache_decoding_equals_full_forward(tiny_pipe):
    model = tiny_pipe.model.bagel
    ids = [5, 17, 40, 99, 3, 250, 61]
    x = model.embed_tokens(torch.tensor(ids), torch.float32)
    full_ctx = Context.empty(len(model.lm.layers))
    full = model.lm(x, _text_block(tiny_pipe, ids, 0), full_ctx, update=True)
    step_ctx = Context.empty(len(model.lm.layers))
    rows = [model.lm(x[i:i + 1], _text_block(tiny_pipe, ids[i:i + 1], i), step_ctx, update=True)
            for i in range(len(ids))]
    assert torch.allclose(torch.cat(rows), full, atol=1e-5, rtol=1e-4)
    assert step_ctx.length == full_ctx.length == len(ids)
    for layer in range(len(model.lm.layers)):
        assert torch.allclose(step_ctx.cache.keys(layer, 7), full_ctx.cache.keys(layer, 7), atol=1e-5)


def test_causal_mask_is_bottom_right_aligned_with_cache():
    mask = bottom_right_causal_mask(2, 5, "cpu")
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 2, 8, generator=g), torch.randn(5, 1, 8, generator=g), torch.randn(5, 1, 8, generator=g)
    out = attend(q, k, v, causal=True).view(2, 2, 8)
    # new token 0 sees the 3 cached keys and itself, not new token 1
    scores = (q[0] @ k[:4, 0].T) / 8 ** 0.5
    expected = torch.softmax(scores, -1) @ v[:4, 0]
    assert torch.allclose(out[0], expected, atol=1e-5)


def test_mot_routing_uses_each_expert_only_for_its_tokens(tiny_pipe):
    layer = tiny_pipe.model.bagel.lm.layers[0]
    x = torch.randn(3, tiny_pipe.config.llm.hidden_size)
    cos, sin = rope_cos_sin(torch.zeros(3), rope_inv_freq(tiny_pipe.config.llm.head_dim, 1e6), torch.float32)
    block = Block([Segment(0, 1, UND), Segment(1, 2, GEN), Segment(2, 3, UND)], cos, sin, False, True)
    base = layer(x, block, Context.empty(2), 0, update=False)
    saved = layer.mlp_moe_gen.down_proj.weight.data.clone()
    layer.mlp_moe_gen.down_proj.weight.data.mul_(2.0)
    try:
        changed = layer(x, block, Context.empty(2), 0, update=False)
    finally:
        layer.mlp_moe_gen.down_proj.weight.data.copy_(saved)
    assert torch.equal(changed[[0, 2]], base[[0, 2]])  # marker tokens never touch the gen MLP
    assert not torch.allclose(changed[1], base[1])


def _record_velocity_contexts(pipe, monkeypatch):
    """(length, rope) of every branch evaluated; the flows below run with batch_cfg=False, where each LM call
    of the velocity path gets one branch (tests/speed checks the batched path gives the same)."""
    calls = []
    original = branch_velocities.branch_hidden

    def recording(runtime, contexts, *args, **kwargs):
        assert len(contexts) == 1
        calls.extend((ctx.length, ctx.rope) for ctx in contexts)
        return original(runtime, contexts, *args, **kwargs)

    monkeypatch.setattr(branch_velocities, "branch_hidden", recording)
    return calls


def test_edit_contexts_positions_and_branch_counts(tiny_pipe, monkeypatch):
    calls = _record_velocity_contexts(tiny_pipe, monkeypatch)
    prompt = "make it blue"
    n = len(tiny_pipe.tokenizer.encode(prompt)) + 2
    tiny_pipe.edit_image([Image.new("RGB", (128, 96), (200, 30, 30))], prompt, steps=3, batch_cfg=False)
    vae_block, vit_block = 43 * 32 + 2, 49 * 37 + 2  # 688x512 latents, 686x518 ViT patches, + markers
    gen = (vae_block + vit_block + n, 2 + n)
    cfg_text = (vae_block + vit_block, 2)
    cfg_img = (n, n)
    assert calls == [gen, cfg_text, cfg_img] * 2  # 3 steps -> 2 evaluations, 3 branches each


def test_t2i_skips_identical_and_useless_branches(tiny_pipe, monkeypatch):
    calls = _record_velocity_contexts(tiny_pipe, monkeypatch)
    tiny_pipe.generate_image("a cat", width=32, height=32, steps=6, cfg_img_scale=1.5, batch_cfg=False)
    n = len(tiny_pipe.tokenizer.encode("a cat")) + 2
    # shifted t = 1, .92, .82, .67, .43 -> CFG (0.4 < t) on all 5; cfg_img equals gen: its velocity is reused.
    assert calls == [(n, n), (0, 0)] * 5
    calls.clear()
    tiny_pipe.generate_image("a cat", width=32, height=32, steps=6, cfg_text_scale=1.0, cfg_img_scale=2.0,
                             batch_cfg=False)
    assert calls == [(n, n)] * 5


def test_think_text_reaches_only_the_main_context(tiny_pipe, monkeypatch):
    calls = _record_velocity_contexts(tiny_pipe, monkeypatch)
    plan = "draw a big cat"
    tiny_pipe.edit_image([Image.new("RGB", (64, 64))], "add a hat", steps=2, thinking=plan, batch_cfg=False)
    gen, cfg_text, cfg_img = calls
    think_block = len(tiny_pipe.tokenizer.encode(plan)) + 2
    system = len(tiny_pipe.tokenizer.encode(pipeline_module.GEN_THINK_SYSTEM_PROMPT)) + 2
    prompt = len(tiny_pipe.tokenizer.encode("add a hat")) + 2
    assert cfg_img == (system + prompt, system + prompt)  # [SYS, prompt]: no image, no plan
    assert cfg_text[0] == gen[0] - prompt - think_block and cfg_text[1] == system + 2
    assert gen[1] == system + 2 + prompt + think_block


def test_seeded_noise_follows_official_draw_order(tiny_pipe, monkeypatch):
    captured = {}
    original = pipeline_module.denoise

    def capture(runtime, settings, query, noise, *args, **kwargs):
        captured["noise"] = noise.clone()
        return original(runtime, settings, query, noise, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "denoise", capture)
    global_state = torch.get_rng_state()
    tiny_pipe.edit_image([Image.new("RGB", (128, 96), (10, 200, 30))], "x", steps=2, seed=1234)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global generator is never touched
    torch.manual_seed(1234)
    torch.randn(1, 16, 512 // 8, 688 // 8)  # posterior noise of the VAE-encoded input
    assert torch.equal(captured["noise"], torch.randn(43 * 32, 64))
    tiny_pipe.generate_image("y", width=48, height=32, steps=2, seed=77)
    torch.manual_seed(77)
    assert torch.equal(captured["noise"], torch.randn(3 * 2, 64))


def test_same_seed_same_output_different_seed_different_output(tiny_pipe):
    a = tiny_pipe.generate_image("a boat", width=32, height=32, steps=3, seed=5).latents[0]
    b = tiny_pipe.generate_image("a boat", width=32, height=32, steps=3, seed=5).latents[0]
    c = tiny_pipe.generate_image("a boat", width=32, height=32, steps=3, seed=6).latents[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_decoding_leaves_the_context_unchanged(tiny_pipe):
    cond = tiny_pipe.builder.build(["hello there"], None, use_vae=True, generator=None)
    before = (cond.gen.length, cond.gen.rope, cond.gen.cache.length)
    first = tiny_pipe.runtime.decode_text(cond.gen, 6, False, 1.0, None)
    assert (cond.gen.length, cond.gen.rope, cond.gen.cache.length) == before
    assert tiny_pipe.runtime.decode_text(cond.gen, 6, False, 1.0, None) == first


def test_understanding_positions_image_then_prompt(tiny_pipe, monkeypatch):
    seen = []
    original = tiny_pipe.runtime.decode_text

    def recording(ctx, *args, **kwargs):
        seen.append((ctx.length, ctx.rope))
        return original(ctx, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe.runtime, "decode_text", recording)
    prompt = "what is this"
    n = len(tiny_pipe.tokenizer.encode(prompt)) + 2
    tiny_pipe.understand([Image.new("RGB", (640, 480))], prompt, max_new_tokens=2)
    # ViT only (no VAE block in understanding): 686x518 -> 49x37 patches + 2 markers at position 0.
    assert seen == [(49 * 37 + 2 + n, 1 + n)]
    seen.clear()
    tiny_pipe.understand([Image.new("RGB", (640, 480))], prompt, think=True, max_new_tokens=2)
    system = len(tiny_pipe.tokenizer.encode(pipeline_module.VLM_THINK_SYSTEM_PROMPT)) + 2
    assert seen == [(system + 49 * 37 + 2 + n, system + 1 + n)]
