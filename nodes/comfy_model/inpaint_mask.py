"""The inpainting mask a BAGEL sampling run accepts.

ComfyUI resizes a LATENT's ``noise_mask`` to the latent with a plain interpolation, whatever its shape: a mask of
another aspect ratio (drawn on another image, or a square mask on a wide image) is stretched and the redrawn area
lands somewhere else than where it was painted, with no message. BAGEL's MODEL refuses such a mask before anything
is computed. Accepted: a mask of the latent's shape at any scale (the image's size, the latent's size), up to one
latent pixel of cropping (VAE Encode crops an image to a multiple of 8 pixels), and a constant mask of any size
(Load Image gives a 64x64 one for an image without alpha; stretching a constant changes nothing).
"""
import torch


def check_inpaint_mask(mask: torch.Tensor | None, latent: torch.Tensor, downscale: int) -> None:
    """Raises ValueError when ``mask`` (…, H, W) would be stretched onto ``latent`` (B, C, h, w)."""
    if mask is None or getattr(mask, "is_nested", False) or mask.ndim < 2:
        return
    mask_height, mask_width = int(mask.shape[-2]), int(mask.shape[-1])
    height, width = int(latent.shape[-2]), int(latent.shape[-1])
    if mask_height == 0 or mask_width == 0:
        raise ValueError(f"The inpainting mask is empty ({mask_width}x{mask_height}); connect a mask of the "
                         f"image's size ({width * downscale}x{height * downscale}).")
    width_at_latent_height = mask_width * height / mask_height
    if abs(width_at_latent_height - width) <= 1 or bool(mask.amin() == mask.amax()):
        return
    raise ValueError(
        f"The inpainting mask is {mask_width}x{mask_height} pixels but the latent is {width}x{height} "
        f"(an image of {width * downscale}x{height * downscale}): ComfyUI would stretch the mask to another aspect "
        "ratio, so the redrawn area would not be where it was painted. Use a mask made from the same image (Load "
        "Image's mask output, or a mask node at the image's size), or resize/crop the mask to "
        f"{width * downscale}x{height * downscale}.")
