"""Discrete VQ tokenizer in LlamaGen's layout (VQGAN-style conv encoder/decoder, l2-normalised codebook).

Module names follow LlamaGen's ``tokenizer/tokenizer_image/vq_model.py`` (``encoder.conv_blocks.0.res.0``,
``quant_conv``, ``quantize.embedding``, ...) so its official checkpoints map onto this class key for key.
Reference: Sun et al., "Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation" (2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arstudio.checks import check_id_range
from arstudio.io import PretrainedMixin


@dataclass(frozen=True)
class VQConfig:
    resolution: int = 32  # input images are resolution x resolution
    in_channels: int = 3
    ch: int = 32  # base width; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 2, 2)  # len(ch_mult) - 1 downsamplings by 2
    encoder_res_blocks: int = 1
    decoder_res_blocks: int = 2  # LlamaGen's decoder has one more ResBlock per level than its encoder
    z_channels: int = 64
    codebook_size: int = 512
    codebook_embed_dim: int = 8
    commit_beta: float = 0.25
    norm_groups: int = 8  # LlamaGen uses 32; small widths need fewer groups
    dropout: float = 0.0
    # Fields no weight depends on (the encoder and decoder are convolutional, attention has no positions):
    # weights trained at 32 px load into a 64-px config (pipelines/loading.py; a 256-token shapes preset is meant to).
    WEIGHT_FREE: ClassVar[tuple[str, ...]] = ("resolution",)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        return self.resolution // self.downsample


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions (used only at the lowest resolution)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        # (B, C, H, W) -> (B, 1, H*W, C): one head attending over the flattened grid.
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(-1, -2) for t in (self.q(n), self.k(n), self.v(n)))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric pad (right/bottom only), as in VQGAN/LlamaGen, so H/2 x W/2 comes out exactly.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult, g = cfg.ch, cfg.ch_mult, cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for level, m in enumerate(mult):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.encoder_res_blocks):
                block.res.append(ResnetBlock(block_in, ch * m, g, cfg.dropout))
                block_in = ch * m
                if level == len(mult) - 1:
                    block.attn.append(AttnBlock(block_in, g))
            if level != len(mult) - 1:
                block.downsample = Downsample(block_in)
            self.conv_blocks.append(block)
        self.mid = nn.ModuleList(
            [ResnetBlock(block_in, block_in, g), AttnBlock(block_in, g), ResnetBlock(block_in, block_in, g)]
        )
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, block in enumerate(self.conv_blocks):
            for i, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[i](h)
            if level != len(self.conv_blocks) - 1:
                h = block.downsample(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult, g = cfg.ch, cfg.ch_mult, cfg.norm_groups
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList(
            [ResnetBlock(block_in, block_in, g), AttnBlock(block_in, g), ResnetBlock(block_in, block_in, g)]
        )
        self.conv_blocks = nn.ModuleList()
        for level, m in enumerate(reversed(mult)):  # level 0 is the lowest resolution
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.decoder_res_blocks):
                block.res.append(ResnetBlock(block_in, ch * m, g, cfg.dropout))
                block_in = ch * m
                if level == 0:
                    block.attn.append(AttnBlock(block_in, g))
            if level != len(mult) - 1:
                block.upsample = Upsample(block_in)
            self.conv_blocks.append(block)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for layer in self.mid:
            h = layer(h)
        for level, block in enumerate(self.conv_blocks):
            for i, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[i](h)
            if level != len(self.conv_blocks) - 1:
                h = block.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest code on the unit sphere, straight-through gradients, codebook + commitment losses."""

    def __init__(self, codebook_size: int, dim: int, beta: float):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(codebook_size, dim)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)

    def codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight, dim=-1)

    def forward(self, z: torch.Tensor):
        """z: (B, D, h, w) -> (z_q (B, D, h, w), ids (B, h, w), loss)."""
        z = F.normalize(z.permute(0, 2, 3, 1), dim=-1)  # (B, h, w, D) on the unit sphere
        codes = self.codebook()
        # For unit vectors argmin of the distance is argmax of the dot product.
        ids = torch.einsum("bhwd,nd->bhwn", z, codes).argmax(dim=-1)
        z_q = codes[ids]
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        z_q = z + (z_q - z).detach()  # straight-through estimator
        return z_q.permute(0, 3, 1, 2).contiguous(), ids, loss


class VQTokenizer(PretrainedMixin, nn.Module):
    """Images (B, 3, H, W) in [-1, 1] <-> token ids (B, h, w) in [0, codebook_size)."""

    config_class = VQConfig
    kind = "discrete"

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_embed_dim, config.commit_beta)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    def codebook_vectors(self) -> torch.Tensor:
        """(codebook_size, dim) vectors as the decoder sees them (l2-normalised): LANTERN's latent space."""
        return self.quantize.codebook()

    def codebook_parameter(self) -> torch.Tensor:
        """The codebook as stored, before normalisation (V, dim): what pairing fingerprints hash."""
        return self.quantize.embedding.weight

    def check_images(self, images: torch.Tensor) -> None:
        r, c = self.config.resolution, self.config.in_channels
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor (B, {c}, {r}, {r}); got {shape}")
        if images.shape[1] != c:
            raise ValueError(f"images have {images.shape[1]} channels; this tokenizer takes {c} (RGB)")
        if tuple(images.shape[2:]) != (r, r):
            raise ValueError(f"images are {tuple(images.shape[2:])} pixels; this tokenizer takes ({r}, {r})")

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        check_id_range(ids, self.codebook_size)  # no host read for a pipeline's own ids (checks.py)

    def forward(self, images: torch.Tensor):
        """Training pass: (reconstruction, ids, vq_loss)."""
        self.check_images(images)
        z_q, ids, vq_loss = self.quantize(self.quant_conv(self.encoder(images)))
        return self.decoder(self.post_quant_conv(z_q)), ids, vq_loss

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> ids (B, h, w) int64."""
        self.check_images(images)
        return self.quantize(self.quant_conv(self.encoder(images)))[1]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> unit-norm codebook vectors (B, h, w, D) (used by LANTERN and Distilled Decoding)."""
        self.check_ids(ids)
        return self.quantize.codebook()[ids]

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h, w) -> images (B, 3, H, W) in about [-1, 1] (not clamped)."""
        return self.decode_vectors(self.embed(ids))

    @torch.no_grad()
    def decode_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """Codebook-space vectors (B, h, w, D), on the codebook or not (distilled decoding regresses them)
        -> images (B, 3, H, W)."""
        g, d = self.grid_size, self.config.codebook_embed_dim
        if vectors.ndim != 4 or tuple(vectors.shape[1:]) != (g, g, d):
            raise ValueError(f"vectors must be (B, {g}, {g}, {d}), got {tuple(vectors.shape)}")
        z_q = vectors.to(self.post_quant_conv.weight.dtype).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z_q))


def codebook_usage(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Fraction of codes used and the perplexity of the code histogram (= codebook_size when uniform)."""
    counts = torch.bincount(ids.reshape(-1).long(), minlength=codebook_size).double()
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return {"usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}
