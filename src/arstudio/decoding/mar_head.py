"""MAR's head sampler: improved-DDPM reverse steps with a learned variance, respaced from the training schedule.

MAR trains its head on a cosine schedule of 1000 steps (``betas_for_alpha_bar``, betas clipped at 0.999) and
samples it respaced to ``num_sampling_steps`` (default 100) with improved DDPM's section striding: the kept
timesteps are round(k * 999 / (S - 1)), accumulated as floats, and the respaced betas are
1 - abar_t / abar_prev. At each reverse step the head predicts the noise and v in [-1, 1]; the step's log
variance is (v + 1) / 2 * log(beta) + (1 - v) / 2 * log(posterior variance), x0 is not clipped, and
MAR's temperature scales the added noise. Guidance mixes the noise predictions only; each row keeps its own
conditional variance. The tables are computed in float64 on the host (as MAR does, with numpy) once per
(schedule, steps) and used in float32.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The improved-DDPM cosine schedule's betas (float64)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [
            min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
            for i in range(num_timesteps)
        ]
    )


def respaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The training timesteps a ``steps``-step sampler keeps (one section of improved DDPM's striding)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(
            f"num_inference_steps={steps!r} is not allowed: use an integer in [1, {num_timesteps}]"
        )
    stride = 1.0 if steps == 1 else (num_timesteps - 1) / (steps - 1)
    kept, position = [], 0.0
    for _ in range(steps):
        kept.append(round(position))
        position += stride
    return sorted(set(kept))


class LearnedRangeSchedule:
    """Per respaced step i (0 = the last reverse step): the float64 tables of MAR's ``SpacedDiffusion``."""

    def __init__(self, num_timesteps: int, steps: int):
        self.timestep_map = respaced_timesteps(num_timesteps, steps)
        abar_full = np.cumprod(1.0 - cosine_betas(num_timesteps))
        betas, last = [], 1.0
        for t in self.timestep_map:
            betas.append(1 - abar_full[t] / last)
            last = abar_full[t]
        betas = np.array(betas, dtype=np.float64)
        abar = np.cumprod(1.0 - betas)
        abar_prev = np.append(1.0, abar[:-1])
        posterior_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        posterior_log = (
            np.log(np.append(posterior_var[1], posterior_var[1:])) if len(betas) > 1 else np.log(betas)
        )
        self.columns = {
            "sqrt_recip_abar": np.sqrt(1.0 / abar),
            "sqrt_recipm1_abar": np.sqrt(1.0 / abar - 1),
            "mean_x0": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "mean_xt": (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar),
            "min_log": posterior_log,
            "max_log": np.log(betas),
        }
        self.steps = len(betas)
        self._device_tables: dict[str, dict[str, torch.Tensor]] = {}

    def tables(self, device) -> dict[str, torch.Tensor]:
        """Each column as a float32 (S, 1) tensor on ``device`` (made once), plus the timesteps (S,)."""
        key = str(device)
        if key not in self._device_tables:
            tables = {
                name: torch.from_numpy(col).to(device=device).float()[:, None]
                for name, col in self.columns.items()
            }
            tables["timestep"] = torch.tensor(self.timestep_map, device=device)
            self._device_tables[key] = tables
        return self._device_tables[key]


@functools.lru_cache(maxsize=16)
def learned_range_schedule(num_timesteps: int, steps: int) -> LearnedRangeSchedule:
    return LearnedRangeSchedule(num_timesteps, steps)


def head_outputs(head, x, i, tables, z, z_uncond, scale):
    """The head at respaced step i (an int, or (M,) per row) for states x (M, d): (guided noise (M, d), v (M, d)),
    in float32; ``scale`` a number or (M, 1) per row."""
    d, rows = head.token_dim, x.shape[0]
    dtype = z.dtype
    t = tables["timestep"][i]
    t = t.expand(rows) if t.ndim == 0 else t
    if z_uncond is None:
        out = head(x.to(dtype), t, z).float()
        return out[:, :d], out[:, d:]
    both = head(torch.cat([x, x]).to(dtype), torch.cat([t, t]), torch.cat([z, z_uncond])).float()
    cond, uncond = both[:rows], both[rows:]
    return uncond[:, :d] + scale * (cond[:, :d] - uncond[:, :d]), cond[:, d:]


def reverse_step(head, x, i, schedule, z, z_uncond=None, scale: float = 1.0):
    """Respaced reverse step i (0 is the last; an int, or (M,) per row) from states x (M, d): (the mean, the log
    variance) of x_{i-1}, each (M, d) float32."""
    tables = schedule.tables(z.device)
    eps, v = head_outputs(head, x, i, tables, z, z_uncond, scale)
    x0 = tables["sqrt_recip_abar"][i] * x - tables["sqrt_recipm1_abar"][i] * eps
    mean = tables["mean_x0"][i] * x0 + tables["mean_xt"][i] * x
    frac = (v + 1) / 2
    return mean, frac * tables["max_log"][i] + (1 - frac) * tables["min_log"][i]


def sample_mar_head(
    head,
    z: torch.Tensor,
    noise: torch.Tensor,
    schedule: LearnedRangeSchedule,
    temperature: float,
    z_uncond: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Tokens (M, d) float32 for conditions z (M, dim): ``noise`` (S, M, d) holds x_T ([0]) and the noise of
    each reverse step ([k + 1] for the k-th step taken; the last step adds none). ``z_uncond``: the null
    condition's rows for guidance at ``scale``."""
    x = noise[0].float()
    for taken, i in enumerate(reversed(range(schedule.steps))):
        mean, log_var = reverse_step(head, x, i, schedule, z, z_uncond, scale)
        x = mean + torch.exp(0.5 * log_var) * noise[taken + 1].float() * temperature if i > 0 else mean
    return x
