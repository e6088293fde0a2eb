"""Heads turn a backbone hidden state into a distribution over the next token.

- ``CategoricalHead``: codebook logits (discrete VQ tokens).
- ``DiffusionHead``: MAR's per-token diffusion loss. A small AdaLN MLP denoises one d-dim token at a time,
  conditioned on the hidden state z (no attention across tokens); epsilon-prediction with a cosine schedule
  of ``num_timesteps`` training steps; sampling uses fewer, respaced steps (``decoding/continuous.py``).
- ``FlowHead``: the same MLP predicting a rectified-flow velocity (xAR/FAR style), sampled with Euler steps.
- ``DimensionwiseHead``: TokenBridge's head. A token's d quantised dimensions are predicted one by one,
  each from z and the dimensions before it.

Heads only compute (predictions and training losses); every sampling loop lives in ``arstudio.decoding``.
Training noise comes from an explicit ``torch.Generator`` when one is given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arstudio.checks import check_id_range
from arstudio.generators import draws
from arstudio.generators.adaln_mlp import AdaLNMLP, ResidualMLP
from arstudio.nn.rope import rope_axes_table
from arstudio.nn.transformer import BackboneConfig, RMSNorm, TransformerBlock

CONTINUOUS_HEADS = ("diffusion", "flow", "bridge")
BRIDGE_ARCHS = ("mlp", "transformer")  # DimensionwiseHead's layers over a token's dimensions


class CategoricalHead(nn.Module):
    kind = "categorical"

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.output = nn.Linear(dim, vocab_size, bias=False)
        nn.init.zeros_(self.output.weight)  # LlamaGen: start from uniform predictions

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, dim) -> logits (B, T, vocab) in fp32 (sampling needs the precision)."""
        return self.output(hidden).float()


def cosine_alphas_cumprod(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1 of the improved-DDPM cosine schedule (betas clipped at ``max_beta``), float64."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


class DiffusionHead(nn.Module):
    """p(x | z) for one d-dim token by per-token DDPM (epsilon prediction, cosine schedule).

    ``batch_mul``: each (target, z) pair is trained ``batch_mul`` times with independent t and noise (MAR's
    ``diffusion_batch_mul``: the head is cheap next to the backbone pass that made z).
    """

    kind = "diffusion"

    def __init__(
        self,
        token_dim: int,
        cond_dim: int,
        width: int,
        depth: int,
        num_timesteps: int = 1000,
        batch_mul: int = 4,
    ):
        super().__init__()
        self.token_dim = token_dim
        self.num_timesteps = num_timesteps
        self.batch_mul = batch_mul
        self.net = AdaLNMLP(token_dim, cond_dim, width, depth)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(num_timesteps), persistent=False)
        # The schedule as host numbers for samplers, rounded to float32 once: the buffer follows the model's
        # dtype, and in bfloat16 the last steps' alpha-bar round to 1 (a zero noise level to divide by).
        self.alphas_cumprod_list = cosine_alphas_cumprod(num_timesteps).float().tolist()

    def _apply(self, fn, *args, **kwargs):
        """``.to()``/``.half()``/... move the schedule with the module but keep it float64: cast to bf16, ᾱ_t
        near 1 rounds to 1 and the reverse step divides by 1 - ᾱ_t = 0."""
        super()._apply(fn, *args, **kwargs)
        self.alphas_cumprod = cosine_alphas_cumprod(self.num_timesteps).to(self.alphas_cumprod.device)
        return self

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Noisy tokens (M, d) at integer timesteps t (M,), conditions z (M, cond_dim) -> predicted noise (M, d)."""
        return self.net(x_t, t.float(), z)

    def loss(self, target: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None):
        """target (M, d), z (M, cond_dim) -> mean squared error of the noise prediction."""
        target, z = target.repeat(self.batch_mul, 1), z.repeat(self.batch_mul, 1)
        t = draws.randint(self.num_timesteps, (target.shape[0],), generator, z.device)
        noise = draws.randn(target.shape, generator, target.device, target.dtype)
        abar = self.alphas_cumprod.to(target.dtype)[t][:, None]
        x_t = abar.sqrt() * target + (1 - abar).sqrt() * noise
        return F.mse_loss(self(x_t, t, z), noise)


class FlowHead(nn.Module):
    """p(x | z) for one d-dim token by rectified flow: x_t = (1 - t) x + t ε, the net predicts v = ε - x.

    Training t is logit-normal (SD3/xAR), which spends capacity on mid noise levels. The time fed to the MLP
    is t * 1000 so it shares the diffusion head's timestep embedding scale.
    """

    kind = "flow"

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int, batch_mul: int = 4):
        super().__init__()
        self.token_dim = token_dim
        self.batch_mul = batch_mul
        self.net = AdaLNMLP(token_dim, cond_dim, width, depth)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_t (M, d) at times t (M,) in [0, 1] (1 = pure noise), z (M, cond_dim) -> velocity (M, d)."""
        return self.net(x_t, t.float() * 1000, z)

    def loss(self, target: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None):
        target, z = target.repeat(self.batch_mul, 1), z.repeat(self.batch_mul, 1)
        t = torch.sigmoid(draws.randn(target.shape[0], generator, z.device))
        noise = draws.randn(target.shape, generator, target.device, target.dtype)
        x_t = (1 - t[:, None]) * target + t[:, None] * noise
        return F.mse_loss(self(x_t, t, z), noise - target)


class DimensionTransformer(nn.Module):
    """A small causal transformer over a token's d dimensions (TokenBridge's per-dimension head): the
    backbone's ``TransformerBlock``s with 1D RoPE over the dimension index; (M, L <= d, width) -> same."""

    def __init__(self, width: int, depth: int, heads: int, length: int):
        super().__init__()
        cfg = BackboneConfig(dim=width, n_layer=depth, n_head=heads, multiple_of=32)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(depth))
        self.norm = RMSNorm(width, cfg.norm_eps)
        coords = torch.arange(length, dtype=torch.float32)[:, None]
        self.register_buffer("rope", rope_axes_table(coords, (cfg.head_dim // 2,)), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        rope = self.rope[: h.shape[1]]
        for layer in self.layers:
            h = layer(h, rope)  # causal: dimension j sees dimensions <= j
        return self.norm(h)


class DimensionwiseHead(nn.Module):
    """TokenBridge's per-dimension AR head: p(i_1..i_d | z) = prod_j p(i_j | z, i_<j), each over ``levels``.

    ``arch="mlp"``: the input for dimension j is proj(z) + pos_j + sum_{k<j} E[k, i_k] (the previous
    dimensions enter as a sum of (dimension, level) embeddings, so teacher forcing is one parallel pass, an
    exclusive cumsum) through residual MLP blocks applied to each dimension on its own.
    ``arch="transformer"``: TokenBridge's small causal transformer over the dimensions; position j holds
    proj(z) + E[j - 1, i_{j-1}] (nothing at j = 0) and attends to the positions before it. Both teacher-force
    in one pass; sampling runs d cheap passes.
    """

    kind = "bridge"

    def __init__(
        self,
        token_dim: int,
        cond_dim: int,
        width: int,
        depth: int,
        levels: int,
        arch: str = "mlp",
        heads: int = 4,
    ):
        super().__init__()
        if arch not in BRIDGE_ARCHS:
            raise ValueError(f"arch={arch!r} is unknown; allowed: {BRIDGE_ARCHS}")
        self.token_dim = token_dim
        self.levels = levels
        self.arch = arch
        self.cond_proj = nn.Linear(cond_dim, width)
        self.dim_pos = nn.Parameter(torch.zeros(token_dim, width))
        self.level_embed = nn.Embedding(
            token_dim * levels, width
        )  # row k * levels + i: dimension k at level i
        if arch == "mlp":
            self.net = ResidualMLP(width, depth)
        else:
            self.net = DimensionTransformer(width, depth, heads, token_dim)
        self.output = nn.Linear(width, levels)

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.is_floating_point() or ids.shape[-1] > self.token_dim:
            raise ValueError(
                f"a bridge head takes integer level ids (..., <= {self.token_dim}); got {ids.dtype} "
                f"{tuple(ids.shape)}"
            )
        check_id_range(ids, self.levels, "level ids")  # per token while sampling: skipped there (checks.py)

    def _previous(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (M, j) -> (M, j + 1, width): what each dimension 0..j knows of the ids before it (mlp: the
        summed embeddings of all of them; transformer: the embedding of the one just before)."""
        offsets = torch.arange(ids.shape[1], device=ids.device) * self.levels
        emb = self.level_embed(ids + offsets)  # (M, j, width)
        zero = emb.new_zeros(emb.shape[0], 1, emb.shape[2])
        shifted = torch.cat([zero, emb], dim=1)
        return shifted.cumsum(dim=1) if self.arch == "mlp" else shifted  # mlp: exclusive prefix sums

    def _inputs(self, ids: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """ids (M, j) known dimensions, z (M, cond_dim) -> (M, j + 1, width) inputs of dimensions 0..j."""
        j = ids.shape[1]
        return self.cond_proj(z)[:, None] + self.dim_pos[: j + 1] + self._previous(ids)

    def forward(self, ids: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ids (M, d), z (M, cond_dim) -> logits (M, d, levels), row j predicting ids[:, j]."""
        self.check_ids(ids)
        return self.output(self.net(self._inputs(ids[:, :-1], z))).float()

    def next_logits(self, ids_so_far: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Sampling: the first j dimensions (M, j) -> logits (M, levels) of dimension j."""
        self.check_ids(ids_so_far)
        h = self._inputs(ids_so_far, z)
        if self.arch == "mlp":  # dimensions do not interact: only the last one needs computing
            return self.output(self.net(h[:, -1])).float()
        return self.output(self.net(h)[:, -1]).float()

    def loss(self, target: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None):
        logits = self(target, z)
        return F.cross_entropy(logits.reshape(-1, self.levels), target.reshape(-1))


def make_continuous_head(config, cond_dim: int) -> nn.Module:
    """The head a ``ContinuousGeneratorConfig`` names."""
    if config.head == "diffusion":
        return DiffusionHead(
            config.token_dim,
            cond_dim,
            config.head_width,
            config.head_depth,
            config.num_timesteps,
            config.batch_mul,
        )
    if config.head == "flow":
        return FlowHead(config.token_dim, cond_dim, config.head_width, config.head_depth, config.batch_mul)
    if config.head == "bridge":
        return DimensionwiseHead(
            config.token_dim,
            cond_dim,
            config.head_width,
            config.head_depth,
            config.levels,
            config.head_arch,
            config.head_heads,
        )
    raise ValueError(f"head={config.head!r} is unknown; allowed: {CONTINUOUS_HEADS}")
