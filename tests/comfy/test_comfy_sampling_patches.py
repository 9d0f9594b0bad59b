"""What ComfyUI attaches to BAGEL's MODEL: EasyCache and LazyCache through their wrappers, a fresh copy for
MultiGPU through ``cached_patcher_init``, and the think node's plan in a conditioning."""
import pytest
import torch

from sampling_support import GUIDER, bagel_guider, empty_latent, encode, fp32_compute, run_node, sample_custom, stock
from sampling_support import loaded, ours  # noqa: F401 (fixtures)

WIDTH, HEIGHT, SEED = 32, 32, 3
LATENT_TOLERANCE = 2e-4


def sample(ours, model, positive, negative, steps, **scales):
    guider = bagel_guider(ours, model, positive, negative, **scales)
    return sample_custom(ours, guider, SEED, steps, empty_latent(WIDTH, HEIGHT))["samples"]


class ForwardCount:
    """Counts the MODEL's diffusion forwards (the DIFFUSION_MODEL executor's innermost call)."""

    def __init__(self, base):
        self.base, self.calls = base, 0
        original = base._diffusion_forward

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        base._diffusion_forward = counted

    def close(self):
        del self.base._diffusion_forward


@pytest.mark.parametrize("cache", ["EasyCache", "LazyCache"])
def test_step_caches_attach_and_skip_forwards(ours, loaded, cache):
    model, clip = loaded[2], loaded[3]
    cached = run_node(stock(cache), model=model, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0,
                      verbose=False)[0]
    steps = 12
    counter = ForwardCount(model.model)
    try:
        latent = sample(ours, cached, encode(clip, "a red cube"), encode(clip, ""), steps)
    finally:
        counter.close()
    assert torch.isfinite(latent).all()
    assert 0 < counter.calls < steps - 1, counter.calls


def test_cached_patcher_init_builds_a_fresh_copy_that_samples_the_same(ours, loaded):
    model, clip = loaded[2], loaded[3]
    positive, negative = encode(clip, "a red cube"), encode(clip, "")
    expected = sample(ours, model, positive, negative, 4)
    with fp32_compute():  # as the model it copies was loaded (sampling_support.load_outputs)
        if hasattr(model, "deepclone_multigpu"):  # ComfyUI 0.33: what MultiGPU_WorkUnits calls
            fresh = model.deepclone_multigpu(new_load_device=model.load_device)
        else:
            factory, args = model.cached_patcher_init[:2]
            fresh = factory(*args)
    assert fresh.model.diffusion_model is not model.model.diffusion_model
    fresh_weight = fresh.model.diffusion_model.llm2vae.weight
    assert fresh_weight.data_ptr() != model.model.diffusion_model.llm2vae.weight.data_ptr()
    assert float((sample(ours, fresh, positive, negative, 4) - expected).abs().max()) < LATENT_TOLERANCE


def test_think_conditioning_equals_text_to_image_with_that_plan(ours, loaded):
    handle, _, model, clip = loaded
    think = ours["BagelMoTThinkConditioning"]()
    out = think.think(model, encode(clip, "a red cube"), max_think_tokens=6, do_sample=False, temperature=0.3,
                      seed=0)
    conditioning, plan = out["result"]
    assert out["ui"]["text"] == [plan]
    assert plan == handle.pipeline.think("a red cube", max_think_tokens=6).text
    settings = dict(GUIDER, steps=4, timestep_shift=3.0)
    reference = ours["BagelMoTTextToImage"]().generate(handle, "a red cube", WIDTH, HEIGHT, seed=SEED, batch_size=1,
                                                       thinking=plan, **settings)[1]["samples"]
    latent = sample(ours, model, conditioning, encode(clip, ""), 4)
    assert float((latent - reference).abs().max()) < LATENT_TOLERANCE


def test_model_samples_the_same_with_dynamic_vram_on(ours, loaded, monkeypatch):
    """ComfyUI 0.33 with Dynamic VRAM: ComfyUI's lazily built layers under the MODEL give the same latents."""
    import comfy.model_management as mm

    from test_dynamic_vram import enable_dynamic_vram

    model, clip = loaded[2], loaded[3]
    positive, negative = encode(clip, "a red cube"), encode(clip, "")
    expected = sample(ours, model, positive, negative, 4)
    mm.unload_all_models()
    enable_dynamic_vram(monkeypatch)
    with fp32_compute():  # as ``loaded`` was
        dynamic = ours["BagelMoTModelLoader"]().load(loaded[0].folder, "bf16", False)
    assert dynamic[2].model.diffusion_model is dynamic[0].pipeline.model.bagel
    latent = sample(ours, dynamic[2], encode(dynamic[3], "a red cube"), encode(dynamic[3], ""), 4)
    assert float((latent - expected).abs().max()) < LATENT_TOLERANCE


def test_context_is_copied_to_the_device_of_the_rows(loaded):
    """MultiGPU runs rows on a clone whose device differs from the one that prefilled the context: the rows get
    a copy of every layer's K/V there (here 'meta', the only second device of a CPU machine)."""
    from bagel_model.generation.context_request import ContextRequest, prefill_request
    from bagel_model.generation.latent_velocity import context_on
    from bagel_model.model.kv_cache import KVCache

    handle = loaded[0]
    runtime = handle.pipeline.runtime
    context = prefill_request(runtime, handle.pipeline.tokenizer, ContextRequest(items=("a red cube",)), None)
    assert context_on(context, torch.device("cpu")) is context
    moved = context_on(context, torch.device("meta"))
    assert isinstance(moved.cache, KVCache) and moved.length == context.length and moved.rope == context.rope
    for layer in range(context.cache.num_layers):
        for read in ("keys", "values"):
            original = getattr(context.cache, read)(layer, context.length)
            copied = getattr(moved.cache, read)(layer, moved.length)
            assert copied.device.type == "meta" and copied.shape == original.shape and copied.dtype == original.dtype


@pytest.mark.parametrize("precision", ["fp16", "nf4", "int8", "fp8_e4m3fn"])
def test_every_precision_samples_through_the_model_as_text_to_image(ours, tiny_checkpoint, precision):
    """The MODEL computes with whatever layers the precision loads (quantized Linears included)."""
    import comfy.model_management as mm

    from sampling_support import load_outputs

    handle, _, model, clip = load_outputs(ours, tiny_checkpoint, precision)
    settings = dict(GUIDER, steps=4, timestep_shift=3.0)
    reference = ours["BagelMoTTextToImage"]().generate(handle, "a red cube", WIDTH, HEIGHT, seed=SEED, batch_size=1,
                                                       **settings)[1]["samples"]
    latent = sample(ours, model, encode(clip, "a red cube"), encode(clip, ""), 4)
    mm.unload_all_models()
    assert float((latent - reference).abs().max()) < LATENT_TOLERANCE
