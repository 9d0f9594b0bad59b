"""BAGEL's latents and autoencoder in ComfyUI's own terms: a FLUX LATENT and a core VAE.

BAGEL's autoencoder is the FLUX one. BAGEL denoises scaled latents (``scale·(z − shift)``, ComfyUI's FLUX
``process_in`` space); a ComfyUI LATENT holds the unscaled ``z`` that the autoencoder's decoder network takes
(what core VAE Encode gives and VAE Decode expects). So LATENT = ``z / scale + shift`` with the checkpoint's own
factors, and core VAE Decode of it with FLUX ``ae.safetensors`` is our image.
"""
import logging
from pathlib import Path

import torch

import comfy.sd
import comfy.utils
from comfy_execution.graph_utils import ExecutionBlocker

logger = logging.getLogger(__name__)

AE_FILE = "ae.safetensors"
# The layout ComfyUI's VAE class detects from a FLUX ae.safetensors on its own (comfy/sd.py).
FLUX_LAYOUT = {"in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": (1, 2, 4, 4), "num_res_blocks": 2,
               "z_channels": 16}


NO_LATENTS = ("The BAGEL-MoT Remote Model's server returns images only, so this 'latent' output is empty. Connect "
              "'images' to a core VAE Encode for a LATENT, or use the local BAGEL-MoT Model Loader.")


def latent_output(pipeline, latents: list[torch.Tensor]):
    """A LATENT [B,16,H/8,W/8] float32 on the CPU from the core's (1,16,H/8,W/8) latents. A backend without
    latents (the remote one) blocks the output instead: a node that uses it stops with NO_LATENTS, and a
    workflow that leaves it unconnected runs as usual."""
    if not latents:
        return ExecutionBlocker(NO_LATENTS)
    return {"samples": torch.cat([pipeline.unscale_latent(latent).float().cpu() for latent in latents])}


def _is_flux_layout(ae_config) -> bool:
    return all(tuple(v) == tuple(getattr(ae_config, k)) if isinstance(v, tuple) else v == getattr(ae_config, k)
               for k, v in FLUX_LAYOUT.items())


def _identity_1x1(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.eye(channels)[:, :, None, None], torch.zeros(channels)


def checkpoint_vae(folder: Path, ae_config) -> comfy.sd.VAE:
    """The checkpoint's ``ae.safetensors`` as a core VAE, loaded exactly as core Load VAE would load it.

    Test checkpoints with a smaller autoencoder (``ae_config.json``) are outside what ComfyUI detects from the
    weights; they get an explicit config, whose (legacy) model class has 1×1 quant convs, set to the identity.
    """
    path = Path(folder) if Path(folder).is_file() else Path(folder) / AE_FILE  # a folder or the autoencoder file
    if not path.is_file():
        raise FileNotFoundError(f"The BAGEL checkpoint folder {folder} has no {AE_FILE}; the VAE output needs it. "
                                "Re-download the checkpoint (it is part of BAGEL-7B-MoT).")
    state = comfy.utils.load_torch_file(str(path), safe_load=True)
    if _is_flux_layout(ae_config):
        return comfy.sd.VAE(sd=state)
    z = ae_config.z_channels
    ddconfig = {"double_z": True, "z_channels": z, "resolution": ae_config.resolution,
                "in_channels": ae_config.in_channels, "out_ch": ae_config.out_ch, "ch": ae_config.ch,
                "ch_mult": list(ae_config.ch_mult), "num_res_blocks": ae_config.num_res_blocks,
                "attn_resolutions": [], "dropout": 0.0}
    state["quant_conv.weight"], state["quant_conv.bias"] = _identity_1x1(2 * z)
    state["post_quant_conv.weight"], state["post_quant_conv.bias"] = _identity_1x1(z)
    vae = comfy.sd.VAE(sd=state, config={"params": {"embed_dim": z, "ddconfig": ddconfig}})
    vae.latent_channels = z  # the config path keeps the SD default of 4
    logger.info("BAGEL autoencoder of %s offered as a ComfyUI VAE (non-FLUX test layout).", folder)
    return vae
