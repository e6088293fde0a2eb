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
    # the tokens: (h, w) code ids (discrete), (h, w, d) latents (continuous) or level ids (bridge)
    ids: np.ndarray
    psnr: float  # dB, original vs reconstruction
    kind: str = "discrete"  # the tokenizer's kind: "discrete" (VQ), "continuous" (KL) or "bridge"
    codebook_usage: float | None = None  # discrete: share of the codebook this one image uses
    codebook_size: int | None = None  # discrete
    levels: int | None = None  # bridge: levels per latent dimension
    levels_used: np.ndarray | None = None  # bridge: (d,) distinct levels this image uses in each dimension

    def summary(self) -> dict:
        """The numbers that describe this kind of token space, named for people."""
        if self.kind == "discrete":
            return {
                "codebook": self.codebook_size,
                "codes used": len(np.unique(self.ids)),
                "codebook usage %": round(100 * self.codebook_usage, 2),
            }
        if self.kind == "bridge":
            used = self.levels_used
            return {
                "levels per dim": self.levels,
                "levels used (min/mean/max over dims)": f"{used.min()} / {used.mean():.1f} / {used.max()}",
                "level usage %": round(100 * float(used.mean()) / self.levels, 2),
            }
        flat = self.ids.reshape(-1, self.ids.shape[-1])  # (h*w, d): one latent vector per token
        return {
            "latent dims": flat.shape[1],
            "mean": round(float(flat.mean()), 3),
            "std": round(float(flat.std()), 3),
            "range": f"[{flat.min():.2f}, {flat.max():.2f}]",
        }


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
    """Encode ``image`` (see ``load_image``) with a tokenizer of any kind (VQ, KL, bridge), decode it back,
    and measure the result: codebook usage for VQ, the levels each dimension uses for a bridge, and the
    latents themselves (see ``Reconstruction.summary``) for a KL tokenizer."""
    from arstudio.images import images_to_tensor, psnr, tensor_to_images

    side = tokenizer.config.resolution
    original = square_resize(load_image(image), side)
    device = next(tokenizer.parameters()).device
    tokens = tokenizer.encode(images_to_tensor(original[None]).to(device))
    pixels = tensor_to_images(tokenizer.decode(tokens).float())[0]
    kind = getattr(tokenizer, "kind", "discrete")
    found = tokens[0].cpu()
    result = Reconstruction(
        original=original, reconstruction=pixels, ids=found.numpy(), psnr=psnr(original, pixels), kind=kind
    )
    if kind == "discrete":
        from arstudio.tokenizers.vq import codebook_usage

        result.codebook_size = tokenizer.codebook_size
        result.codebook_usage = codebook_usage(tokens, tokenizer.codebook_size)["usage"]
    elif kind == "bridge":
        result.levels = tokenizer.config.levels
        per_dim = found.reshape(-1, found.shape[-1])  # (h*w, d) level ids
        result.levels_used = np.array([len(torch.unique(per_dim[:, i])) for i in range(per_dim.shape[1])])
    else:
        result.ids = found.float().numpy()
    return result
