"""The banded (low-memory) autoencoder decode equals the plain one to float rounding and really uses less memory."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bagel_model.config import AEConfig, BagelConfig
from bagel_model.checkpoint.memory import estimate_memory
from bagel_model.generation.images import to_pil
from bagel_model.model import banded_autoencoder
from bagel_model.model.autoencoder import AutoEncoder

ROOT = Path(__file__).resolve().parents[2]


def random_autoencoder(ch: int = 32, seed: int = 0) -> AutoEncoder:
    torch.manual_seed(seed)
    ae = AutoEncoder(AEConfig(ch=ch, ch_mult=(1, 2, 4, 4), num_res_blocks=2)).eval()
    with torch.no_grad():
        for module in ae.modules():
            if isinstance(module, torch.nn.GroupNorm):  # non-trivial affine, so a wrong γ/β placement shows
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
            elif isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0.0, 0.05)
                module.bias.normal_(0.0, 0.05)
    return ae


@pytest.mark.parametrize("band_bytes", [1, 20_000, 10**12])  # one row per band, a few rows, one band
@pytest.mark.parametrize("grid", [(5, 7), (4, 4)])
def test_banded_decode_equals_plain_decode(band_bytes, grid):
    ae = random_autoencoder()
    z = torch.randn(1, 16, *grid, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = ae.decode(z)
    banded = banded_autoencoder.decode(ae, z, band_bytes)
    assert banded.shape == plain.shape == (1, 3, 8 * grid[0], 8 * grid[1])
    assert plain.abs().max() > 0.5  # a real signal, not a collapsed output
    torch.testing.assert_close(banded, plain, rtol=0, atol=2e-5)


def test_pipeline_decode_default_is_plain_on_cpu_and_banded_matches(tiny_pipe):
    latent = torch.randn(1, 16, 6, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = np.asarray(to_pil(tiny_pipe.model.vae.decode(latent)), dtype=np.int16)
    auto = np.asarray(tiny_pipe.decode_latent(latent), dtype=np.int16)
    banded = np.asarray(tiny_pipe.decode_latent(latent, banded=True), dtype=np.int16)
    assert np.array_equal(auto, plain)  # the CPU default is the official plain decode
    assert np.abs(banded - auto).max() <= 1


MEASURE = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_banded_autoencoder import random_autoencoder
    from bagel_model.model import banded_autoencoder
    from bagel_model.checkpoint.memory import process_peak_rss_bytes
    ae = random_autoencoder(ch=64)
    z = torch.randn(1, 16, 64, 64)
    before = process_peak_rss_bytes()
    with torch.no_grad():
        out = banded_autoencoder.decode(ae, z, 4 * 2 ** 20) if sys.argv[1] == "banded" else ae.decode(z)
    print(json.dumps(process_peak_rss_bytes() - before))
""")


def test_banded_decode_lowers_peak_memory():
    """512² with a 64-channel decoder: a full-resolution map is 64 MiB; the plain pass peaks at about nine of
    them (measured 564 MiB), the banded one at under five (284 MiB: a block's input, conv1 output and output
    are whole maps by design)."""
    script = MEASURE.format(root=str(ROOT), tests=str(Path(__file__).parent))
    peaks = {}
    for mode in ("plain", "banded"):
        run = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        peaks[mode] = json.loads(run.stdout.strip().splitlines()[-1])
    full_map = 64 * 512 * 512 * 4
    assert peaks["plain"] > 6 * full_map, peaks
    assert peaks["banded"] < peaks["plain"] - 3 * full_map, peaks
    # The memory estimate for CUDA (where the banded decode is the default) covers what was measured.
    config = BagelConfig(ae=AEConfig(ch=64, ch_mult=(1, 2, 4, 4), num_res_blocks=2))
    estimate = estimate_memory(config, "bf16", "t2i", 512, 512, device="cuda", compute_dtype=torch.bfloat16)
    assert peaks["banded"] <= estimate.details["peaks"]["autoencoder_decode"], (peaks, estimate.details)


def test_chunked_attention_equals_the_attention_block():
    block = random_autoencoder().decoder.mid.attn_1
    x = torch.randn(1, 128, 9, 11, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(banded_autoencoder.attention_block(block, x, query_chunk=7), block(x),
                                   rtol=0, atol=2e-6)
