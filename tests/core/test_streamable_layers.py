"""Every weight sits in a layer that reads it at use (model/ops.py), so a memory manager may keep any layer's
tensors elsewhere: proven by walking the real-dims model and by running every flow with every layer's tensors
poisoned, the real values served only through the layers' cast path from an 'offload' copy."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from bagel_model import BagelPipeline
from bagel_model.config import BagelConfig
from bagel_model.checkpoint.loading import build_skeleton
from bagel_model.model.ops import CastAtUse
from bagel_model.checkpoint.residency import GROUPS, group_bytes, group_of, weight_groups


def run_all_flows(pipe) -> dict:
    image = Image.new("RGB", (96, 80), (200, 40, 90))
    t2i = pipe.generate_image("a red cube", width=64, height=48, steps=3, seed=1)
    edit = pipe.edit_image([image], "make it blue", steps=3, seed=1)
    return {"t2i": t2i.latents[0], "t2i_image": torch.from_numpy(np.asarray(t2i.images[0]).copy()),
            "edit": edit.latents[0],
            "banded": torch.from_numpy(np.asarray(pipe.decode_latent(edit.latents[0], banded=True)).copy()),
            "understand": pipe.understand([image], "What is this?", max_new_tokens=4).token_ids,
            "think": pipe.think("draw a cat", max_think_tokens=4).token_ids}


def _owned(module):
    return list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))


def test_every_tensor_of_the_real_model_is_owned_by_a_cast_at_use_layer():
    model, vae = build_skeleton(BagelConfig())
    total = owned = 0
    for root in (model, vae):
        total += sum(t.numel() for t in root.state_dict().values())
        for name, module in root.named_modules():
            tensors = _owned(module)
            if not tensors:
                continue
            assert isinstance(module, CastAtUse), f"{name} ({type(module).__name__}) holds tensors itself"
            assert all(not _owned(child) for child in module.modules() if child is not module), name
            owned += sum(t.numel() for _, t in tensors)
    assert owned == total == 14_607_260_128 + 83_819_683


def test_weight_groups_cover_every_layer_and_match_the_analytic_sizes():
    config = BagelConfig()
    model, vae = build_skeleton(config)
    groups = weight_groups(model, vae)
    layers = [module for name in GROUPS for _, module in groups[name]]
    assert len(layers) == len({id(m) for m in layers})  # each layer in exactly one group
    sizes = {name: sum(t.numel() for _, m in groups[name] for _, t in _owned(m)) for name in GROUPS}
    analytic = group_bytes(config, "fp32")
    assert {name: 4 * count for name, count in sizes.items()} == analytic
    assert all(name.endswith("_moe_gen") or "_moe_gen." in name or not name.startswith("language_model")
               for name, _ in groups["gen"])


def _serve_from_offload_copy(module):
    """Moves the module's tensors to a private copy read only by ``stored`` and poisons the real ones."""
    copy = {name: tensor.detach().clone() for name, tensor in _owned(module)}
    module.stored = lambda name: copy.get(name) if name in copy else getattr(module, name, None)
    for _, tensor in _owned(module):
        tensor.data.fill_(math.nan)


def test_every_flow_through_the_cast_path_equals_the_resident_run(tiny_checkpoint):
    pipe = BagelPipeline.from_pretrained(tiny_checkpoint, precision="fp32", device="cpu", compute_dtype="fp32")
    resident = run_all_flows(pipe)
    layers = [m for root in (pipe.model.bagel, pipe.model.vae) for m in root.modules() if _owned(m)]
    assert layers and all(isinstance(m, CastAtUse) for m in layers)
    for module in layers:
        _serve_from_offload_copy(module)
    streamed = run_all_flows(pipe)
    for key, value in resident.items():
        if isinstance(value, torch.Tensor):
            assert torch.isfinite(streamed[key]).all(), key
            assert torch.equal(streamed[key], value), key
        else:
            assert streamed[key] == value, key
    # Control: a poisoned tensor read outside the cast path shows up (here: one that is not served).
    del pipe.model.bagel.language_model.model.layers[0].self_attn.k_norm_moe_gen.stored
    poisoned = pipe.generate_image("a red cube", width=64, height=48, steps=3, seed=1).latents[0]
    assert not torch.isfinite(poisoned).all()


def test_group_names():
    assert group_of("language_model.model.layers.3.mlp_moe_gen.up_proj.weight") == "gen"
    assert group_of("language_model.lm_head.weight") == "text_io"
    assert group_of("language_model.model.embed_tokens.weight") == "text_io"
    assert group_of("language_model.model.layers.0.mlp.up_proj.weight") == "und"
    assert group_of("latent_pos_embed.pos_embed") == "gen" and group_of("connector.fc1.bias") == "vit"
    with pytest.raises(ValueError, match="no BAGEL weight name"):
        group_of("unknown.weight")
