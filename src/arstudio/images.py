"""Pixel conventions: uint8 (B, H, W, 3) arrays on disk and in outputs, float (B, 3, H, W) in [-1, 1] in models;
and PSNR between uint8 images (a pixel comparison that tokenizers, reconstruction and evaluation all use)."""

from __future__ import annotations

import numpy as np
import torch


def images_to_tensor(images) -> torch.Tensor:
    """uint8 (B, H, W, 3) numpy -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(x: torch.Tensor):
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) numpy, clamped."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


# PSNR of identical images is infinite; a finite cap keeps batch means and tables readable.
PSNR_CAP_DB = 100.0


def as_image_batch(images, name: str = "images") -> np.ndarray:
    """uint8 (H, W, 3) or (N, H, W, 3) -> (N, H, W, 3), with a clear error for anything else."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (N, H, W, 3) or (H, W, 3), got {images.shape}")
    return images


def psnr(a, b) -> float:
    """Mean over the batch of per-image PSNR in dB (data range 255), each capped at ``PSNR_CAP_DB``."""
    a, b = as_image_batch(a, "a"), as_image_batch(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff**2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):  # mse == 0 gives inf, capped just below
        values = 10.0 * np.log10(255.0**2 / mse)
    return float(np.minimum(values, PSNR_CAP_DB).mean())
