"""Schedule, CFG/renorm formulas, sin-cos tables, patchify, resize rules, RoPE tables (spec §3.5, §5, §6.4)."""
import math

import pytest
import torch
from PIL import Image

from bagel_model.generation.images import VAE_RULE, VIT_RULE, patchify_latent, patchify_pixels, unpatchify_latent
from bagel_model.model.embeddings import (grid_position_ids, rope_cos_sin, rope_inv_freq, sincos_2d_table,
                                          TimestepEmbedder)
from bagel_model.generation.sampler import SamplerSettings, combine_cfg, euler_step, schedule


def test_schedule_matches_spec_values():
    t, dt = schedule(50, 3.0)
    assert len(t) == 49
    expected = [1.0, 0.99310, 0.98601]
    assert torch.allclose(t[:3], torch.tensor(expected), atol=1e-5)
    assert math.isclose(float(t[-2]), 0.11321, abs_tol=1e-5) and math.isclose(float(t[-1]), 0.05882, abs_tol=1e-5)
    assert math.isclose(float(dt[-1]), 0.05882, abs_tol=1e-5) and math.isclose(float(dt[0]), 0.0069, abs_tol=1e-4)
    assert t.dtype == torch.float32


def test_cfg_interval_counts_official_steps():
    settings = SamplerSettings(steps=50, cfg_interval=(0.4, 1.0))
    t, _ = schedule(50, 3.0)
    active = [settings.scales_at(x)[0] > 1 for x in t]
    assert sum(active) == 41 and all(active[:41])
    full = SamplerSettings(steps=50, cfg_interval=(0.0, 1.0))
    assert all(full.scales_at(x)[0] > 1 for x in t)


def _branches():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(10, 64, generator=g) for _ in range(3)]


def test_global_renorm_formula():
    v, vt, vi = _branches()
    out = combine_cfg(v, vt, vi, 4.0, 1.5, 0.0, "global")
    b = vi + 1.5 * ((vt + 4.0 * (v - vt)) - vi)
    k = min(max(v.norm() / (b.norm() + 1e-8), 0.0), 1.0)
    assert torch.allclose(out, b * k, atol=1e-5)


def test_channel_and_text_channel_formulas():
    v, vt, vi = _branches()
    a = vt + 4.0 * (v - vt)
    b = vi + 2.0 * (a - vi)
    k = (v.norm(dim=-1, keepdim=True) / (b.norm(dim=-1, keepdim=True) + 1e-8)).clamp(0.0, 1.0)
    assert torch.allclose(combine_cfg(v, vt, vi, 4.0, 2.0, 0.0, "channel"), b * k, atol=1e-5)
    ka = (v.norm(dim=-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) + 1e-8)).clamp(0.0, 1.0)
    expected = vi + 2.0 * (a * ka - vi)  # the image step comes after the renorm and is not renormed
    assert torch.allclose(combine_cfg(v, vt, vi, 4.0, 2.0, 0.0, "text_channel"), expected, atol=1e-5)


def test_renorm_min_one_disables_and_text_scale_one_ignores_image_cfg():
    v, vt, vi = _branches()
    assert torch.allclose(combine_cfg(v, vt, vi, 4.0, 1.0, 1.0, "global"), vt + 4.0 * (v - vt), atol=1e-5)
    assert combine_cfg(v, vt, vi, 1.0, 3.0, 0.0, "global") is v


def test_euler_step_rounds_product_in_velocity_dtype():
    x = torch.randn(4, 64)
    v = torch.randn(4, 64).bfloat16()
    dt = torch.tensor(0.0123)
    out = euler_step(x, v, dt)
    assert out.dtype == torch.float32
    assert torch.equal(out, x - (v.float() * dt).bfloat16().float())


def test_sincos_table_layout():
    width, side = 16, 5
    table = sincos_2d_table(width, side)
    i, j = 3, 2
    row = table[i * side + j]
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))
    expected_col = torch.cat([torch.sin(j * omega), torch.cos(j * omega)])
    expected_row = torch.cat([torch.sin(i * omega), torch.cos(i * omega)])
    assert torch.allclose(row[: width // 2].double(), expected_col, atol=1e-6)  # first half: column
    assert torch.allclose(row[width // 2:].double(), expected_row, atol=1e-6)  # second half: row
    assert table.dtype == torch.float32


def test_grid_position_ids_use_table_side_not_image_width():
    assert grid_position_ids(2, 3, 64).tolist() == [0, 1, 2, 64, 65, 66]


def test_timestep_features_cos_first_unscaled():
    emb = TimestepEmbedder(8)
    f = emb.features(torch.tensor(0.5))
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    assert torch.allclose(f[0, :128], torch.cos(0.5 * freqs)) and torch.allclose(f[0, 128:], torch.sin(0.5 * freqs))


def test_rope_tables_rounded_to_compute_dtype():
    inv = rope_inv_freq(128, 1e6)
    assert inv.dtype == torch.float32 and inv.shape == (64,)
    cos, sin = rope_cos_sin(torch.tensor([0, 7]), inv, torch.bfloat16)
    assert cos.dtype == torch.bfloat16 and torch.all(cos[0] == 1) and torch.all(sin[0] == 0)
    assert torch.equal(cos[1, :64], cos[1, 64:])


def test_latent_patchify_round_trip_and_order():
    latent = torch.randn(16, 6, 8)
    packed = patchify_latent(latent)
    assert packed.shape == (12, 64)
    # token (row 1, col 2), in-patch (row 0, col 1), channel 5
    assert packed[1 * 4 + 2, (0 * 2 + 1) * 16 + 5] == latent[5, 2, 5]
    assert torch.equal(unpatchify_latent(packed, 3, 4, 16)[0], latent)


def test_pixel_patchify_row_col_channel_order():
    image = torch.randn(3, 28, 42)
    patches = patchify_pixels(image, 14)
    assert patches.shape == (6, 588)
    assert patches[1 * 3 + 2, (4 * 14 + 9) * 3 + 1] == image[1, 14 + 4, 28 + 9]


@pytest.mark.parametrize("size,vae,vit", [((640, 480), (688, 512), (686, 518)),
                                          ((1024, 768), (1024, 768), (980, 728)),
                                          ((1920, 1080), (1024, 576), (980, 546)),
                                          ((300, 200), (768, 512), (770, 518)),
                                          ((3000, 500), (1024, 176), (980, 168)),
                                          ((100, 750), (128, 1024), None)])
def test_resize_rules_match_spec_examples(size, vae, vit):
    assert VAE_RULE.target_size(*size) == vae
    if vit:
        assert VIT_RULE.target_size(*vae) == vit


def test_resize_skips_resampling_when_size_already_right():
    image = Image.new("RGB", (688, 512))
    assert VAE_RULE(image) is image
