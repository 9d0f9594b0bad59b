"""The top-level BAGEL module: LM (MoT), ViT + connector, latent projections and embeddings.

Attribute names equal the ``ema.safetensors`` keys, so the checkpoint loads with no rename table. Every
weight-bearing layer comes from the ``operations`` namespace (``ops.TorchOps`` unless a host passes its own).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import BagelConfig
from .embeddings import TimestepEmbedder
from .ops import TorchOps
from .qwen2_mot import Qwen2ForCausalLM
from .siglip import MLPConnector, SiglipVisionModel


class Bagel(nn.Module):
    def __init__(self, config: BagelConfig, operations=TorchOps):
        super().__init__()
        self.config = config
        hidden = config.llm.hidden_size
        self.language_model = Qwen2ForCausalLM(config.llm, operations)
        self.time_embedder = TimestepEmbedder(hidden, config.timestep_frequency_dim, operations)
        self.vae2llm = operations.Linear(config.patch_latent_dim, hidden)
        self.llm2vae = operations.Linear(hidden, config.patch_latent_dim)
        self.latent_pos_embed = operations.PositionTable(config.max_latent_size, hidden)
        self.vit_model = SiglipVisionModel(config.vit, operations)
        self.connector = MLPConnector(config.vit.hidden_size, hidden, operations)
        self.vit_pos_embed = operations.PositionTable(config.vit_max_num_patch_per_side, hidden)

    @property
    def lm(self):
        return self.language_model.model

    def embed_tokens(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.lm.embed_tokens(ids).to(dtype)

    def embed_vit(self, patches: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """ViT tokens of one image in LM width: SigLIP → connector → + ``vit_pos_embed``."""
        features = self.vit_model.vision_model(patches, position_ids)
        tokens = self.connector(features)
        return (tokens + self.vit_pos_embed(position_ids).to(tokens.dtype)).to(dtype)

    def embed_latents(self, latents: torch.Tensor, t: torch.Tensor, position_ids: torch.Tensor,
                      dtype: torch.dtype) -> torch.Tensor:
        """Latent tokens: ``(vae2llm(x) + time_embedder(t)) + latent_pos_embed(ids)``, added left to right."""
        x = self.vae2llm(latents) + self.time_embedder(t)
        return (x + self.latent_pos_embed(position_ids).to(x.dtype)).to(dtype)
