"""Tokenizer round trip for people, not training loops: one picture in, its reconstruction and numbers out.

The studio's Tokenizer lab uses this; it is also handy in a notebook:

    pipe = arstudio.load_pipeline("shapes-c2i")
    r = arstudio.reconstruct(pipe.tokenizer, "photo.png")
    r.psnr, r.codebook_usage, r.ids.shape
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MAX_PIXELS = 4096 * 4096  # larger uploads are refused before decoding them fully


@dataclass
class Reconstruction:
    original: np.ndarray  # uint8 (R, R, 3): the input, centre-cropped and resized to the tokenizer's side R
    reconstruction: np.ndarray  # uint8 (R, R, 3): decode(encode(original))
    ids: np.ndarray  # (h, w) token ids
    psnr: float  # dB, original vs reconstruction
    codebook_usage: float  # share of the codebook this one image uses
    codebook_size: int


def load_image(source, max_pixels: int = MAX_PIXELS):
    """A PIL RGB image from a path, bytes, PIL image or uint8 array; clear errors for non-images and huge ones."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, np.ndarray):
        return Image.fromarray(source).convert("RGB")
    if isinstance(source, Image.Image):
        image = source
    else:
        name = str(source) if isinstance(source, (str, Path)) else "the upload"
        try:
            image = Image.open(source if isinstance(source, (str, Path)) else io.BytesIO(source))
        except (UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise ValueError(
                f"{Path(name).name!r} is not an image this studio can read (PNG, JPEG, WebP, ...)"
            ) from err
    if image.width * image.height > max_pixels:
        raise ValueError(
            f"image is {image.width}x{image.height} pixels; at most {max_pixels:,} pixels are accepted"
        )
    return image.convert("RGB")


def square_resize(image, side: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``side`` (Lanczos): uint8 (side, side, 3)."""
    from PIL import Image

    short = min(image.size)
    left, top = (image.width - short) // 2, (image.height - short) // 2
    square = image.crop((left, top, left + short, top + short))
    return np.array(square.resize((side, side), Image.LANCZOS), dtype=np.uint8)  # a writable copy


@torch.no_grad()
def reconstruct(tokenizer, image) -> Reconstruction:
    """Encode ``image`` (see ``load_image``) with a VQ tokenizer, decode it back, and measure the result."""
    from arstudio.evaluation.metrics import psnr
    from arstudio.images import images_to_tensor, tensor_to_images
    from arstudio.tokenizers.vq import codebook_usage

    side = tokenizer.config.resolution
    original = square_resize(load_image(image), side)
    device = next(tokenizer.parameters()).device
    ids = tokenizer.encode(images_to_tensor(original[None]).to(device))
    pixels = tensor_to_images(tokenizer.decode(ids).float())[0]
    usage = codebook_usage(ids, tokenizer.codebook_size)["usage"]
    return Reconstruction(original=original, reconstruction=pixels, ids=ids[0].cpu().numpy(),
                          psnr=psnr(original, pixels), codebook_usage=usage,
                          codebook_size=tokenizer.codebook_size)  # fmt: skip
