"""Every tensor of a BAGEL checkpoint (name, shape, owning Linear) computed from the configs alone.

Used by the memory estimate, which must answer before any weight is read (and for the real 29 GB model on a
machine that cannot hold it). The names and shapes follow spec §2.3 / §5.4; a test checks them against the
meta-device skeleton, so the two cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import AEConfig, BagelConfig


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


def _linear(name: str, out_f: int, in_f: int, bias: bool = True) -> list[TensorSpec]:
    specs = [TensorSpec(f"{name}.weight", (out_f, in_f), name)]
    if bias:
        specs.append(TensorSpec(f"{name}.bias", (out_f,), name))
    return specs


def _decoder_layer(config: BagelConfig, i: int) -> list[TensorSpec]:
    llm = config.llm
    hidden, head, inter = llm.hidden_size, llm.head_dim, llm.intermediate_size
    q_out, kv_out = llm.num_attention_heads * head, llm.num_key_value_heads * head
    prefix = f"language_model.model.layers.{i}"
    specs = []
    for suffix in ("", "_moe_gen"):
        attn = f"{prefix}.self_attn"
        specs += _linear(f"{attn}.q_proj{suffix}", q_out, hidden)
        specs += _linear(f"{attn}.k_proj{suffix}", kv_out, hidden)
        specs += _linear(f"{attn}.v_proj{suffix}", kv_out, hidden)
        specs += _linear(f"{attn}.o_proj{suffix}", hidden, q_out, bias=False)
        specs += [TensorSpec(f"{attn}.q_norm{suffix}.weight", (head,)),
                  TensorSpec(f"{attn}.k_norm{suffix}.weight", (head,))]
        mlp = f"{prefix}.mlp{suffix}"
        specs += _linear(f"{mlp}.gate_proj", inter, hidden, bias=False)
        specs += _linear(f"{mlp}.up_proj", inter, hidden, bias=False)
        specs += _linear(f"{mlp}.down_proj", hidden, inter, bias=False)
        specs += [TensorSpec(f"{prefix}.input_layernorm{suffix}.weight", (hidden,)),
                  TensorSpec(f"{prefix}.post_attention_layernorm{suffix}.weight", (hidden,))]
    return specs


def _language_model(config: BagelConfig) -> list[TensorSpec]:
    llm = config.llm
    specs = [TensorSpec("language_model.model.embed_tokens.weight", (llm.vocab_size, llm.hidden_size))]
    for i in range(llm.num_hidden_layers):
        specs += _decoder_layer(config, i)
    specs += [TensorSpec("language_model.model.norm.weight", (llm.hidden_size,)),
              TensorSpec("language_model.model.norm_moe_gen.weight", (llm.hidden_size,))]
    specs += _linear("language_model.lm_head", llm.vocab_size, llm.hidden_size, bias=False)
    return specs


def _generation_side(config: BagelConfig) -> list[TensorSpec]:
    hidden, latent = config.llm.hidden_size, config.patch_latent_dim
    specs = _linear("time_embedder.mlp.0", hidden, config.timestep_frequency_dim)
    specs += _linear("time_embedder.mlp.2", hidden, hidden)
    specs += _linear("vae2llm", hidden, latent) + _linear("llm2vae", latent, hidden)
    specs.append(TensorSpec("latent_pos_embed.pos_embed", (config.max_latent_size ** 2, hidden)))
    return specs


def _understanding_side(config: BagelConfig) -> list[TensorSpec]:
    vit, hidden = config.vit, config.llm.hidden_size
    dv, prefix = vit.hidden_size, "vit_model.vision_model"
    grid = vit.image_size // vit.patch_size
    specs = _linear(f"{prefix}.embeddings.patch_embedding", dv, vit.num_channels * vit.patch_size ** 2)
    specs.append(TensorSpec(f"{prefix}.embeddings.position_embedding.weight", (grid * grid, dv)))
    for i in range(vit.num_hidden_layers):
        layer = f"{prefix}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            specs += _linear(f"{layer}.self_attn.{proj}", dv, dv)
        for norm in ("layer_norm1", "layer_norm2"):
            specs += [TensorSpec(f"{layer}.{norm}.weight", (dv,)), TensorSpec(f"{layer}.{norm}.bias", (dv,))]
        specs += _linear(f"{layer}.mlp.fc1", vit.intermediate_size, dv)
        specs += _linear(f"{layer}.mlp.fc2", dv, vit.intermediate_size)
    specs += [TensorSpec(f"{prefix}.post_layernorm.weight", (dv,)), TensorSpec(f"{prefix}.post_layernorm.bias", (dv,))]
    specs += _linear("connector.fc1", hidden, dv) + _linear("connector.fc2", hidden, hidden)
    specs.append(TensorSpec("vit_pos_embed.pos_embed", (config.vit_max_num_patch_per_side ** 2, hidden)))
    return specs


def bagel_tensors(config: BagelConfig) -> list[TensorSpec]:
    """Every tensor of ``ema.safetensors`` for this config."""
    return _language_model(config) + _generation_side(config) + _understanding_side(config)


def _resnet_params(c_in: int, c_out: int) -> int:
    params = 2 * c_in + (c_in * c_out * 9 + c_out) + 2 * c_out + (c_out * c_out * 9 + c_out)
    if c_in != c_out:
        params += c_in * c_out + c_out  # 1x1 nin_shortcut
    return params


def _mid_params(c: int) -> int:
    attention = 2 * c + 4 * (c * c + c)  # GroupNorm + q, k, v, proj_out 1x1 convs
    return 2 * _resnet_params(c, c) + attention


def autoencoder_parameter_count(ae: AEConfig) -> int:
    """Parameters of the FLUX autoencoder (encoder + decoder), spec §5.4."""
    ch, mult, blocks, z = ae.ch, tuple(ae.ch_mult), ae.num_res_blocks, ae.z_channels
    encoder = ae.in_channels * ch * 9 + ch
    c_in = ch
    for level, m in enumerate(mult):
        for _ in range(blocks):
            encoder += _resnet_params(c_in, ch * m)
            c_in = ch * m
        if level != len(mult) - 1:
            encoder += c_in * c_in * 9 + c_in
    encoder += _mid_params(c_in) + 2 * c_in + c_in * 2 * z * 9 + 2 * z
    c_in = ch * mult[-1]
    decoder = z * c_in * 9 + c_in + _mid_params(c_in)
    for level in reversed(range(len(mult))):
        for _ in range(blocks + 1):
            decoder += _resnet_params(c_in, ch * mult[level])
            c_in = ch * mult[level]
        if level != 0:
            decoder += c_in * c_in * 9 + c_in
    decoder += 2 * c_in + c_in * ae.out_ch * 9 + ae.out_ch
    return encoder + decoder
