"""Continuous speculative decoding (CSpD, arXiv 2411.11925) for diffusion heads.

A small draft model (an independent ``ContinuousImageGenerator`` with a diffusion head on the same
latents) proposes ``draft_tokens`` vector tokens; the target checks them in one cached forward.

The density of a diffusion head's output is intractable, but each reverse step is Gaussian:
x_{i+1} ~ N(mu(x_i, z), (sigma_i * temperature)^2). So the acceptance test compares the *trajectory*
densities: the draft's own trajectory x_T .. x_1 is scored under the target's conditioning z_p and under
the draft's z_q, step by step on the same points (denoising-trajectory alignment: both models are read on
the draft's noise path), and the draft is kept if u <= p(traj) / q(traj). The last reverse step adds no
noise, so it carries no density and is left out of the ratio; an accepted token is the draft's own
x_0 (it already fed the later drafts and the verification), which differs from the target's final
step on the same x_1 only by the two heads' last, nearly noise-free, denoising step.

On rejection, the residual max(0, p - q) is sampled by acceptance-rejection: draw a trajectory from the
target, keep it with probability max(0, 1 - q/p), at most ``max_tries`` times (then the last draw is kept,
a bounded approximation as in CSpD). With p = q every draft is accepted.

Relaxed form: ``inner_temperature`` tau >= 1 tempers the log ratio (accept if u <= (p/q)^(1/tau)). It is
lossy for tau > 1 and named as such; tau = 1 is the exact test.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from arstudio.decoding.autoregressive import DecodeResult, StepCallback, with_unconditional
from arstudio.decoding.continuous import per_row_randn
from arstudio.decoding.logits import SamplingParams, classifier_free_guidance
from arstudio.decoding.random import as_device_random
from arstudio.decoding.rounds import SpeculationLedger, take_at


@dataclass(frozen=True)
class ContinuousSpeculativeParams:
    draft_tokens: int = 3
    num_inference_steps: int = 25
    inner_temperature: float = 1.0  # > 1: relaxed (lossy) acceptance
    max_tries: int = 4  # acceptance-rejection draws for the residual

    def __post_init__(self):
        for name, low in (("draft_tokens", 1), ("num_inference_steps", 2), ("max_tries", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if not isinstance(self.inner_temperature, (int, float)) or self.inner_temperature < 1:
            raise ValueError(
                f"inner_temperature={self.inner_temperature!r} must be a number >= 1 (1 = exact)"
            )


class DiffusionSteps:
    """The respaced reverse-DDPM schedule of a diffusion head (the same arithmetic as ``ddpm_sample``)."""

    def __init__(self, head, steps: int, temperature: float, x0_clip: float):
        self.head, self.temperature, self.x0_clip = head, temperature, x0_clip
        abar = head.alphas_cumprod_list
        self.timesteps = torch.linspace(head.num_timesteps - 1, 0, steps).round().long().tolist()
        self.coefs = []  # per step: (a_t, coefficient of x0, coefficient of x_t, noise std)
        for i, t in enumerate(self.timesteps):
            a_t = abar[t]
            a_prev = abar[self.timesteps[i + 1]] if i + 1 < steps else 1.0
            alpha = a_t / a_prev
            sigma = math.sqrt((1 - alpha) * (1 - a_prev) / (1 - a_t)) if i + 1 < steps else 0.0
            self.coefs.append((a_t, math.sqrt(a_prev) * (1 - alpha) / (1 - a_t),
                               math.sqrt(alpha) * (1 - a_prev) / (1 - a_t), sigma * temperature))  # fmt: skip

    def mean(self, i: int, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Mean of x_{i+1} given x_i (B, d) under conditioning z (B, dim)."""
        a_t, c_x0, c_xt, _ = self.coefs[i]
        t = torch.full((x.shape[0],), self.timesteps[i], device=x.device)
        eps = self.head(x, t, z)
        x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-self.x0_clip, self.x0_clip)
        return c_x0 * x0 + c_xt * x

    def sample(self, z: torch.Tensor, rng) -> list[torch.Tensor]:
        """A trajectory [x_T, ..., x_0], each (B, d), noise from each row's own draws."""
        d = self.head.token_dim
        rng = as_device_random(rng, z.device)
        xs = [per_row_randn(rng, (d,), z)]
        for i in range(len(self.timesteps)):
            x = self.mean(i, xs[-1], z)
            std = self.coefs[i][3]
            xs.append(x + std * per_row_randn(rng, (d,), z) if std > 0 else x)
        return xs

    def log_density(self, xs: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """log density (B,) of the noisy transitions x_i -> x_{i+1} of ``xs`` under conditioning z, up to
        a constant shared by every model on this schedule (it cancels in ratios).

        The trajectory is known, so all its steps go through the head in one batched call.
        """
        noisy = len(self.timesteps) - 1  # the last step is deterministic
        batch = z.shape[0]
        x = torch.cat(xs[:noisy])  # (S * B, d), step-major
        t = torch.tensor(self.timesteps[:noisy], device=z.device).repeat_interleave(batch)
        eps = self.head(x, t, z.repeat(noisy, 1))
        coefs = torch.tensor(self.coefs[:noisy], device=z.device, dtype=x.dtype).repeat_interleave(batch, 0)
        a_t, c_x0, c_xt, std = (c[:, None] for c in coefs.unbind(-1))  # (S * B, 1) each
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-self.x0_clip, self.x0_clip)
        mean = c_x0 * x0 + c_xt * x
        log = -((torch.cat(xs[1 : noisy + 1]) - mean) ** 2).sum(-1, keepdim=True) / (2 * std**2)
        return log.view(noisy, batch).sum(0)


def check_draft_for_cspd(target, draft) -> None:
    for name, model in (("target", target), ("draft model", draft)):
        if getattr(model.head, "kind", None) != "diffusion":
            kind = getattr(model.head, "kind", type(model.head).__name__)
            raise ValueError(
                f"continuous speculative decoding needs diffusion heads; the {name} has a {kind} head"
            )
    t, d = target, draft
    pairs = {"token_dim": (t.config.token_dim, d.config.token_dim),
             "num_timesteps": (t.head.num_timesteps, d.head.num_timesteps),
             "grid_size": (t.config.backbone.grid_size, d.config.backbone.grid_size),
             "prefix_len": (t.prefix_len, d.prefix_len)}  # fmt: skip
    bad = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if bad:
        detail = ", ".join(f"{k}: target {a}, draft model {b}" for k, (a, b) in bad.items())
        raise ValueError(f"the draft model does not fit the target ({detail})")


@torch.no_grad()
def sample_continuous_speculative(
    target,
    draft,
    cond: torch.Tensor,
    generators,
    params: SamplingParams | None = None,
    spec: ContinuousSpeculativeParams | None = None,
    negative_cond: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> DecodeResult:
    """Sample (B, N, d) latents from ``target`` with vector drafts from ``draft``."""
    params, spec = params or SamplingParams(), spec or ContinuousSpeculativeParams()
    check_draft_for_cspd(target, draft)
    gamma, batch, total, prefix_len = spec.draft_tokens, cond.shape[0], target.seq_len, target.prefix_len
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
    device = cond.device
    rng = as_device_random(generators, device)
    target_cond = with_unconditional(target, cond, negative_cond) if params.uses_cfg else cond
    draft_cond = with_unconditional(draft, cond, negative_cond) if params.uses_cfg else cond
    rows = target_cond.shape[0]
    streams = rows // batch

    def both(x: torch.Tensor) -> torch.Tensor:
        return x.repeat(streams, *([1] * (x.ndim - 1)))

    def guide(z: torch.Tensor) -> torch.Tensor:  # (R, ..., dim) -> (B, ..., dim); guidance on z (as in MAR)
        return classifier_free_guidance(z[:batch], z[batch:], params.guidance_scale) if params.uses_cfg else z

    p_steps = DiffusionSteps(target.head, spec.num_inference_steps, params.temperature, target.config.x0_clip)
    q_steps = DiffusionSteps(draft.head, spec.num_inference_steps, params.temperature, draft.config.x0_clip)
    start = time.perf_counter()
    target.setup_cache(rows, device=device, extra=gamma + 1)
    draft.setup_cache(rows, device=device, extra=gamma + 1)
    try:
        first = p_steps.sample(guide(target.prefill(target_cond)), rng)[-1]
        ledger = SpeculationLedger(
            first.float(), total, gamma
        )  # latents kept in fp32 whatever the model dtype
        draft.prefill(draft_cond)
        first_position = torch.full((1,), prefix_len, dtype=torch.long, device=device)
        z_q = draft.step(both(ledger.tokens[:, :1]), first_position)[:, -1]
        steps = ledger.steps
        while ledger.running:
            cursor = ledger.cursor
            # 1. Draft gamma tokens with their trajectories and the draft's log density of each.
            trajectories, z_drafts, log_q = [], [], []
            for i in range(gamma):
                zg = guide(z_q)
                xs = q_steps.sample(zg, rng)
                trajectories.append(xs)
                z_drafts.append(zg)
                log_q.append(q_steps.log_density(xs, zg))
                if i + 1 < gamma:
                    position = (prefix_len + cursor + i)[:, None]
                    z_q = draft.step(both(xs[-1][:, None]), both(position))[:, 0]
            drafts = torch.stack([xs[-1] for xs in trajectories], dim=1)  # (B, gamma, d)

            # 2. Verify: [last decided token, drafts] at positions P + cursor - 1 + (0..gamma).
            positions = prefix_len + cursor[:, None] - 1 + steps
            chunk = torch.cat([ledger.last_decided(cursor), drafts], dim=1)
            z_p = guide(target.step(both(chunk), both(positions)))  # (B, gamma + 1, dim)

            # 3. Trajectory-aligned acceptance, longest accepted prefix, then a residual or bonus token.
            log_p = torch.stack([p_steps.log_density(xs, z_p[:, i]) for i, xs in enumerate(trajectories)], 1)
            log_ratio = (log_p - torch.stack(log_q, 1)) / spec.inner_temperature
            u = rng.uniform(gamma)
            passed = u.clamp_min(1e-30).log() <= log_ratio.clamp(max=0)
            accepted = passed.long().cumprod(1).sum(1)  # (B,)
            at = accepted.clamp(max=gamma - 1)
            # The draft's z may be narrower than the target's: each is gathered from its own stack.
            z_p_at, z_q_at = take_at(z_p, at), take_at(torch.stack(z_drafts, 1), at)
            fixed = _residual_sample(p_steps, q_steps, z_p_at, z_q_at, rng, spec.max_tries)
            bonus = p_steps.sample(z_p[:, gamma], rng)[-1]
            final = torch.where((accepted == gamma)[:, None], bonus, fixed)
            new = ledger.commit(cursor, drafts, final, accepted)

            # 4. The draft model reads the verified tokens; its output at each row's new end drafts next.
            z_new = draft.step(both(new), both(positions + 1))  # token cursor + k sits at P + cursor + k
            z_q = take_at(z_new, both(accepted))
            if ledger.end_round(callback):
                break
    finally:
        target.backbone.reset_cache()
        draft.backbone.reset_cache()
    stats = {
        **ledger.stats(),
        "head_steps": spec.num_inference_steps,
        "decode_seconds": time.perf_counter() - start,
    }
    return DecodeResult(ledger.result(), stats)


def _residual_sample(p_steps, q_steps, z_p, z_q, rng, max_tries: int) -> torch.Tensor:
    """Acceptance-rejection draws from max(0, p - q): a target trajectory y is kept with probability
    max(0, 1 - q(y) / p(y)); after ``max_tries`` the last draw stands (bounded, approximate)."""
    result, done = None, torch.zeros(z_p.shape[0], dtype=torch.bool, device=z_p.device)
    for _ in range(max_tries):
        xs = p_steps.sample(z_p, rng)
        keep_prob = 1 - torch.exp((q_steps.log_density(xs, z_q) - p_steps.log_density(xs, z_p)).clamp(max=0))
        u = rng.uniform(1)[:, 0]
        take = ~done & (u < keep_prob)
        result = xs[-1] if result is None else torch.where(~done[:, None], xs[-1], result)  # newest draw
        done |= take
        # A host read per try, but only off the GPU: there it would stall the stream, so every try runs.
        if z_p.device.type == "cpu" and bool(done.all()):
            break
    return result
