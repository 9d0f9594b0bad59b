"""ComfyUI IMAGE tensors ([B,H,W,C] float32 in 0..1) <-> PIL images / float pixels of the core."""
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


def pil_to_pixels(picture: Image.Image) -> torch.Tensor:
    """An 8-bit PIL image as float32 [H,W,3] in 0..1."""
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0)


def result_pixels(result) -> list[torch.Tensor]:
    """The float images of a core result ([H,W,3] in 0..1, straight from the decoder); a backend that only
    returns 8-bit images (no ``pixels``) gives those."""
    pixels = getattr(result, "pixels", None)
    return list(pixels) if pixels else [pil_to_pixels(picture) for picture in result.images]


def resize_pixels(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[H,W,3] float resized to (width, height) with antialiased bicubic, kept in float (clamped to 0..1)."""
    width, height = size
    chw = pixels.movedim(-1, 0)[None]
    resized = torch.nn.functional.interpolate(chw, size=(height, width), mode="bicubic", antialias=True,
                                              align_corners=False)
    return resized[0].movedim(0, -1).clamp(0.0, 1.0)


def pixels_to_image_batch(pixels: list[torch.Tensor]) -> torch.Tensor:
    """Stacks [H,W,3] images of one size into an IMAGE batch [B,H,W,3] float32 in 0..1 (on the CPU)."""
    sizes = {(int(p.shape[1]), int(p.shape[0])) for p in pixels}
    if len(sizes) != 1:
        raise ValueError(f"Cannot batch images of different sizes {sorted(sizes)}; edit them separately.")
    return torch.stack([p.float().cpu() for p in pixels])


def pil_to_image_batch(pictures: list[Image.Image]) -> torch.Tensor:
    """Stacks PIL images of one size into an IMAGE batch [B,H,W,3] float32 in 0..1."""
    return pixels_to_image_batch([pil_to_pixels(picture) for picture in pictures])
