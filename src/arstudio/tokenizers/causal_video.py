"""A small causal video tokenizer in the style of Phenaki's C-ViViT, with continuous (KL) latents.

Time is split into *slices*: the first frame alone (an image patch embedding), then tubelets of
``temporal_patch`` frames (a tubelet embedding), so a clip of 1 + k * temporal_patch frames has 1 + k slices
and the first frame is encoded exactly like an image. Each slice becomes a grid of ``patch`` x ``patch``
tokens. Encoder: spatial transformer blocks inside each slice (bidirectional), then temporal blocks that
are *causal* across slices at each grid position; so slice s's latents depend only on frames up to s, and
clips of any length (1 + k * temporal_patch) encode the same prefix the same way. The latents are a
diagonal Gaussian (mean, log-variance) with a small KL weight, as for ``tokenizers/kl.py``. The decoder
mirrors it (causal temporal blocks, spatial blocks, linear un-patchify per slice type).

Attention is the shared ``nn/transformer.py: TransformerBlock`` (the only attention code): spatial
blocks get 2D RoPE and no mask, temporal blocks a 1D RoPE and a causal mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from arstudio.io import PretrainedMixin
from arstudio.nn.rope import rope_2d_table, rope_axes_table
from arstudio.nn.transformer import BackboneConfig, RMSNorm, TransformerBlock


@dataclass(frozen=True)
class CausalVideoConfig:
    resolution: int = 32
    patch: int = 4  # pixels per token side
    temporal_patch: int = 2  # frames per tubelet after the first frame
    latent_dim: int = 8
    dim: int = 96
    heads: int = 4
    spatial_layers: int = 2
    temporal_layers: int = 2
    kl_weight: float = 1e-4

    def __post_init__(self):
        if self.resolution % self.patch:
            raise ValueError(f"patch={self.patch} must divide resolution={self.resolution}")
        if self.temporal_patch < 1:
            raise ValueError(f"temporal_patch={self.temporal_patch} must be >= 1")

    @property
    def grid_size(self) -> int:
        return self.resolution // self.patch

    def slices(self, num_frames: int) -> int:
        if num_frames < 1 or (num_frames - 1) % self.temporal_patch:
            raise ValueError(
                f"a clip of {num_frames} frames does not split into the first frame + tubelets of "
                f"{self.temporal_patch}: use 1 + k * {self.temporal_patch} frames"
            )
        return 1 + (num_frames - 1) // self.temporal_patch


class _Stack(nn.Module):
    """Spatial blocks over each slice's grid, then causal temporal blocks over slices at each position."""

    def __init__(self, config: CausalVideoConfig, order: tuple[str, str]):
        super().__init__()
        block = BackboneConfig(dim=config.dim, n_head=config.heads, grid_size=config.grid_size, prefix_len=0)
        self.order = order
        self.spatial = nn.ModuleList(TransformerBlock(block) for _ in range(config.spatial_layers))
        self.temporal = nn.ModuleList(TransformerBlock(block) for _ in range(config.temporal_layers))
        self.norm = RMSNorm(config.dim, block.norm_eps)
        self.register_buffer(
            "spatial_rope", rope_2d_table(config.grid_size, block.head_dim, 0), persistent=False
        )
        self.head_dim = block.head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, S, N, dim) -> same shape."""
        b, s, n, _ = x.shape
        for part in self.order:
            if part == "spatial":
                h = rearrange(x, "b s n d -> (b s) n d")  # one sequence over the grid per slice
                for layer in self.spatial:
                    h = layer(
                        h, self.spatial_rope, mask=torch.ones(1, 1, n, n, dtype=torch.bool, device=x.device)
                    )
                x = rearrange(h, "(b s) n d -> b s n d", b=b)
            else:
                h = rearrange(x, "b s n d -> (b n) s d")  # one sequence over slices per grid position
                coords = torch.arange(s, dtype=torch.float32, device=x.device)[:, None]
                rope = rope_axes_table(coords, (self.head_dim // 2,))
                causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()[None, None]
                for layer in self.temporal:
                    h = layer(h, rope, mask=causal)
                x = rearrange(h, "(b n) s d -> b s n d", b=b)
        return self.norm(x)


class CausalVideoTokenizer(PretrainedMixin, nn.Module):
    """Clips (B, T, 3, H, W) in [-1, 1], T = 1 + k * temporal_patch <-> latents (B, 1 + k, h, w, d)."""

    config_class = CausalVideoConfig
    kind = "continuous"

    def __init__(self, config: CausalVideoConfig):
        super().__init__()
        self.config = config
        p, pt, d = config.patch, config.temporal_patch, config.dim
        self.first_embed = nn.Linear(3 * p * p, d)
        self.tubelet_embed = nn.Linear(3 * pt * p * p, d)
        self.encoder = _Stack(config, ("spatial", "temporal"))
        self.to_moments = nn.Linear(d, 2 * config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, d)
        self.decoder = _Stack(config, ("temporal", "spatial"))
        self.first_out = nn.Linear(d, 3 * p * p)
        self.tubelet_out = nn.Linear(d, 3 * pt * p * p)

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    def check_video(self, video: torch.Tensor) -> int:
        r = self.config.resolution
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or tuple(video.shape[2:]) != (3, r, r):
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"video must be a float tensor (B, T, 3, {r}, {r}) in [-1, 1]; got {shape}")
        return self.config.slices(video.shape[1])

    def _patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, S, F, 3, H, W) -> (B, S, N, F * 3 * p * p): each token's pixels over the slice's F frames."""
        p = self.config.patch
        return rearrange(frames, "b s f c (gh ph) (gw pw) -> b s (gh gw) (f c ph pw)", ph=p, pw=p)

    def _unpatchify(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, S, N, F * 3 * p * p) -> (B, S * F, 3, H, W)."""
        p, g = self.config.patch, self.config.grid_size
        pattern = "b s (gh gw) (f c ph pw) -> b (s f) c (gh ph) (gw pw)"
        return rearrange(tokens, pattern, gh=g, f=frames, c=3, ph=p, pw=p)

    def moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, S, N, latent_dim)."""
        self.check_video(video)
        pt = self.config.temporal_patch
        first = self.first_embed(self._patchify(video[:, :1, None]))  # (B, 1, N, dim)
        parts = [first]
        if video.shape[1] > 1:
            rest = video[:, 1:].reshape(video.shape[0], -1, pt, *video.shape[2:])  # (B, k, pt, 3, H, W)
            parts.append(self.tubelet_embed(self._patchify(rest)))
        mean, logvar = self.to_moments(self.encoder(torch.cat(parts, dim=1))).chunk(2, dim=-1)
        return mean, logvar.clamp(-20.0, 10.0)

    def decode_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, S, N, latent_dim) -> video (B, 1 + (S - 1) * temporal_patch, 3, H, W)."""
        h = self.decoder(self.from_latent(latents))
        video = [self._unpatchify(self.first_out(h[:, :1]), 1)]
        if h.shape[1] > 1:
            video.append(self._unpatchify(self.tubelet_out(h[:, 1:]), self.config.temporal_patch))
        return torch.cat(video, dim=1)

    def loss(
        self, video: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        mean, logvar = self.moments(video)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        recon = self.decode_tokens(mean + (0.5 * logvar).exp() * noise)
        mse = F.mse_loss(recon, video)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        return mse + self.config.kl_weight * kl, {"mse": mse.item(), "kl": kl.item()}

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> posterior-mean latents (B, S, h, w, d)."""
        mean, _ = self.moments(video)
        g = self.config.grid_size
        return mean.reshape(*mean.shape[:2], g, g, mean.shape[-1])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, S, h, w, d) -> video (B, 1 + (S - 1) * temporal_patch, 3, H, W), about [-1, 1]."""
        g, d = self.config.grid_size, self.config.latent_dim
        if latents.ndim != 5 or tuple(latents.shape[2:]) != (g, g, d):
            raise ValueError(f"latents must be (B, slices, {g}, {g}, {d}); got {tuple(latents.shape)}")
        return self.decode_tokens(latents.flatten(2, 3))
