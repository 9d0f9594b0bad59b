"""Key set, shapes and parameter counts at the real dimensions, built on the meta device (spec §2.3–2.5)."""
import re

import torch

from bagel_model.checkpoint.folder import read_config
from bagel_model.config import BagelConfig
from bagel_model.checkpoint.loading import build_skeleton


def _real():
    return build_skeleton(BagelConfig())


def test_real_key_count_and_total_parameters():
    model, vae = _real()
    state = model.state_dict()
    assert len(state) == 1223
    assert sum(t.numel() for t in state.values()) == 14_607_260_128
    assert len(vae.state_dict()) == 244
    assert sum(t.numel() for t in vae.state_dict().values()) == 83_819_683
    assert all(t.device.type == "meta" for t in state.values())


def test_real_component_counts():
    model, _ = _real()
    count = lambda prefix: sum(t.numel() for k, t in model.state_dict().items() if k.startswith(prefix))
    assert count("vit_model.") == 402_552_736
    assert count("connector.") == 16_980_992
    assert count("vit_pos_embed.") == 17_561_600
    assert count("latent_pos_embed.") == 14_680_064
    assert count("time_embedder.") == 13_769_728
    assert count("vae2llm.") == 232_960 and count("llm2vae.") == 229_440
    layer0 = {k: t for k, t in model.state_dict().items() if k.startswith("language_model.model.layers.0.")}
    gen = sum(t.numel() for k, t in layer0.items() if "moe_gen" in k)
    assert gen == 233_058_048 and sum(t.numel() for t in layer0.values()) == 2 * gen


def test_real_shapes_of_key_tensors():
    shapes = {k: tuple(t.shape) for k, t in _real()[0].state_dict().items()}
    assert shapes["language_model.model.embed_tokens.weight"] == (152064, 3584)
    assert shapes["language_model.lm_head.weight"] == (152064, 3584)
    assert shapes["language_model.model.layers.27.self_attn.k_proj_moe_gen.weight"] == (512, 3584)
    assert shapes["language_model.model.layers.5.self_attn.q_norm.weight"] == (128,)
    assert shapes["language_model.model.layers.5.mlp_moe_gen.down_proj.weight"] == (3584, 18944)
    assert shapes["vit_model.vision_model.embeddings.patch_embedding.weight"] == (1152, 588)
    assert shapes["vit_model.vision_model.embeddings.position_embedding.weight"] == (4900, 1152)
    assert shapes["latent_pos_embed.pos_embed"] == (4096, 3584)
    assert shapes["vit_pos_embed.pos_embed"] == (4900, 3584)
    assert shapes["llm2vae.weight"] == (64, 3584)
    assert "language_model.model.layers.0.self_attn.o_proj.bias" not in shapes
    vit_layers = {int(m.group(1)) for k in shapes if (m := re.match(r"vit_model.*encoder\.layers\.(\d+)\.", k))}
    assert vit_layers == set(range(26))  # the JSON's 27th layer is never built


def test_config_overrides_from_folder(tiny_checkpoint):
    config = read_config(tiny_checkpoint)
    assert config.llm.layer_module == "Qwen2MoTDecoderLayer" and config.llm.qk_norm
    assert config.llm.tie_word_embeddings is False
    assert config.vit.num_hidden_layers == 2  # vit_config.json says 3
    assert config.max_latent_size == 64 and config.vit_max_num_patch_per_side == 70
    assert torch.Size([config.ae.z_channels]) == torch.Size([16])
