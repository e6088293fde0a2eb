"""Small MLPs for per-token heads.

``AdaLNMLP`` is the denoiser of MAR's diffusion loss (``SimpleMLPAdaLN``'s design): input linear -> residual
blocks whose LayerNorm output is shifted/scaled by the condition (AdaLN) and whose branch is gated ->
AdaLN output layer. The condition is timestep embedding + linear(z). Modulation and output layers start at
zero (DiT), so an untrained block is the identity and an untrained head predicts 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (M,) float times -> (M, dim) (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class AdaLNBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(
        self, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        """h (M, width) with this block's modulation of the condition (``AdaLNMLP.modulations``)."""
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class AdaLNMLP(nn.Module):
    """(x (M, d), t (M,), z (M, cond_dim)) -> (M, out_dim) (``out_dim`` d unless given: MAR's released heads
    predict 2 d, the noise and a learned variance)."""

    def __init__(
        self, token_dim: int, cond_dim: int, width: int, depth: int, freq_dim: int = 256, out_dim: int = 0
    ):
        super().__init__()
        self.freq_dim = freq_dim
        self.time_embed = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.output = nn.Linear(width, out_dim or token_dim)
        for layer in (self.final_modulation[1], self.output):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, self.modulations(t, z, x.dtype))

    def modulations(self, t: torch.Tensor, z: torch.Tensor, dtype: torch.dtype | None = None) -> list:
        """The condition's whole part of the net for times t (M,) and conditions z (M, cond_dim): every
        block's (shift, scale, gate) and the output layer's (shift, scale), each (M, width). A sampler whose z
        is fixed for a token and whose times are known computes them for all its steps at once."""
        y = self.time_embed(timestep_embedding(t, self.freq_dim).to(dtype or z.dtype)) + self.cond_embed(z)
        return [block.modulation(y).chunk(3, dim=-1) for block in self.blocks] + [
            self.final_modulation(y).chunk(2, dim=-1)
        ]

    def denoise(self, x: torch.Tensor, modulations: list) -> torch.Tensor:
        """x (M, d) and ``modulations(t, z)`` (rows matching x) -> the prediction (M, d)."""
        h = self.input_proj(x)
        for block, (shift, scale, gate) in zip(self.blocks, modulations, strict=False):
            h = block(h, shift, scale, gate)
        shift, scale = modulations[-1]
        return self.output(self.final_norm(h) * (1 + scale) + shift)


class ResidualMLP(nn.Module):
    """Pre-norm residual MLP blocks (M, ..., width) -> same shape; the trunk of the per-dimension head."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = h + block(h)
        return self.norm(h)
