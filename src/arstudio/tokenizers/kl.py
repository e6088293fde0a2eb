"""Continuous tokenizer: a KL-regularised autoencoder (diffusers' ``AutoencoderKL``) with a scaling factor.

Images (B, 3, H, W) in [-1, 1] <-> a grid of d-dim latent vectors (B, h, w, d), already multiplied by
``scaling_factor`` so the generator sees roughly unit-variance values (MAR: 0.2325 for its KL-16 VAE;
ours is measured on the training data after training, see ``training/kl_tokenizer.py``).

The autoencoder sits under ``self.vae`` with diffusers' own module names, so a diffusers checkpoint's keys
are ours with a ``vae.`` prefix (``arstudio.convert.kl`` loads official checkpoints). diffusers is imported
only when a model is built, which keeps ``import arstudio`` light.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arstudio.io import PretrainedMixin


@dataclass(frozen=True)
class KLConfig:
    resolution: int = 32
    in_channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # len - 1 downsamplings by 2
    layers_per_block: int = 1
    latent_channels: int = 8  # d, the token dimension
    norm_num_groups: int = 8
    scaling_factor: float = 1.0  # latents are multiplied by this after encoding (set after training)
    kl_weight: float = 1e-5  # training only: weight of the per-element KL term against the per-pixel l2
    encoder_attention: bool = False  # attention blocks in the encoder's last level (MAR's KL-16 has them)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def grid_size(self) -> int:
        return self.resolution // self.downsample


def build_autoencoder(config: KLConfig):
    """diffusers ``AutoencoderKL`` for ``config`` (mid-block attention at the lowest resolution, as in LDM)."""
    from diffusers import AutoencoderKL

    levels = len(config.block_out_channels)
    last = "AttnDownEncoderBlock2D" if config.encoder_attention else "DownEncoderBlock2D"
    return AutoencoderKL(
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        down_block_types=("DownEncoderBlock2D",) * (levels - 1) + (last,),
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.resolution,
        scaling_factor=config.scaling_factor,
    )


class KLTokenizer(PretrainedMixin, nn.Module):
    """Images (B, 3, H, W) in [-1, 1] <-> scaled latents (B, h, w, d) (channels last: one vector per token)."""

    config_class = KLConfig
    kind = "continuous"

    def __init__(self, config: KLConfig):
        super().__init__()
        self.config = config
        self.vae = build_autoencoder(config)

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    @property
    def token_dim(self) -> int:
        return self.config.latent_channels

    def check_images(self, images: torch.Tensor) -> None:
        r, c = self.config.resolution, self.config.in_channels
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (c, r, r):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, {c}, {r}, {r}) in [-1, 1]; got {shape}")

    def check_latents(self, latents: torch.Tensor) -> None:
        g, d = self.grid_size, self.token_dim
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            what = latents.dtype if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(
                f"latents must be a float tensor (B, {g}, {g}, {d}); got {what} (discrete token ids "
                "belong to a VQ tokenizer)"
            )
        if latents.ndim != 4 or tuple(latents.shape[1:]) != (g, g, d):
            raise ValueError(f"latents must be (B, {g}, {g}, {d}); got {tuple(latents.shape)}")

    def posterior(self, images: torch.Tensor):
        """diffusers ``DiagonalGaussianDistribution`` over *unscaled* latents (B, d, h, w)."""
        self.check_images(images)
        return self.vae.encode(images).latent_dist

    def decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d, h, w) unscaled latents -> images (B, 3, H, W); the training path."""
        return self.vae.decode(z).sample

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents (B, h, w, d): the posterior mean, or a posterior sample
        when a ``generator`` is given (MAR trains on samples)."""
        dist = self.posterior(images)
        z = dist.mean if generator is None else dist.sample(generator=generator)
        return (z * self.config.scaling_factor).permute(0, 2, 3, 1).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, h, w, d) -> images (B, 3, H, W) in about [-1, 1] (not clamped)."""
        self.check_latents(latents)
        z = latents.permute(0, 3, 1, 2).to(self.vae.dtype) / self.config.scaling_factor
        return self.decode_unscaled(z)
