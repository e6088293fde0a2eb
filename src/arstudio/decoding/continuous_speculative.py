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

from arstudio.decoding.cspd_head import sample_with_draft_head
from arstudio.decoding.drafting import check_fits
from arstudio.decoding.guidance import guide, with_unconditional
from arstudio.decoding.logits import SamplingParams
from arstudio.decoding.mar_cspd import check_mar_draft
from arstudio.decoding.random import as_device_random
from arstudio.decoding.rounds import SpeculationLedger, take_at
from arstudio.decoding.trajectories import Trajectories, prefill_tokens, residual_sample
from arstudio.decoding.types import DecodeResult, StepCallback
from arstudio.generators.draft_head import DraftHead
from arstudio.generators.mar import MARGenerator


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
        if tail is not None and (
            isinstance(tail, bool) or not isinstance(tail, int) or not 1 <= tail < self.num_inference_steps
        ):
            raise ValueError(
                f"tail_steps={tail!r} must be an integer in [1, num_inference_steps - 1={self.num_inference_steps - 1}]"
            )
        if not isinstance(self.inner_temperature, (int, float)) or self.inner_temperature < 1:
            raise ValueError(
                f"inner_temperature={self.inner_temperature!r} must be a number >= 1 (1 = exact)"
            )
        if (
            isinstance(self.prefill, bool)
            or not isinstance(self.prefill, (int, float))
            or not 0 <= self.prefill <= 1
        ):
            raise ValueError(f"prefill={self.prefill!r} must be a fraction in [0, 1]")

    def prefilled(self, total: int) -> int:
        """Tokens the target makes alone: at least token 0 (it comes from the prefill forward)."""
        return max(1, min(total, math.ceil(self.prefill * total)))


def check_draft_for_cspd(target, draft) -> None:
    """A draft head must come from this target; a draft model must share its tokens, schedule and grid."""
    if isinstance(target, MARGenerator):
        check_mar_draft(target, draft)
        return
    if getattr(target.head, "kind", None) != "diffusion":
        kind = getattr(target.head, "kind", type(target.head).__name__)
        raise ValueError(
            f"continuous speculative decoding needs diffusion heads; the target has a {kind} head"
        )
    if isinstance(draft, DraftHead):
        draft.check_target(target)
        return
    if getattr(draft.head, "kind", None) != "diffusion":
        kind = getattr(draft.head, "kind", type(draft.head).__name__)
        raise ValueError(
            f"continuous speculative decoding needs diffusion heads; the draft model has a {kind} head"
        )
    t, d = target, draft
    pairs = {
        "token_dim": (t.config.token_dim, d.config.token_dim),
        "num_timesteps": (t.head.num_timesteps, d.head.num_timesteps),
        "grid_size": (t.config.backbone.grid_size, d.config.backbone.grid_size),
        "prefix_len": (t.prefix_len, d.prefix_len),
    }
    check_fits(pairs)


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
        return sample_with_draft_head(target, draft, cond, generators, params, spec, negative_cond, callback)
    if spec.tail_steps is not None:
        raise ValueError(
            f"tail_steps={spec.tail_steps!r} applies to draft heads: a draft model's accepted tokens feed its next "
            "drafts, so its trajectories run to the end; leave it None"
        )
    return _sample_with_draft_model(target, draft, cond, generators, params, spec, negative_cond, callback)


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
            z_p = guide(
                target.step(both(chunk), both(positions)), batch, params, cursor[:, None] + steps, total
            )

            # 3. Trajectory-aligned acceptance, longest accepted prefix, then a residual or bonus token.
            means = [p_steps.means(xs[:-1], z_p[:, i]) for i, xs in enumerate(trajectories)]
            log_p = torch.stack(
                [p_steps.log_density(xs, m) for xs, m in zip(trajectories, means, strict=True)], 1
            )
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
    stats.update(
        head_steps=spec.num_inference_steps,
        prefilled_tokens=count,
        decode_seconds=time.perf_counter() - start,
    )
    return DecodeResult(ledger.result(), stats)
