"""Configuration of a BAGEL model (plain data), with the overrides the official loader applies.

The folder holds a plain Qwen2.5 ``llm_config.json`` and a SigLIP ``vit_config.json``; the official code forces
the MoT decoder, QK-norm and untied embeddings on the LM, disables the ViT 2-D RoPE and builds one ViT layer
fewer than the JSON says (so the penultimate layer feeds ``post_layernorm``). The autoencoder uses the FLUX
defaults unless a test checkpoint carries ``ae_config.json``. Reading a folder is checkpoint/folder.py's job.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class LLMConfig:
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    vocab_size: int = 152064
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    # Forced by the official loader whatever the JSON says (spec §1.2).
    qk_norm: bool = True
    tie_word_embeddings: bool = False
    layer_module: str = "Qwen2MoTDecoderLayer"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ViTConfig:
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 26  # layers built and used: JSON value minus one
    num_attention_heads: int = 16
    image_size: int = 980
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class AEConfig:
    resolution: int = 256
    in_channels: int = 3
    downsample: int = 8
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159


@dataclass(frozen=True)
class BagelConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    latent_patch_size: int = 2
    max_latent_size: int = 64
    vit_max_num_patch_per_side: int = 70
    connector_act: str = "gelu_pytorch_tanh"
    timestep_frequency_dim: int = 256

    @property
    def latent_channels(self) -> int:
        return self.ae.z_channels

    @property
    def patch_latent_dim(self) -> int:
        return self.latent_patch_size ** 2 * self.ae.z_channels

    @property
    def latent_downsample(self) -> int:
        return self.ae.downsample * self.latent_patch_size

    @property
    def max_image_side(self) -> int:
        """Largest generated side in pixels that the latent position table can address."""
        return self.max_latent_size * self.latent_downsample

    @classmethod
    def from_json(cls, llm_json: dict, vit_json: dict, ae_json: dict | None = None,
                  **table_sides: int) -> "BagelConfig":
        """The config the official loader builds from the folder's JSON files (overrides of spec §1.2).

        ``table_sides`` (``max_latent_size``, ``vit_max_num_patch_per_side``) are the sides of the position
        tables stored in the weights; checkpoint/folder.py reads them from the weights header.
        """
        llm = _pick(LLMConfig, llm_json)
        vit_fields = _pick(ViTConfig, vit_json)
        vit = replace(vit_fields, num_hidden_layers=int(vit_json.get("num_hidden_layers", 27)) - 1)
        ae = _pick(AEConfig, ae_json or {})
        if isinstance(ae.ch_mult, list):
            ae = replace(ae, ch_mult=tuple(ae.ch_mult))
        return cls(llm=llm, vit=vit, ae=ae, **table_sides)


def _pick(cls, values: dict):
    """Builds a frozen config from the JSON keys the dataclass knows; the rest of a HF config is irrelevant."""
    known = {f for f in cls.__dataclass_fields__}
    forced = {"qk_norm", "tie_word_embeddings", "layer_module"}
    return cls(**{k: v for k, v in values.items() if k in known and k not in forced})
