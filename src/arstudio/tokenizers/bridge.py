"""TokenBridge: discrete tokens from a trained continuous tokenizer, with no retraining.

Each latent dimension is quantised on its own into ``levels`` bins of equal probability; a token becomes d
level ids (a per-dimension vocabulary of ``levels`` instead of a joint codebook of levels**d), and a level
decodes to the mean of its bin.

TokenBridge fixes the bins to standard-normal quantiles clamped at +-3 sigma (``fit(..., "gaussian")``).
Our small autoencoder's latents are heavy-tailed (kurtosis ~10, ~3 % of values beyond 3 sigma: the black
background is a spike, objects are the tails), so the default ``"empirical"`` bins are the per-dimension
quantiles of the training latents, and bin values their means: the same equal-probability idea on the
real distribution. ``"lloyd"`` bins are MSE-optimal instead (Lloyd-Max: each edge halfway between two
values, each value the mean of its bin, iterated from the empirical bins): equal-probability bins spend most
levels on the background spike, Lloyd-Max places levels by density^(1/3) and so gives the objects' tails
more of them. ``quantisation_sweep`` reports all three.
Reference: Wang et al., "Bridging Continuous and Discrete Tokens for Autoregressive Visual Generation" (2025).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from arstudio.checks import check_id_range
from arstudio.io import PretrainedMixin
from arstudio.tokenizers.kl import KLConfig, KLTokenizer

CLAMP_SIGMA = 3.0
BIN_METHODS = ("empirical", "gaussian", "lloyd")
LLOYD_ITERATIONS = 40


def check_levels(levels) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels={levels!r} is not allowed: a bridge quantiser needs an integer >= 2")


def gaussian_bins(levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inner edges (levels - 1,), bin values (levels,)) in standard-normal units, float64."""
    check_levels(levels)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    probs = torch.arange(1, levels, dtype=torch.float64) / levels
    inner = normal.icdf(probs).clamp(-CLAMP_SIGMA, CLAMP_SIGMA)
    edges = torch.cat([torch.tensor([-CLAMP_SIGMA]), inner, torch.tensor([CLAMP_SIGMA])]).double()
    pdf = torch.exp(-0.5 * edges**2) / math.sqrt(2 * math.pi)
    mass = normal.cdf(edges[1:]) - normal.cdf(edges[:-1])
    values = (pdf[:-1] - pdf[1:]) / mass  # mean of N(0, 1) truncated to the bin
    return inner, values


def empirical_bins(standard: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension equal-probability bins of standardised samples (M, d): (edges (d, levels - 1),
    values (d, levels), the mean of the samples in each bin; an empty bin keeps its midpoint)."""
    check_levels(levels)
    probs = torch.arange(1, levels, dtype=torch.float64) / levels
    edges = torch.quantile(standard.double(), probs, dim=0).T.contiguous()  # (d, levels - 1)
    outer = torch.cat([edges[:, :1] - 1, edges, edges[:, -1:] + 1], dim=1)
    midpoints = (outer[:, :-1] + outer[:, 1:]) / 2
    return edges, _bin_means(standard.double(), edges, midpoints)


def _bin_means(standard: torch.Tensor, edges: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Mean of the samples (M, d) in each bin of ``edges`` (d, levels - 1): (d, levels), an empty bin keeps
    its ``fallback`` value. float64."""
    levels = edges.shape[1] + 1
    ids = torch.searchsorted(edges, standard.T.contiguous())  # (d, M)
    sums = torch.zeros(edges.shape[0], levels, dtype=torch.float64).scatter_add_(1, ids, standard.T)
    counts = torch.zeros_like(sums).scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float64))
    return torch.where(counts > 0, sums / counts.clamp_min(1), fallback)


def lloyd_bins(standard: torch.Tensor, levels: int, iterations: int = LLOYD_ITERATIONS):
    """Per-dimension MSE-optimal (Lloyd-Max) bins of standardised samples (M, d): (edges (d, levels - 1),
    values (d, levels)), started from the equal-probability bins."""
    _, values = empirical_bins(standard, levels)
    standard = standard.double()
    for _ in range(iterations):
        edges = (values[:, 1:] + values[:, :-1]) / 2
        values = _bin_means(standard, edges, values)
    return (values[:, 1:] + values[:, :-1]) / 2, values


class BridgeQuantizer(nn.Module):
    """Latents (..., d) <-> level ids (..., d). All statistics are buffers set by ``fit`` and saved with the
    weights; before ``fit`` the bins are the Gaussian ones on unit-variance latents."""

    def __init__(self, token_dim: int, levels: int):
        super().__init__()
        inner, values = gaussian_bins(levels)
        self.levels = levels
        self.register_buffer("mean", torch.zeros(token_dim))
        self.register_buffer("std", torch.ones(token_dim))
        # In standardised units ((x - mean) / std): edges (d, levels - 1), bin values (d, levels).
        self.register_buffer("edges", inner.float().repeat(token_dim, 1))
        self.register_buffer("values", values.float().repeat(token_dim, 1))

    @torch.no_grad()
    def fit(self, latents: torch.Tensor, method: str = "empirical") -> BridgeQuantizer:
        """Per-dimension statistics and bins from training latents (..., d)."""
        if method not in BIN_METHODS:
            raise ValueError(f"method={method!r} is unknown; allowed: {BIN_METHODS}")
        flat = latents.reshape(-1, latents.shape[-1]).double()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-6))
        if method != "gaussian":
            fit = empirical_bins if method == "empirical" else lloyd_bins
            edges, values = fit((flat - self.mean.double()) / self.std.double(), self.levels)
            self.edges.copy_(edges)
            self.values.copy_(values)
        return self

    def check(self, latents: torch.Tensor) -> None:
        d = self.mean.shape[0]
        if not latents.is_floating_point() or latents.shape[-1] != d:
            raise ValueError(f"latents must be float (..., {d}); got {latents.dtype} {tuple(latents.shape)}")

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., d) float -> (..., d) int64 level ids in 0..levels-1."""
        self.check(latents)
        standard = (latents.float() - self.mean) / self.std
        flat = standard.reshape(-1, standard.shape[-1]).T.contiguous()  # (d, M): one row of edges per dim
        return torch.searchsorted(self.edges, flat).T.reshape(standard.shape)

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.is_floating_point() or ids.shape[-1] != self.mean.shape[0]:
            raise ValueError(
                f"level ids must be integers (..., {self.mean.shape[0]}); got {ids.dtype} {tuple(ids.shape)}"
            )
        check_id_range(ids, self.levels, "level ids")

    def standard_values(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., d) ids -> (..., d) bin values in standardised units (what the bridge generator embeds)."""
        self.check_ids(ids)
        dims = torch.arange(ids.shape[-1], device=ids.device)
        return self.values[dims, ids]

    def dequantize(self, ids: torch.Tensor) -> torch.Tensor:
        return self.standard_values(ids) * self.std + self.mean


@dataclass(frozen=True)
class BridgeConfig:
    kl: KLConfig = field(default_factory=KLConfig)
    levels: int = 64

    def __post_init__(self):
        if isinstance(self.kl, dict):  # from config.json (lists back to tuples)
            kl = {k: tuple(v) if isinstance(v, list) else v for k, v in self.kl.items()}
            object.__setattr__(self, "kl", KLConfig(**kl))
        check_levels(self.levels)

    @property
    def resolution(self) -> int:
        return self.kl.resolution


class BridgeTokenizer(PretrainedMixin, nn.Module):
    """Images (B, 3, H, W) <-> level ids (B, h, w, d): a frozen KL tokenizer + a post-training quantiser."""

    config_class = BridgeConfig
    kind = "bridge"

    def __init__(self, config: BridgeConfig):
        super().__init__()
        self.config = config
        self.kl = KLTokenizer(config.kl)
        self.quantizer = BridgeQuantizer(config.kl.latent_channels, config.levels)

    @classmethod
    def from_kl(
        cls, kl: KLTokenizer, levels: int, latents: torch.Tensor, method: str = "empirical"
    ) -> BridgeTokenizer:
        """Wrap a trained KL tokenizer; ``latents`` (..., d) from its training data fit the statistics with
        ``method`` (one of BIN_METHODS)."""
        bridge = cls(BridgeConfig(kl.config, levels))
        bridge.kl.load_state_dict(kl.state_dict())
        bridge.quantizer.fit(latents, method)
        return bridge.eval()

    @property
    def grid_size(self) -> int:
        return self.kl.grid_size

    @property
    def token_dim(self) -> int:
        return self.kl.token_dim

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> level ids (B, h, w, d) int64."""
        return self.quantizer.quantize(self.kl.encode(images))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Level ids (B, h, w, d) -> images (B, 3, H, W) in about [-1, 1]."""
        return self.kl.decode(self.quantizer.dequantize(ids).to(self.kl.vae.dtype))


@torch.no_grad()
def quantisation_sweep(
    kl: KLTokenizer,
    images: torch.Tensor,
    fit_latents: torch.Tensor,
    bits: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8),
) -> list[dict]:
    """Reconstruction error against bits per dimension: for each b and bin method, quantise with 2**b levels
    (fit on ``fit_latents``) and report the latent MSE (relative to the latent variance) and the pixel PSNR
    of the decoded images; ``bits=None`` is the unquantised tokenizer."""
    from arstudio.images import psnr, tensor_to_images

    latents = kl.encode(images)
    real = tensor_to_images(images)

    def pixel_psnr(z: torch.Tensor) -> float:
        return psnr(tensor_to_images(kl.decode(z).float()), real)

    rows = [{"bits": None, "method": None, "relative_latent_mse": 0.0, "psnr": pixel_psnr(latents)}]
    variance = float(latents.var())
    for method in BIN_METHODS:
        for b in bits:
            quantizer = BridgeQuantizer(kl.token_dim, 2**b).fit(fit_latents, method)
            restored = quantizer.dequantize(quantizer.quantize(latents))
            mse = float((restored - latents).pow(2).mean()) / variance
            rows.append(
                {"bits": b, "method": method, "relative_latent_mse": mse, "psnr": pixel_psnr(restored)}
            )
    return rows
