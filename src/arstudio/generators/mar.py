"""MAR (Li et al. 2024, LTH14/mar): masked autoregressive generation of continuous tokens.

Not our causal backbone: an MAE-style bidirectional encoder-decoder over the token grid. The encoder sees
``buffer_size`` copies of the class embedding (the "buffer") and the tokens known so far; the decoder puts a
learned mask token at every unknown position and returns one conditioning vector z per position, with which
a per-token diffusion head (``MARDiffusionHead``, MAR's ``SimpleMLPAdaLN``) denoises that position's token.
Which positions are predicted at each iteration (a random order, a cosine schedule over ``num_iter``) is
the sampler's business: ``decoding/mar.py``. Here: ``forward(tokens, known, cond)`` -> z only.

Parameter names are the official ones (``encoder_blocks.0.attn.qkv``, ``fake_latent``, ...) except the head's
(our ``AdaLNMLP``; ``convert/mar.py`` maps ``diffloss.net.*``). Inference only: no training loss is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arstudio.generators.adaln_mlp import AdaLNMLP
from arstudio.io import PretrainedMixin
from arstudio.nn.transformer import ViTBlock


@dataclass(frozen=True)
class MARConfig:
    token_dim: int = 16  # the KL-16 VAE's latent channels (patch size 1)
    grid_size: int = 16  # tokens per side: 256 px / stride 16
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    decoder_dim: int = 768
    decoder_depth: int = 12
    decoder_heads: int = 12
    mlp_ratio: float = 4.0
    buffer_size: int = 64  # class-embedding slots in front of the tokens
    num_classes: int = 1000
    head_width: int = 1024
    head_depth: int = 6
    num_timesteps: int = 1000  # the head's training diffusion: cosine schedule of this many steps
    condition: str = "class"

    def __post_init__(self):
        for name in (
            "token_dim",
            "grid_size",
            "encoder_depth",
            "decoder_depth",
            "buffer_size",
            "num_classes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        for dim, heads in (("encoder_dim", "encoder_heads"), ("decoder_dim", "decoder_heads")):
            if getattr(self, dim) % getattr(self, heads):
                raise ValueError(
                    f"{dim}={getattr(self, dim)} must be divisible by {heads}={getattr(self, heads)}"
                )
        if self.condition != "class":
            raise ValueError(
                f"condition={self.condition!r} is not allowed: MAR is class-conditional ('class')"
            )

    @property
    def seq_len(self) -> int:
        return self.grid_size**2


class MARDiffusionHead(nn.Module):
    """MAR's per-token denoiser: (x_t (M, d), t (M,) integer timesteps of the training schedule, z (M, dim)) ->
    (M, 2 d): the predicted noise, then the learned variance's interpolation value v in [-1, 1] between the
    posterior variance and beta (improved DDPM's "learned range"). Sampled in ``decoding/mar_head.py``."""

    kind = "diffusion"

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int, num_timesteps: int):
        super().__init__()
        self.token_dim = token_dim
        self.num_timesteps = num_timesteps
        self.net = AdaLNMLP(token_dim, cond_dim, width, depth, out_dim=2 * token_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t.float(), z)


class MARGenerator(PretrainedMixin, nn.Module):
    """MAR's encoder-decoder and diffusion head (``mar_base`` / ``mar_large`` / ``mar_huge`` are configs)."""

    config_class = MARConfig
    token_kind = "continuous"
    control_encoder = None  # no control: the pipeline's control checks read this
    # Each iteration's head call has its own number of rows (the positions it predicts): compiled with static
    # shapes it would compile once per iteration, so decoding/compiled.py leaves it eager.
    head_rows_fixed = False

    def __init__(self, config: MARConfig):
        super().__init__()
        self.config = config
        c, length = config, config.buffer_size + config.seq_len
        self.class_emb = nn.Embedding(c.num_classes, c.encoder_dim)
        self.fake_latent = nn.Parameter(torch.zeros(1, c.encoder_dim))  # the null class, for guidance
        self.z_proj = nn.Linear(c.token_dim, c.encoder_dim)
        self.z_proj_ln = nn.LayerNorm(c.encoder_dim, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, length, c.encoder_dim))
        self.encoder_blocks = nn.ModuleList(
            ViTBlock(c.encoder_dim, c.encoder_heads, c.mlp_ratio) for _ in range(c.encoder_depth)
        )
        self.encoder_norm = nn.LayerNorm(c.encoder_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(c.encoder_dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, length, c.decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            ViTBlock(c.decoder_dim, c.decoder_heads, c.mlp_ratio) for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_dim, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len, c.decoder_dim))
        self.head = MARDiffusionHead(c.token_dim, c.decoder_dim, c.head_width, c.head_depth, c.num_timesteps)
        for param in (self.class_emb.weight, self.fake_latent, self.mask_token):
            nn.init.normal_(param, std=0.02)
        for param in (self.encoder_pos_embed_learned, self.decoder_pos_embed_learned):
            nn.init.normal_(param, std=0.02)
        nn.init.normal_(self.diffusion_pos_embed_learned, std=0.02)

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def class_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B,) -> the encoder's buffer content (B, encoder_dim)."""
        return self.class_emb(labels)

    def null_embedding(self, batch: int) -> torch.Tensor:
        """The unconditional buffer content (B, encoder_dim): MAR's ``fake_latent``."""
        return self.fake_latent.expand(batch, -1)

    def encode(self, tokens: torch.Tensor, known: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, d) (unknown positions are ignored), known (B, K) positions in increasing order, cond
        (B, encoder_dim) -> (B, buffer + K, encoder_dim). Only the buffer and the known tokens are encoded."""
        b, buffer = known.shape[0], self.config.buffer_size
        pos = self.encoder_pos_embed_learned[0]  # (buffer + N, dim)
        picked = tokens.gather(1, known[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, K, d)
        x = torch.cat(
            [cond[:, None].expand(b, buffer, -1) + pos[:buffer], self.z_proj(picked) + pos[buffer + known]], 1
        )
        x = self.z_proj_ln(x)
        for block in self.encoder_blocks:
            x = block(x)
        return self.encoder_norm(x)

    def decode(self, encoded: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """The encoder's rows back at their positions, mask tokens elsewhere, through the decoder -> z (B, N,
        decoder_dim), the head's condition for every position."""
        x = self.decoder_embed(encoded)
        b, buffer, dim = x.shape[0], self.config.buffer_size, x.shape[-1]
        slots = torch.arange(buffer, device=x.device).expand(b, -1)
        index = torch.cat([slots, buffer + known], 1)[..., None].expand(-1, -1, dim)  # (B, buffer + K, dim)
        full = self.mask_token.to(x.dtype).expand(b, buffer + self.seq_len, -1).scatter(1, index, x)
        x = full + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_norm(x)[:, buffer:] + self.diffusion_pos_embed_learned

    def forward(self, tokens: torch.Tensor, known: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One MAR pass: the canvas (B, N, d), the known positions (B, K) (sorted), the class embeddings (B,
        encoder_dim) -> z (B, N, decoder_dim)."""
        d = self.config.token_dim
        if tokens.ndim != 3 or tokens.shape[1:] != (self.seq_len, d) or not tokens.is_floating_point():
            raise ValueError(
                f"tokens must be float (B, {self.seq_len}, {d}); got {tokens.dtype} {tuple(tokens.shape)}"
            )
        return self.decode(self.encode(tokens, known, cond), known)
