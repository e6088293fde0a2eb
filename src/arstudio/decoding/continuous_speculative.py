"""Continuous speculative decoding (CSpD, arXiv 2411.11925) for diffusion heads.

The density of a diffusion head's output is intractable, but each reverse step is Gaussian:
x_{i+1} ~ N(mu(x_i, z), (sigma_i * temperature)^2). So the acceptance test compares *trajectory* densities:
the draft's trajectory is scored under the target and under the draft on the same points (both models read
the one noise path the draft drew: CSpD's denoising-trajectory alignment), and kept if u <= p(traj) / q(traj).
The draft's own density is free (its transitions are its noise: log q = -|eps|^2 / 2 per step); the target's
is one batched head call over all the trajectory's steps. A draft head drafts all but the last ``tail_steps``
reverse steps, which the target then makes from the kept state with the same noise (shared noise), so its
tokens are exactly the target's samples.

On rejection the residual max(0, p - q) is sampled by acceptance-rejection with the target as proposal: a
target trajectory y is kept with probability max(0, 1 - q(y) / p(y)). ``max_tries`` proposals run at once as
extra rows (no host read per try); when none is kept the last one stands (a bounded approximation, as in
CSpD). With p = q every draft is accepted.

Two draft kinds:
- ``DraftHead`` (generators/draft_head.py): a small head distilled from the target's, reading the target's own
  trunk features z. Each token: the target's trunk step, the draft head's cheap trajectory, one batched
  target-density call, the residual only when some image rejected (the round's one host read). The trunk is
  exact, so only the heads differ and the rounds need no rollback.
- an independent small ``ContinuousImageGenerator`` (its own trunk and head): it drafts ``draft_tokens`` in a
  row, the target verifies them in one cached forward, the longest accepted prefix is kept (as discrete
  speculative decoding, ``rounds.py``).

Token pre-filling (CSpD): the first ``prefill`` fraction of the tokens comes from the target alone (acceptance
is lowest there, where the draft's errors are largest). Relaxed form: ``inner_temperature`` tau >= 1 tempers
the log ratio (accept if u <= (p/q)^(1/tau)); lossy for tau > 1 and named so; tau = 1 is the exact test.
Guidance (cfg_interval included) is ``guidance.guide``'s, as for every strategy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from arstudio.decoding.continuous import diffusion_schedule
from arstudio.decoding.guidance import guide, with_unconditional
from arstudio.decoding.logits import SamplingParams
from arstudio.decoding.random import as_device_random
from arstudio.decoding.rounds import SpeculationLedger, take_at
from arstudio.decoding.types import DecodeResult, StepCallback


@dataclass(frozen=True)
class ContinuousSpeculativeParams:
    draft_tokens: int = 1  # draft models with their own trunk: tokens drafted per target forward
    num_inference_steps: int = 25
    inner_temperature: float = 1.0  # > 1: relaxed (lossy) acceptance
    max_tries: int = 4  # acceptance-rejection proposals for the residual, drawn at once
    prefill: float = 0.15  # fraction of the tokens the target makes alone before drafting starts
    # Draft heads: the last reverse steps the target makes itself from the accepted state, with the draft's
    # noise (None: 2). The last noisy step has a tiny variance, where any two heads' means disagree by many
    # standard deviations; the target taking it keeps the test to the steps a draft can match.
    tail_steps: int | None = None

    def __post_init__(self):
        for name, low in (("draft_tokens", 1), ("num_inference_steps", 2), ("max_tries", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        tail = self.tail_steps
        if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or not 1 <= tail < self.num_inference_steps):
            raise ValueError(
                f"tail_steps={tail!r} must be an integer in [1, num_inference_steps - 1={self.num_inference_steps - 1}]"
            )
        if not isinstance(self.inner_temperature, (int, float)) or self.inner_temperature < 1:
            raise ValueError(
                f"inner_temperature={self.inner_temperature!r} must be a number >= 1 (1 = exact)"
            )
        if isinstance(self.prefill, bool) or not isinstance(self.prefill, (int, float)) or not 0 <= self.prefill <= 1:
            raise ValueError(f"prefill={self.prefill!r} must be a fraction in [0, 1]")

    def prefilled(self, total: int) -> int:
        """Tokens the target makes alone: at least token 0 (it comes from the prefill forward)."""
        return max(1, min(total, math.ceil(self.prefill * total)))


class Trajectories:
    """The respaced reverse-DDPM schedule of one diffusion head (``ddpm_sample``'s arithmetic) with every
    step's noise drawn up front and the condition's part of the head computed once per token."""

    def __init__(self, head, steps: int, temperature: float, x0_clip: float):
        self.head, self.x0_clip, self.steps = head, x0_clip, steps
        self.coefs = []  # per step: (sqrt(a_t), sqrt(1 - a_t), coefficient of x0, coefficient of x_t, noise std)
        for i, (_, a_t, a_prev) in enumerate(diffusion_schedule(head, steps)):
            alpha = a_t / a_prev
            sigma = math.sqrt((1 - alpha) * (1 - a_prev) / (1 - a_t)) if i + 1 < steps else 0.0
            self.coefs.append((math.sqrt(a_t), math.sqrt(1 - a_t), math.sqrt(a_prev) * (1 - alpha) / (1 - a_t),
                               math.sqrt(alpha) * (1 - a_prev) / (1 - a_t), sigma * temperature))  # fmt: skip
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

    def sample(self, z: torch.Tensor, noise: torch.Tensor, start: int = 0, stop: int | None = None,
               x: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Steps ``start`` .. ``stop`` - 1 from state x (M, d) (x_T = noise[0] when start is 0): z (M, dim),
        noise (S, M, d) -> the states (stop - start + 1, M, d); the whole trajectory x_T .. x_0 by default."""
        stop = self.steps if stop is None else stop
        count, rows = stop - start, z.shape[0]
        t = self.tables(z.device)[0][start:stop]
        # The steps' modulations in one batched call (z is fixed for the token), then split per step.
        mods = self.head.net.modulations(t.repeat_interleave(rows), z.repeat(count, 1))
        per_step = [[tuple(m.view(count, rows, -1)[i] for m in layer) for layer in mods] for i in range(count)]
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
    def own_log_density(noise: torch.Tensor) -> torch.Tensor:
        """log density (M,) of states drawn by a head with ``noise`` (S, M, d) under that head, for as many
        noisy steps as ``noise`` holds after x_T: their transitions are x_{i+1} = mean + std * noise[i + 1]."""
        return -(noise[1:] ** 2).sum((0, 2)) / 2


def residual_sample(p: Trajectories, q: Trajectories, z_p, z_q, rng, max_tries: int, steps: int | None = None):
    """Acceptance-rejection draws from max(0, p - q) over the first ``steps`` reverse steps (all by default):
    ``max_tries`` target trajectories y per row at once, each kept with probability max(0, 1 - q(y) / p(y));
    the first kept one, else the last, gives the state after those steps (B, d) (the token x_0 for all steps).
    Fixed shapes, no host read."""
    batch, steps = z_p.shape[0], p.steps if steps is None else steps
    tries = [p.noise(rng, z_p) for _ in range(max_tries)]  # each (S, B, d): every image's own draws
    noise = torch.cat(tries, dim=1)[: steps + 1]  # (steps + 1, tries * B, d), try-major
    ys = p.sample(z_p.repeat(max_tries, 1), noise, stop=steps)
    log_q = q.log_density(ys, q.means(ys[:steps], z_q.repeat(max_tries, 1)))
    own = Trajectories.own_log_density(noise[: min(steps, p.steps - 1) + 1])
    keep_prob = 1 - torch.exp((log_q - own).clamp(max=0))
    keep = (rng.uniform(max_tries).T.reshape(-1) < keep_prob).view(max_tries, batch)
    keep[-1] = True  # nothing kept: the last proposal stands
    first = keep.long().argmax(0)  # (B,) the first kept try of each image
    return ys[-1].view(max_tries, batch, -1)[first, torch.arange(batch, device=z_p.device)]


def check_draft_for_cspd(target, draft) -> None:
    """A draft head must come from this target; a draft model must share its tokens, schedule and grid."""
    from arstudio.generators.draft_head import DraftHead

    if getattr(target.head, "kind", None) != "diffusion":
        kind = getattr(target.head, "kind", type(target.head).__name__)
        raise ValueError(f"continuous speculative decoding needs diffusion heads; the target has a {kind} head")
    if isinstance(draft, DraftHead):
        draft.check_target(target)
        return
    if getattr(draft.head, "kind", None) != "diffusion":
        kind = getattr(draft.head, "kind", type(draft.head).__name__)
        raise ValueError(
            f"continuous speculative decoding needs diffusion heads; the draft model has a {kind} head"
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
    """Sample (B, N, d) latents from ``target`` with vector drafts from ``draft`` (a ``DraftHead`` or a
    draft model)."""
    from arstudio.generators.draft_head import DraftHead

    params, spec = params or SamplingParams(), spec or ContinuousSpeculativeParams()
    check_draft_for_cspd(target, draft)
    if len(generators) != cond.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {cond.shape[0]}")
    if isinstance(draft, DraftHead):
        if spec.draft_tokens != 1:
            raise ValueError(
                f"draft_tokens={spec.draft_tokens!r}: a draft head reads the target's trunk, so it drafts one "
                "token per target step; use draft_tokens=1"
            )
        from arstudio.decoding.cspd_head import sample_with_draft_head

        return sample_with_draft_head(target, draft, cond, generators, params, spec, negative_cond, callback)
    if spec.tail_steps is not None:
        raise ValueError(
            f"tail_steps={spec.tail_steps!r} applies to draft heads: a draft model's accepted tokens feed its next "
            "drafts, so its trajectories run to the end; leave it None"
        )
    return _sample_with_draft_model(target, draft, cond, generators, params, spec, negative_cond, callback)


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


def _sample_with_draft_model(target, draft, cond, generators, params, spec, negative_cond, callback):
    """Draft ``draft_tokens`` vector tokens with an independent small model, verify them in one target forward."""
    gamma, batch, total, prefix_len = spec.draft_tokens, cond.shape[0], target.seq_len, target.prefix_len
    device = cond.device
    rng = as_device_random(generators, device)
    target_cond = with_unconditional(target, cond, negative_cond) if params.uses_cfg else cond
    draft_cond = with_unconditional(draft, cond, negative_cond) if params.uses_cfg else cond
    streams = target_cond.shape[0] // batch

    def both(x: torch.Tensor) -> torch.Tensor:
        return x.repeat(streams, *([1] * (x.ndim - 1)))

    p_steps = Trajectories(target.head, spec.num_inference_steps, params.temperature, target.config.x0_clip)
    q_steps = Trajectories(draft.head, spec.num_inference_steps, params.temperature, draft.config.x0_clip)
    start = time.perf_counter()
    count = spec.prefilled(total)
    try:
        first, _, _ = prefill_tokens(target, p_steps, target_cond, batch, count, params, rng, gamma + 1)
        ledger = SpeculationLedger(first[:, 0], total, gamma)  # latents kept in fp32 whatever the model dtype
        ledger.tokens[:, :count] = first
        ledger.decided.fill_(count)
        ledger.least_decided = count
        draft.setup_cache(draft_cond.shape[0], device=device, extra=gamma + 1)
        draft.prefill(draft_cond)
        read = torch.arange(count, device=device) + prefix_len
        z_q = draft.step(both(first).to(draft.tok_embeddings.weight.dtype), read)[:, -1]
        steps = ledger.steps
        while ledger.running:
            cursor = ledger.cursor
            # 1. Draft gamma tokens with their trajectories; the draft's density is its noise's.
            trajectories, z_drafts, log_q = [], [], []
            for i in range(gamma):
                zg = guide(z_q, batch, params, cursor + i, total)
                noise = q_steps.noise(rng, zg)
                trajectories.append(q_steps.sample(zg, noise))
                z_drafts.append(zg)
                log_q.append(Trajectories.own_log_density(noise))
                if i + 1 < gamma:
                    position = (prefix_len + cursor + i)[:, None]
                    z_q = draft.step(both(trajectories[-1][-1][:, None]), both(position))[:, 0]
            drafts = torch.stack([xs[-1] for xs in trajectories], dim=1)  # (B, gamma, d)

            # 2. Verify: [last decided token, drafts] at positions P + cursor - 1 + (0..gamma).
            positions = prefix_len + cursor[:, None] - 1 + steps
            chunk = torch.cat([ledger.last_decided(cursor), drafts], dim=1)
            z_p = guide(target.step(both(chunk), both(positions)), batch, params, cursor[:, None] + steps, total)

            # 3. Trajectory-aligned acceptance, longest accepted prefix, then a residual or bonus token.
            means = [p_steps.means(xs[:-1], z_p[:, i]) for i, xs in enumerate(trajectories)]
            log_p = torch.stack([p_steps.log_density(xs, m) for xs, m in zip(trajectories, means, strict=True)], 1)
            log_ratio = (log_p - torch.stack(log_q, 1)) / spec.inner_temperature
            passed = rng.uniform(gamma).log() <= log_ratio.clamp(max=0)
            accepted = passed.long().cumprod(1).sum(1)  # (B,)
            # An accepted draft stays the draft's own x_0: it already fed the later drafts and the verify
            # forward. It differs from the target's last step from the same x_1 by the two heads' last,
            # noise-free step (the draft-head path, which has no later drafts, takes the target's).
            at = accepted.clamp(max=gamma - 1)
            # The draft's z may be narrower than the target's: each is gathered from its own stack.
            z_p_at, z_q_at = take_at(z_p, at), take_at(torch.stack(z_drafts, 1), at)
            fixed = residual_sample(p_steps, q_steps, z_p_at, z_q_at, rng, spec.max_tries)
            bonus = p_steps.sample(z_p[:, gamma], p_steps.noise(rng, z_p))[-1]
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
    stats = ledger.stats()
    stats["forwards_per_image"] += count - 1  # the prefilled tokens' target steps
    stats.update(head_steps=spec.num_inference_steps, prefilled_tokens=count,
                 decode_seconds=time.perf_counter() - start)  # fmt: skip
    return DecodeResult(ledger.result(), stats)
