"""Continuous speculative decoding of MAR with a smaller MAR (CSpD's setting: MAR-B drafting for MAR-L/H).

A round: the draft runs ``draft_iterations`` MAR iterations in a row on its own canvas (each conditioned on the
verified tokens and its own earlier drafts, as its sampler would), then the target makes ONE pass conditioned on
the verified tokens only and scores every drafted position at once. Each drafted token is tested on its own
(no prefix rollback): its trajectory x_T .. x_k (all but the last ``tail_steps`` reverse steps) is kept with
probability min(1, (p / q)^(1 / tau)), where q and p are the products of the draft's and the target's Gaussian
reverse steps along it. Both heads read the same noise (trajectory alignment). MAR's heads learn their step
variances, so unlike ``trajectories.Trajectories`` the density carries each step's log sigma, for each head
its own. A rejected token takes a residual draw (``trajectories.residual_sample``, shared with the raster
CSpD); whether any token needs one is the round's one host read. The target then makes the tail steps from
the kept state on the same noise, so every token ends on the target's own last steps. After the round every
drafted position is verified. Token pre-filling: the first ``prefill`` fraction of the iterations run on the
target alone (``mar_iteration``). ``inner_temperature`` tau > 1 relaxes the test (CSpD uses 42); 1 is exact
per token given the verified tokens (CSpD's approximation: the target does not see the round's other drafts).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from arstudio.decoding.drafting import check_fits
from arstudio.decoding.logits import SamplingParams
from arstudio.decoding.mar import (
    condition_rows,
    guidance_at,
    iteration_conditions,
    iteration_noise,
    mar_iteration,
    start_canvas,
)
from arstudio.decoding.mar_head import learned_range_schedule, reverse_step
from arstudio.decoding.trajectories import residual_sample
from arstudio.decoding.types import DecodeResult, StepCallback


class MARTrajectories:
    """``Trajectories``' interface for a MAR head: condition rows pack [z_cond, z_uncond, scale] when guided
    (so ``residual_sample`` can repeat them as one tensor), z alone when not."""

    def __init__(self, head, steps: int, temperature: float, guided: bool):
        self.head, self.temperature, self.guided = head, temperature, guided
        self.schedule = learned_range_schedule(head.num_timesteps, steps)
        self.steps = self.schedule.steps

    def pack(self, z: torch.Tensor, z_uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
        """Rows in float32 (a bf16 column would round the guidance scale: 2.9 -> 2.90625)."""
        if not self.guided:
            return z
        return torch.cat(
            [z.float(), z_uncond.float(), z.new_full((z.shape[0], 1), scale, dtype=torch.float32)], 1
        )

    def _unpack(self, rows: torch.Tensor):
        if not self.guided:
            return rows, None, 1.0
        dim, dtype = (rows.shape[1] - 1) // 2, self.head.net.output.weight.dtype
        return rows[:, :dim].to(dtype), rows[:, dim : 2 * dim].to(dtype), rows[:, 2 * dim :]

    def noise(self, rng, like: torch.Tensor) -> torch.Tensor:
        """(S, M, d): x_T and each step's noise for M rows, image-major (M / B tokens per image)."""
        return iteration_noise(rng, like.shape[0] // rng.batch, self.steps, self.head.token_dim)

    def _gaussians(self, xs: torch.Tensor, rows: torch.Tensor, start: int = 0):
        """Mean and log variance (k, M, d) of the steps start .. start + k - 1 from states xs (k, M, d), in one
        batched head call."""
        k, m = xs.shape[:2]
        z, z_u, scale = self._unpack(rows)
        index = (self.steps - 1 - start - torch.arange(k, device=xs.device)).repeat_interleave(m)
        scale = scale.repeat(k, 1) if isinstance(scale, torch.Tensor) else scale
        mean, log_var = reverse_step(
            self.head,
            xs.flatten(0, 1),
            index,
            self.schedule,
            z.repeat(k, 1),
            None if z_u is None else z_u.repeat(k, 1),
            scale,
        )
        return mean.view_as(xs), log_var.view_as(xs)

    def sample(self, rows, noise, start: int = 0, stop: int | None = None, x=None) -> torch.Tensor:
        """Steps start .. stop - 1 from x (x_T = noise[0] by default) -> the states (stop - start + 1, M, d)."""
        stop = self.steps if stop is None else stop
        z, z_u, scale = self._unpack(rows)
        xs = [noise[0].float() if x is None else x.float()]
        for taken in range(start, stop):
            i = self.steps - 1 - taken
            mean, log_var = reverse_step(self.head, xs[-1], i, self.schedule, z, z_u, scale)
            if i > 0:  # the last step adds no noise
                mean = mean + torch.exp(0.5 * log_var) * noise[taken + 1].float() * self.temperature
            xs.append(mean)
        return torch.stack(xs)

    def means(self, xs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The Gaussians of steps 0 .. k - 1 at states xs (k, M, d): mean and log variance, (k, M, 2 d)."""
        return torch.cat(self._gaussians(xs, rows), -1)

    def log_density(self, xs: torch.Tensor, gaussians: torch.Tensor) -> torch.Tensor:
        """log density (M,) of the noisy transitions of xs (k + 1, M, d) under ``gaussians`` (>= k, M, 2 d), up
        to a constant every head shares (the temperature's and 2 pi's)."""
        noisy = min(xs.shape[0] - 1, self.steps - 1)
        d = xs.shape[-1]
        mean, log_var = gaussians[:noisy, :, :d], gaussians[:noisy, :, d:]
        z = (xs[1 : noisy + 1] - mean) * torch.exp(-0.5 * log_var) / self.temperature
        return (-(z**2) / 2 - log_var / 2).sum((0, 2))

    def own_log_density(self, noise: torch.Tensor, xs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """log density (M,) of states xs this head drew (with ``noise``) under this head."""
        steps = noise.shape[0] - 1
        return self.log_density(xs[: steps + 1], self.means(xs[:steps], rows))


def _image_major(parts: list[torch.Tensor], batch: int, dim: int = 0) -> torch.Tensor:
    """Per-iteration row blocks (image-major each, ..., B * P_j, ...) along ``dim`` -> one image-major block."""
    views = [p.unflatten(dim, (batch, -1)) for p in parts]
    return torch.cat(views, dim + 1).flatten(dim, dim + 1)


class _Round:
    """One round's drafted iterations: positions, the draft's condition rows, noise and trajectories."""

    def __init__(self):
        self.positions, self.rows_q, self.noise, self.states, self.scales = [], [], [], [], []


def _draft_round(draft, q, canvas, order, plan, cond_q, params, rng, ramp, n) -> _Round:
    """The draft's iterations on its own canvas (written in place), trajectories kept."""
    batch, drafted = canvas.shape[0], _Round()
    for it in plan:
        predict, z, z_uncond = iteration_conditions(draft, canvas, order, it, cond_q)
        scale = guidance_at(params.guidance_scale, ramp, it.mask_len, n)
        packed = q.pack(z, z_uncond, scale)
        noise = q.noise(rng, packed)
        states = q.sample(packed, noise)
        canvas.scatter_(
            1,
            predict[..., None].expand(-1, -1, canvas.shape[-1]),
            states[-1].view(batch, -1, canvas.shape[-1]).to(canvas.dtype),
        )
        for store, value in zip(
            (drafted.positions, drafted.rows_q, drafted.noise, drafted.states, drafted.scales),
            (predict, packed, noise, states, scale),
            strict=True,
        ):
            store.append(value)
    return drafted


def _target_rows(target, p, canvas, order, start_masked, drafted, cond_p):
    """The target's one pass on the verified tokens; its packed condition rows for every drafted position."""
    streams = cond_p.shape[0] // canvas.shape[0]
    known = order[:, start_masked:].sort(dim=1).values
    z = target(canvas.repeat(streams, 1, 1), known.repeat(streams, 1), cond_p)
    rows = []
    for predict, scale in zip(drafted.positions, drafted.scales, strict=True):
        picked = z.gather(1, predict.repeat(streams, 1)[..., None].expand(-1, -1, z.shape[-1])).flatten(0, 1)
        count = predict.numel()
        rows.append(p.pack(picked[:count], picked[count:] if streams > 1 else None, scale))
    return rows


@dataclass(frozen=True)
class MARSpeculation:
    """The round's settings (see the module doc); checked by the strategy's knobs or here."""

    draft_iterations: int = 8  # CSpD's num_draft
    inner_temperature: float = 1.0  # CSpD: 42 (relaxed); 1: exact per token
    prefill: float = 0.15  # CSpD's token pre-filling: fraction of the iterations the target runs alone
    cfg_ramp: float = 1.0  # as decoding="mar"'s
    max_tries: int = 4  # residual proposals, drawn at once
    tail_steps: int = 2  # reverse steps the target makes itself from the kept state

    def __post_init__(self):
        for name in ("draft_iterations", "max_tries", "tail_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if not isinstance(self.inner_temperature, (int, float)) or self.inner_temperature < 1:
            raise ValueError(
                f"inner_temperature={self.inner_temperature!r} must be a number >= 1 (1 = exact)"
            )
        if not isinstance(self.prefill, (int, float)) or not 0 <= self.prefill <= 1:
            raise ValueError(f"prefill={self.prefill!r} must be a fraction in [0, 1]")


def check_mar_draft(target, draft) -> None:
    """A MAR draft must make the target's tokens: same latents, grid, classes and head schedule."""
    from arstudio.generators.mar import MARGenerator

    if not isinstance(draft, MARGenerator):
        raise ValueError(f"a MAR target drafts with a smaller MARGenerator, got a {type(draft).__name__}")
    fields = ("token_dim", "grid_size", "num_classes", "num_timesteps")
    pairs = {f: (getattr(target.config, f), getattr(draft.config, f)) for f in fields}
    check_fits(pairs, subject="the MAR draft", draft="draft")


@torch.no_grad()
def sample_mar_speculative(
    target,
    draft,
    labels: torch.Tensor,
    generators,
    params: SamplingParams | None = None,
    num_iter: int = 64,
    num_inference_steps: int = 100,
    spec: MARSpeculation | None = None,
    callback: StepCallback | None = None,
) -> DecodeResult:
    """Tokens (B, N, d) of ``target`` (a ``MARGenerator``) with ``draft`` (a smaller one) drafting.
    ``callback(iteration, num_iter, canvas)`` after each prefilled iteration and each round."""
    params, spec = params or SamplingParams(), spec or MARSpeculation()
    check_mar_draft(target, draft)
    plan, rng, order, tokens = start_canvas(target, labels, generators, num_iter, num_inference_steps)
    batch, d, device = labels.shape[0], target.config.token_dim, labels.device
    heads = (
        MARTrajectories(target.head, num_inference_steps, params.temperature, params.uses_cfg),
        MARTrajectories(draft.head, num_inference_steps, params.temperature, params.uses_cfg),
    )
    models = (target, draft, condition_rows(target, labels, params), condition_rows(draft, labels, params))
    prefilled = min(len(plan), max(1, math.ceil(spec.prefill * num_iter)))
    stats = {"forwards": 0, "draft_forwards": 0, "drafted": 0, "residual_rounds": 0}
    accepted = torch.zeros((), dtype=torch.long, device=device)
    start, step = time.perf_counter(), 0
    while step < len(plan):
        size = 1 if step < prefilled else spec.draft_iterations
        chunk = [it for it in plan[step : step + size] if it.predicted]
        step += size
        if chunk and size == 1 and step <= prefilled:  # the target alone
            noise = iteration_noise(rng, chunk[0].predicted, heads[0].steps, d)
            mar_iteration(
                target, tokens, order, chunk[0], models[2], noise, params, num_inference_steps, spec.cfg_ramp
            )
        elif chunk:
            ok, residual = _speculate(models, heads, tokens, order, chunk, params, rng, spec)
            accepted += ok
            stats["residual_rounds"] += residual
            stats["draft_forwards"] += len(chunk)
            stats["drafted"] += sum(it.predicted for it in chunk) * batch
        stats["forwards"] += bool(chunk)
        if callback is not None and callback(min(step, len(plan)) - 1, len(plan), tokens) is False:
            decided = order[:, plan[min(step, len(plan)) - 1].masked_after :].flip(1)  # generation order
            tokens = tokens.gather(1, decided[..., None].expand(-1, -1, d))
            break
    stats.update(
        forwards_per_image=stats["forwards"],
        acceptance_rate=int(accepted) / max(stats["drafted"], 1),  # one read, after the loop
        num_iter=num_iter,
        head_steps=heads[0].steps,
        prefilled_iterations=prefilled,
        decode_seconds=time.perf_counter() - start,
    )
    return DecodeResult(tokens, stats)


def _speculate(models, heads, tokens, order, chunk, params, rng, spec) -> tuple[torch.Tensor, int]:
    """One round on the verified canvas ``tokens`` (written in place): (tokens accepted (a device count),
    1 if a residual was drawn)."""
    target, draft, cond_p, cond_q = models
    p, q = heads
    batch, n = tokens.shape[0], target.seq_len
    drafted = _draft_round(draft, q, tokens.clone(), order, chunk, cond_q, params, rng, spec.cfg_ramp, n)
    rows_p = _image_major(_target_rows(target, p, tokens, order, chunk[0].masked, drafted, cond_p), batch)
    rows_q = _image_major(drafted.rows_q, batch)
    noise = _image_major(drafted.noise, batch, dim=1)
    kept = p.steps - min(spec.tail_steps, p.steps - 1)  # the steps the test covers; the target makes the rest
    xs = _image_major(drafted.states, batch, dim=1)[: kept + 1]
    log_p = p.log_density(xs, p.means(xs[:kept], rows_p))
    log_q = q.own_log_density(noise[: kept + 1], xs, rows_q)
    ratio = (log_p - log_q) / spec.inner_temperature
    ok = rng.uniform(rows_p.shape[0] // batch).reshape(-1).log() <= ratio.clamp(max=0)
    state, residual = xs[-1], 0
    if bool(ok.all()):  # the round's one host read
        # the residual's draws, skipped: an image's draws never depend on others
        rng.draws += spec.max_tries + 1
    else:
        residual = 1
        fixed = residual_sample(p, q, rows_p, rows_q, rng, spec.max_tries, steps=kept)
        state = torch.where(ok[:, None], state, fixed)
    final = p.sample(rows_p, noise, start=kept, x=state)[-1].view(batch, -1, tokens.shape[-1])
    positions = torch.cat(drafted.positions, 1)[..., None].expand(-1, -1, tokens.shape[-1])  # image-major
    tokens.scatter_(1, positions, final.to(tokens.dtype))
    return ok.sum(), residual
