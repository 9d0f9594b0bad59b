"""ComfyUI IMAGE tensors ([B,H,W,C] float32 in 0..1) <-> PIL images for the core."""
import numpy as np
import torch
from PIL import Image


def image_batch_to_pil(images: torch.Tensor, input_name: str) -> list[Image.Image]:
    """Splits an IMAGE batch into PIL images (RGB, or RGBA for 4 channels)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"Input '{input_name}' must be a ComfyUI IMAGE batch shaped [B,H,W,3]; got {shape}. "
            "Connect it to an IMAGE output such as Load Image."
        )
    if images.shape[0] == 0:
        raise ValueError(f"Input '{input_name}' is an empty image batch; connect at least one image.")
    # Same quantisation as SaveImage (scale by 255, clip, truncate) so a round trip is exact.
    pixels = np.clip(255.0 * images.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    return [Image.fromarray(frame) for frame in pixels]


def pil_to_image_batch(pictures: list[Image.Image]) -> torch.Tensor:
    """Stacks PIL images of one size into an IMAGE batch [B,H,W,3] float32 in 0..1."""
    sizes = {picture.size for picture in pictures}
    if len(sizes) != 1:
        raise ValueError(f"Cannot batch images of different sizes {sorted(sizes)}; edit them separately.")
    arrays = [np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0 for picture in pictures]
    return torch.from_numpy(np.stack(arrays))
