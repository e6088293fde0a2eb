"""Turning logits into samples: validation, classifier-free guidance, temperature / top-k / top-p,
and per-image random draws.

Each image has its own ``torch.Generator``, turned into a key for on-device draws (``random.py``); a row's
sample depends only on that row's logits and that row's draws, so an image's random draws do not depend on its batch-mates. (Its logits can, at the
level of float rounding: batched matmuls pick kernels by batch size, which now and then flips a
near-tied token. Same seeds in the same batch reproduce pixels exactly; the studio's recipes record the
batch for that reason.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arstudio.decoding.random import as_device_random

SAMPLING_KEYS = ("guidance_scale", "temperature", "top_k", "top_p")  # what a preset's defaults may set


@dataclass(frozen=True)
class SamplingParams:
    guidance_scale: float = 1.0  # 1 = no guidance; 0 = unconditional
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1 = no nucleus filter
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # guide only tokens whose index/N falls in [lo, hi)

    def __post_init__(self):
        check_sampling_params(
            self.guidance_scale, self.temperature, self.top_k, self.top_p, self.cfg_interval
        )

    @classmethod
    def from_defaults(cls, defaults: dict, **overrides) -> SamplingParams:
        """A preset's default sampling (``defaults``; a key it lacks takes the class default), with the
        ``overrides`` that are not None on top."""
        chosen = {k: defaults[k] for k in SAMPLING_KEYS if k in defaults}
        chosen.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**chosen)

    @property
    def uses_cfg(self) -> bool:
        return self.guidance_scale != 1.0

    def guided(self, index: int, total: int) -> bool:
        lo, hi = self.cfg_interval
        return lo <= index / total < hi


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_sampling_params(guidance_scale, temperature, top_k, top_p, cfg_interval=(0.0, 1.0)) -> None:
    import math  # nan passes every comparison below (all are False) and inf passes ">= 0": refuse both first

    for name, value in (("guidance_scale", guidance_scale), ("temperature", temperature), ("top_p", top_p)):
        if _is_number(value) and not math.isfinite(value):
            raise ValueError(f"{name}={value!r} is not allowed: use a finite number")
    if not _is_number(guidance_scale) or guidance_scale < 0:
        raise ValueError(
            f"guidance_scale={guidance_scale!r} is not allowed: use a number >= 0 (1 = no guidance)"
        )
    if not _is_number(temperature) or temperature <= 0:
        raise ValueError(f"temperature={temperature!r} is not allowed: use a number > 0")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k={top_k!r} is not allowed: use an integer >= 0 (0 = off)")
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} is not allowed: use a number in (0, 1] (1 = off)")
    pair = isinstance(cfg_interval, (tuple, list)) and len(cfg_interval) == 2  # a str or a 3-tuple: refused
    if not pair or not all(map(_is_number, cfg_interval)) or not 0 <= cfg_interval[0] <= cfg_interval[1] <= 1:
        raise ValueError(
            f"cfg_interval={cfg_interval!r} is not allowed: use (lo, hi) with 0 <= lo <= hi <= 1"
        )


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Guidance in logit space (LlamaGen): uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(B, V) logits -> (B, V) probabilities after temperature, top-k and top-p."""
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already hold top_p of the mass; the first always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def draw(probs: torch.Tensor, rng) -> torch.Tensor:
    """One token per row by inverse-CDF sampling with that row's next uniform: (B, V) -> (B,) int64.
    ``rng``: a DeviceRandom, or one generator per row (keyed afresh: for one draw only)."""
    if len(rng) != probs.shape[0]:
        raise ValueError(f"got {len(rng)} generators for a batch of {probs.shape[0]}")
    rng = as_device_random(rng, probs.device)
    return sample_with_uniform(probs, rng.uniform(1)[:, 0])


def sample_with_uniform(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: probs (..., V) (need not sum to 1) and uniforms u (...) in [0, 1) -> ids (...)."""
    cdf = probs.cumsum(dim=-1)
    ids = torch.searchsorted(cdf, (u * cdf[..., -1])[..., None]).squeeze(-1)
    return ids.clamp_(max=probs.shape[-1] - 1)  # guards u * total landing past the last cumsum by rounding
