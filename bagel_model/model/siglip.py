"""SigLIP NaViT vision encoder as BAGEL uses it: Linear patch embedding, learned position table indexed by
``i*S + j``, pre-LN encoder layers (the JSON's last layer is not built) and ``post_layernorm``."""
from __future__ import annotations

import torch
from torch import nn

from ..config import ViTConfig
from .attention import attend
from .ops import TorchOps, gelu_tanh


class SiglipEmbeddings(nn.Module):
    def __init__(self, config: ViTConfig, operations=TorchOps):
        super().__init__()
        patch_dim = config.num_channels * config.patch_size ** 2
        self.patch_embedding = operations.Linear(patch_dim, config.hidden_size, bias=True)
        # SigLIP sizes its table from image_size; BAGEL indexes it with ids i*S + j (S = the ViT table side).
        positions = (config.image_size // config.patch_size) ** 2
        self.position_embedding = operations.Embedding(positions, config.hidden_size)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(patches)
        return x + self.position_embedding(position_ids).to(x.dtype)


class SiglipAttention(nn.Module):
    def __init__(self, config: ViTConfig, operations=TorchOps):
        super().__init__()
        dim, linear = config.hidden_size, operations.Linear
        self.num_heads = config.num_attention_heads
        self.q_proj, self.k_proj = linear(dim, dim), linear(dim, dim)
        self.v_proj, self.out_proj = linear(dim, dim), linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = (proj(x).view(n, self.num_heads, -1) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(attend(q, k, v, causal=False))


class SiglipMLP(nn.Module):
    def __init__(self, config: ViTConfig, operations=TorchOps):
        super().__init__()
        self.fc1 = operations.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = operations.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, config: ViTConfig, operations=TorchOps):
        super().__init__()
        self.layer_norm1 = operations.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config, operations)
        self.layer_norm2 = operations.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config, operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, config: ViTConfig, operations=TorchOps):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config, operations)
                                    for _ in range(config.num_hidden_layers))


class SiglipVisionTransformer(nn.Module):
    def __init__(self, config: ViTConfig, operations=TorchOps):
        super().__init__()
        self.embeddings = SiglipEmbeddings(config, operations)
        self.encoder = SiglipEncoder(config, operations)
        self.post_layernorm = operations.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """patches: (tokens, 3·p²) of ONE image; returns fp32 (tokens, hidden) after ``post_layernorm``."""
        x = self.embeddings(patches, position_ids)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class SiglipVisionModel(nn.Module):
    def __init__(self, config: ViTConfig, operations=TorchOps):
        super().__init__()
        self.vision_model = SiglipVisionTransformer(config, operations)


class MLPConnector(nn.Module):
    """ViT width → LM width: fc2(gelu_tanh(fc1(x)))."""

    def __init__(self, in_dim: int, hidden: int, operations=TorchOps):
        super().__init__()
        self.fc1 = operations.Linear(in_dim, hidden)
        self.fc2 = operations.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))
