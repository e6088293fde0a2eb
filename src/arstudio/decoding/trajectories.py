"""Diffusion-head trajectories for continuous speculative decoding: the respaced reverse-DDPM steps of one head
with their noise drawn up front, every step's mean at once, trajectory densities, the residual sampler and
the target-only pre-filling shared by both CSpD samplers (``continuous_speculative.py``, ``cspd_head.py``).
"""

from __future__ import annotations

import math

import torch

from arstudio.decoding.continuous import diffusion_schedule
from arstudio.decoding.guidance import guide


class Trajectories:
    """The respaced reverse-DDPM schedule of one diffusion head (``ddpm_sample``'s arithmetic) with every
    step's noise drawn up front and the condition's part of the head computed once per token."""

    def __init__(self, head, steps: int, temperature: float, x0_clip: float):
        self.head, self.x0_clip, self.steps = head, x0_clip, steps
        self.coefs = []  # per step: (sqrt(a_t), sqrt(1 - a_t), coefficient of x0, coefficient of x_t, noise std)
        for i, (_, a_t, a_prev) in enumerate(diffusion_schedule(head, steps)):
            alpha = a_t / a_prev
            sigma = math.sqrt((1 - alpha) * (1 - a_prev) / (1 - a_t)) if i + 1 < steps else 0.0
            self.coefs.append(
                (
                    math.sqrt(a_t),
                    math.sqrt(1 - a_t),
                    math.sqrt(a_prev) * (1 - alpha) / (1 - a_t),
                    math.sqrt(alpha) * (1 - a_prev) / (1 - a_t),
                    sigma * temperature,
                )
            )
        self.timesteps = [t for t, _, _ in diffusion_schedule(head, steps)]
        self._tables = {}  # per device: (timesteps (S,), coefficients (S, 1, 1) x 5)

    def tables(self, device) -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in self._tables:
            coefs = torch.tensor(self.coefs, device=device).T[:, :, None, None]  # (5, S, 1, 1)
            self._tables[key] = (torch.tensor(self.timesteps, device=device), *coefs.unbind(0))
        return self._tables[key]

    def noise(self, rng, batch_like: torch.Tensor) -> torch.Tensor:
        """(S, B, d) standard normals, the image's own draws: [0] starts the trajectory, [i + 1] is added at
        step i (the last step adds none)."""
        d = self.head.token_dim
        eps = rng.normal((self.steps, d)).to(device=batch_like.device, dtype=batch_like.dtype)
        return eps.transpose(0, 1)

    def sample(
        self,
        z: torch.Tensor,
        noise: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        x: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Steps ``start`` .. ``stop`` - 1 from state x (M, d) (x_T = noise[0] when start is 0): z (M, dim),
        noise (S, M, d) -> the states (stop - start + 1, M, d); the whole trajectory x_T .. x_0 by default."""
        stop = self.steps if stop is None else stop
        count, rows = stop - start, z.shape[0]
        t = self.tables(z.device)[0][start:stop]
        # The steps' modulations in one batched call (z is fixed for the token), then split per step.
        mods = self.head.net.modulations(t.repeat_interleave(rows), z.repeat(count, 1))
        per_step = [
            [tuple(m.view(count, rows, -1)[i] for m in layer) for layer in mods] for i in range(count)
        ]
        xs = [noise[0] if x is None else x]
        for i in range(start, stop):
            sqrt_a, sqrt_1a, c_x0, c_xt, std = self.coefs[i]
            x = xs[-1]
            eps = self.head.net.denoise(x, per_step[i - start])
            x0 = ((x - sqrt_1a * eps) / sqrt_a).clamp(-self.x0_clip, self.x0_clip)
            x = c_x0 * x0 + c_xt * x
            xs.append(x + std * noise[i + 1] if i + 1 < self.steps else x)
        return torch.stack(xs)

    def means(self, xs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The means of steps 0 .. k - 1 at once: states xs (k, M, d) at those steps (a trajectory's first k),
        z (M, dim) -> (k, M, d), the mean of the state after each under this head."""
        count, rows = xs.shape[0], z.shape[0]
        t, sqrt_a, sqrt_1a, c_x0, c_xt, _ = (table[:count] for table in self.tables(z.device))
        eps = self.head(xs.flatten(0, 1), t.repeat_interleave(rows), z.repeat(count, 1)).view_as(xs)
        x0 = ((xs - sqrt_1a * eps) / sqrt_a).clamp(-self.x0_clip, self.x0_clip)
        return c_x0 * x0 + c_xt * xs

    def log_density(self, xs: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """log density (M,) of the noisy transitions of states xs (k + 1, M, d) (x_T first) given the means
        (>= k, M, d) of their steps, up to a constant shared by every head on this schedule (it cancels in
        ratios). The last step adds no noise and carries no density."""
        noisy = min(xs.shape[0] - 1, self.steps - 1)
        std = self.tables(xs.device)[-1][:noisy]
        return -(((xs[1 : noisy + 1] - means[:noisy]) / std) ** 2).sum((0, 2)) / 2

    @staticmethod
    def own_log_density(noise: torch.Tensor, xs: torch.Tensor | None = None, z=None) -> torch.Tensor:
        """log density (M,) of states drawn by a head with ``noise`` (S, M, d) under that head, for as many
        noisy steps as ``noise`` holds after x_T: their transitions are x_{i+1} = mean + std * noise[i + 1]. (The
        states xs and conditions z are for heads whose step variance depends on them: ``mar_cspd.py``.)"""
        return -(noise[1:] ** 2).sum((0, 2)) / 2


def residual_sample(
    p: Trajectories, q: Trajectories, z_p, z_q, rng, max_tries: int, steps: int | None = None
):
    """Acceptance-rejection draws from max(0, p - q) over the first ``steps`` reverse steps (all by default):
    ``max_tries`` target trajectories y per row at once, each kept with probability max(0, 1 - q(y) / p(y));
    the first kept one, else the last, gives the state after those steps (M, d) (the token x_0 for all steps).
    Rows are image-major, M / B tokens per image (one for raster decoding, MAR's predicted positions).
    Fixed shapes, no host read."""
    batch, steps = z_p.shape[0], p.steps if steps is None else steps
    per_image = batch // rng.batch
    tries = [p.noise(rng, z_p) for _ in range(max_tries)]  # each (S, M, d): every image's own draws
    noise = torch.cat(tries, dim=1)[: steps + 1]  # (steps + 1, tries * M, d), try-major
    z_tries = z_p.repeat(max_tries, 1)
    ys = p.sample(z_tries, noise, stop=steps)
    log_q = q.log_density(ys, q.means(ys[:steps], z_q.repeat(max_tries, 1)))
    own = p.own_log_density(noise[: min(steps, p.steps - 1) + 1], ys, z_tries)
    keep_prob = 1 - torch.exp((log_q - own).clamp(max=0))
    u = rng.uniform(max_tries * per_image).view(rng.batch, max_tries, per_image).transpose(0, 1)
    keep = (u.reshape(-1) < keep_prob).view(max_tries, batch)
    keep[-1] = True  # nothing kept: the last proposal stands
    first = keep.long().argmax(0)  # (B,) the first kept try of each image
    return ys[-1].view(max_tries, batch, -1)[first, torch.arange(batch, device=z_p.device)]


def prefill_tokens(target, trajectories: Trajectories, cond_rows, batch, count, params, rng, extra):
    """The target alone makes tokens 0 .. count - 1 (CSpD's token pre-filling). Sets up the target's cache
    (``extra`` positions past the sequence) and returns tokens (B, count, d), z (R, dim) for token ``count`` and
    its position (1,) on the device."""
    device, total, streams = cond_rows.device, target.seq_len, cond_rows.shape[0] // batch
    target.setup_cache(cond_rows.shape[0], device=device, extra=extra)
    z = target.prefill(cond_rows)
    position = torch.full((1,), target.prefix_len, dtype=torch.long, device=device)
    tokens = []
    for index in range(count):
        zg = guide(z, batch, params, index, total)
        tokens.append(trajectories.sample(zg, trajectories.noise(rng, zg))[-1].float())
        if index + 1 < total:
            z = target.step(tokens[-1][:, None].repeat(streams, 1, 1).to(z.dtype), position)[:, -1]
            position += 1
    return torch.stack(tokens, 1), z, position
