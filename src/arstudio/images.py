"""Pixel conventions: uint8 (B, H, W, 3) arrays on disk and in outputs, float (B, 3, H, W) in [-1, 1] in models."""

from __future__ import annotations

import torch


def images_to_tensor(images) -> torch.Tensor:
    """uint8 (B, H, W, 3) numpy -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(x: torch.Tensor):
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) numpy, clamped."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
