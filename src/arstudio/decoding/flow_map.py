"""Distilled Decoding's closed-form noise -> token map for one position (DD1, arXiv 2412.17153, §3).

The teacher gives a categorical distribution p over codebook vectors c_v (V, d). Put a rectified flow
x_t = t * x_1 + (1 - t) * eps between eps ~ N(0, I_d) at t = 0 and the discrete mixture sum_v p_v delta(c_v)
at t = 1. Because the target is discrete, the posterior of x_1 given x_t is closed-form:

    w_v(x, t) ∝ p_v * N(x; t c_v, (1 - t)^2 I)          x̂_1(x, t) = sum_v w_v c_v

and the marginal velocity is v(x, t) = (x̂_1 - x) / (1 - t). Integrating that ODE from eps transports
N(0, I) onto the mixture, so eps -> (code it lands on) is deterministic and draws exactly from p.

The same posterior mean is the teacher's denoiser in DD2's conditional score distillation (any
y = alpha x_1 + sigma eps path: ``mixture_posterior_mean``), so both live here.

Integration: the Euler step of this velocity is the DDIM-like update
x_t' = (1 - t')/(1 - t) x_t + (t' - t)/(1 - t) x̂_1, which stays stable as t -> 1; from the third step on
x̂_1 is extrapolated from the last two evaluations in log-SNR (DPM-Solver++(2M), one teacher-free
evaluation per step). The times are spread evenly in log-SNR (log t/(1 - t) over ``LOG_SNR_RANGE``):
codes separate only once t/(1 - t) times their distance is large, and at the last time the posterior is
one-hot, so the token is its argmax. Measured on a 512-way peaked distribution over unit codes in R^8
(40k draws): total variation from p of 0.028 at 32 steps and 0.057 at 16, against 0.022 for 400 steps
(= the sampling noise of 20k draws).
"""

from __future__ import annotations

import math

import torch

LOG_SNR_RANGE = (-4.0, 8.0)  # log(t / (1 - t)) of the first and last non-zero integration time
DEFAULT_FLOW_STEPS = 32


def mixture_posterior_logits(
    y: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, log_probs: torch.Tensor, codebook: torch.Tensor
) -> torch.Tensor:
    """log w_v (up to a constant) for y = alpha c_v + sigma eps, eps ~ N(0, I), v ~ p.

    y (M, d); alpha, sigma (M,) or scalars; log_probs (M, V) (-inf allowed for filtered tokens);
    codebook (V, d) -> (M, V).
    """
    # Python numbers stay Python numbers: a tensor made of one would be built on the host and copied over.
    alpha = alpha if isinstance(alpha, (int, float)) else alpha.to(y.dtype).expand(y.shape[0])[:, None]
    sigma = sigma if isinstance(sigma, (int, float)) else sigma.to(y.dtype).expand(y.shape[0])[:, None]
    # -|y - a c|^2 / 2s^2 = (a y.c - a^2 |c|^2 / 2) / s^2 + (term without v)
    dots = y @ codebook.T  # (M, V)
    sq = (codebook * codebook).sum(-1)[None]  # (1, V)
    return log_probs + (alpha * dots - 0.5 * alpha**2 * sq) / sigma**2


def mixture_posterior_mean(y, alpha, sigma, log_probs, codebook) -> torch.Tensor:
    """E[c_v | y] (M, d): the teacher's denoiser for a Gaussian-noised discrete mixture (see above)."""
    weights = mixture_posterior_logits(y, alpha, sigma, log_probs, codebook).softmax(dim=-1)
    return weights @ codebook


def flow_times(steps: int, device=None) -> torch.Tensor:
    """(steps + 1,) integration times: 0, then ``steps`` times evenly spaced in log-SNR (float64)."""
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"flow steps={steps!r} must be an integer >= 2")
    log_snr = torch.linspace(*LOG_SNR_RANGE, steps, dtype=torch.float64, device=device)
    return torch.cat([torch.zeros(1, dtype=torch.float64, device=device), torch.sigmoid(log_snr)])


@torch.no_grad()
def flow_to_codebook(
    noise: torch.Tensor, probs: torch.Tensor, codebook: torch.Tensor, steps: int = DEFAULT_FLOW_STEPS
) -> torch.Tensor:
    """DD1's map Φ(eps; p): noise (M, d), probs (M, V) (need not be normalised), codebook (V, d) -> ids (M,).

    Deterministic; for eps ~ N(0, I) the ids are distributed as p (up to the integration error, which the
    statistical test in tests/test_distilled.py bounds).
    """
    if noise.ndim != 2 or probs.ndim != 2 or noise.shape[0] != probs.shape[0]:
        raise ValueError(
            f"noise (M, d) and probs (M, V) must pair up; got {tuple(noise.shape)}, {tuple(probs.shape)}"
        )
    if codebook.shape != (probs.shape[1], noise.shape[1]):
        raise ValueError(
            f"codebook must be (V={probs.shape[1]}, d={noise.shape[1]}), got {tuple(codebook.shape)}"
        )
    x = noise.float()
    codes = codebook.float()
    probs = probs.float()
    log_probs = torch.log(probs / probs.sum(-1, keepdim=True))
    times = flow_times(steps).tolist()
    log_snr = [None] + [math.log(t / (1 - t)) for t in times[1:]]
    previous = None  # x̂_1 at the previous time (for the second-order extrapolation)
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
        x1 = mixture_posterior_mean(x, t, 1 - t, log_probs, codes)
        target = x1
        if i >= 2:  # both previous times have a finite log-SNR
            r = (log_snr[i] - log_snr[i - 1]) / (log_snr[i + 1] - log_snr[i])
            target = (1 + 1 / (2 * r)) * x1 - 1 / (2 * r) * previous
        x = ((1 - t_next) * x + (t_next - t) * target) / (1 - t)
        previous = x1
    last = times[-1]
    return mixture_posterior_logits(x, last, 1 - last, log_probs, codes).argmax(dim=-1)
