"""LoRAs on BAGEL's MODEL through the stock LoraLoaderModelOnly (tiny random checkpoint in fp32, so ComfyUI
merges in the weights' own dtype without rounding): the three key layouts apply, a LoRA on the understanding
expert changes the prefilled context, strength 1 equals sampling with the merged weights, and the BAGEL nodes
never see a LoRA that only the MODEL was given."""
import pytest
import torch
from safetensors.torch import save_file

from sampling_support import bagel_guider, empty_latent, encode, load_outputs, run_node, sample_custom
from sampling_support import ours  # noqa: F401 (fixture)

WIDTH, HEIGHT, SEED, STEPS, RANK, ALPHA = 32, 32, 11, 4, 2, 4.0
UND_KEY = "language_model.model.layers.0.self_attn.q_proj"
GEN_KEY = "language_model.model.layers.1.mlp_moe_gen.down_proj"
LATENT_KEY = "llm2vae"
# Merging through ComfyUI (fp32 matmul of up and down, added in fp32) and by hand in the test differ only by
# float32 rounding in the sum's order.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def loaded(ours, tiny_checkpoint):
    return load_outputs(ours, tiny_checkpoint, "fp32")


def factors(bagel, key, generator):
    weight = bagel.get_submodule(key).weight
    return (0.05 * torch.randn((weight.shape[0], RANK), generator=generator),
            0.05 * torch.randn((RANK, weight.shape[1]), generator=generator))


@pytest.fixture(scope="module")
def lora_files(loaded, tmp_path_factory):
    """One LoRA file per key layout, and the factors each holds."""
    import folder_paths

    bagel = loaded[0].pipeline.model.bagel
    generator = torch.Generator().manual_seed(5)
    folder = tmp_path_factory.mktemp("loras")
    made = {}
    und_up, und_down = factors(bagel, UND_KEY, generator)
    gen_up, gen_down = factors(bagel, GEN_KEY, generator)
    out_up, out_down = factors(bagel, LATENT_KEY, generator)
    alpha = torch.tensor(ALPHA)
    layouts = {
        "comfy_und.safetensors": ({f"diffusion_model.{UND_KEY}.lora_up.weight": und_up,
                                   f"diffusion_model.{UND_KEY}.lora_down.weight": und_down,
                                   f"diffusion_model.{UND_KEY}.alpha": alpha}, [(UND_KEY, und_up, und_down, ALPHA)]),
        "kohya_gen.safetensors": ({f"lora_unet_{GEN_KEY.replace('.', '_')}.lora_up.weight": gen_up,
                                   f"lora_unet_{GEN_KEY.replace('.', '_')}.lora_down.weight": gen_down,
                                   f"lora_unet_{GEN_KEY.replace('.', '_')}.alpha": alpha},
                                  [(GEN_KEY, gen_up, gen_down, ALPHA)]),
        "peft_latent.safetensors": ({f"diffusion_model.{LATENT_KEY}.lora_B.weight": out_up,
                                     f"diffusion_model.{LATENT_KEY}.lora_A.weight": out_down},
                                    [(LATENT_KEY, out_up, out_down, RANK)]),
        "other_model.safetensors": ({"lora_unet_input_blocks_1_0_proj.lora_up.weight": gen_up,
                                     "lora_unet_input_blocks_1_0_proj.lora_down.weight": gen_down}, []),
    }
    for name, (state, merged) in layouts.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name))
        made[name] = merged
    folder_paths.add_model_folder_path("loras", str(folder))
    return made


def with_lora(model, name, strength=1.0):
    import nodes

    return run_node(nodes.LoraLoaderModelOnly, model=model, lora_name=name, strength_model=strength)[0]


def sample(ours, model, clip):
    import comfy.model_management

    guider = bagel_guider(ours, model, encode(clip, "a red cube"), encode(clip, ""), cfg_interval_start=0.0)
    latent = sample_custom(ours, guider, SEED, STEPS, empty_latent(WIDTH, HEIGHT))["samples"]
    comfy.model_management.unload_all_models()  # unpatches: the next run starts from the file's weights
    return latent


@pytest.mark.parametrize("name", ["comfy_und.safetensors", "kohya_gen.safetensors", "peft_latent.safetensors"])
def test_lora_at_strength_one_equals_merged_weights(ours, loaded, lora_files, name):
    handle, _, model, clip = loaded
    bagel = handle.pipeline.model.bagel
    plain = sample(ours, model, clip)
    patched = sample(ours, with_lora(model, name), clip)
    assert float((patched - plain).abs().max()) > 1e-3, "the LoRA changed nothing"
    originals = {}
    try:
        with torch.no_grad():
            for key, up, down, alpha in lora_files[name]:
                weight = bagel.get_submodule(key).weight
                originals[key] = weight.detach().clone()
                weight += (alpha / RANK) * (up @ down)
        merged = sample(ours, model, clip)
    finally:
        with torch.no_grad():
            for key, original in originals.items():
                bagel.get_submodule(key).weight.copy_(original)
    assert float((patched - merged).abs().max()) < TOLERANCE
    assert torch.equal(sample(ours, model, clip), plain), "the LoRA outlived its MODEL"


def test_und_expert_lora_changes_the_prefix(ours, loaded, lora_files):
    """The prefix is prefilled with the run's patched weights: the und-expert LoRA reaches the prompt's K/V."""
    handle, _, model, clip = loaded
    captured = {}
    base = model.model
    original = base.extra_conds

    def spy(**kwargs):
        out = original(**kwargs)
        context = out["bagel_prefix"].cond[0]
        if context.length:
            # layer 1's keys: the first that depend on layer 0's q_proj
            captured.setdefault("keys", []).append(context.cache.keys(1, context.length).clone())
        return out

    base.extra_conds = spy
    try:
        sample(ours, model, clip)
        sample(ours, with_lora(model, "comfy_und.safetensors"), clip)
    finally:
        del base.extra_conds
    plain_keys, lora_keys = captured["keys"]
    assert float((plain_keys - lora_keys).abs().max()) > 1e-4


def test_bagel_nodes_do_not_see_the_models_lora(ours, loaded, lora_files):
    handle, _, model, clip = loaded
    settings = dict(steps=3, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval_start=0.4, cfg_interval_end=1.0,
                    timestep_shift=3.0, cfg_renorm_min=0.0, cfg_renorm_type="global")
    before = ours["BagelMoTTextToImage"]().generate(handle, "a cat", WIDTH, HEIGHT, seed=1, batch_size=1,
                                                    **settings)[1]["samples"]
    guider = bagel_guider(ours, with_lora(model, "comfy_und.safetensors"), encode(clip, "a cat"), encode(clip, ""))
    sample_custom(ours, guider, 1, 3, empty_latent(WIDTH, HEIGHT))  # leaves the LoRA'd MODEL loaded
    after = ours["BagelMoTTextToImage"]().generate(handle, "a cat", WIDTH, HEIGHT, seed=1, batch_size=1,
                                                   **settings)[1]["samples"]
    assert torch.equal(before, after)


def test_lora_for_another_model_says_which_keys_bagel_takes(loaded, lora_files):
    with pytest.raises(ValueError, match="diffusion_model.<key>.lora_up.weight"):
        with_lora(loaded[2], "other_model.safetensors")


def test_lora_on_an_int8_model_is_refused_naming_the_precisions(ours, tiny_checkpoint, lora_files):
    model = ours["BagelMoTModelLoader"]().load(tiny_checkpoint.name, "int8", False)[2]
    with pytest.raises(ValueError, match="bf16, fp16 or fp32"):
        with_lora(model, "kohya_gen.safetensors")
