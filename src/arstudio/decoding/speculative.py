"""Batched speculative decoding, exact (Leviathan/Chen acceptance) or LANTERN-relaxed.

Drafts come from a drafting source (``drafting.py``): an EAGLE-style drafter or an independent small model.

One round, for every image at once (each at its own position):
1. The drafter proposes ``draft_tokens`` (gamma) tokens from its own CFG-guided, filtered distribution:
   by default its most likely token, i.e. the proposal q is a point mass (as EAGLE-2 and LANTERN draft),
   or a sample from it (``greedy_drafts=False``). Either way the acceptance rule keeps the result exact.
   Point masses skip a sampling step per draft; which proposal is accepted more often depends on the
   drafter (a sampled proposal accepts with sum min(p, q), a point mass with p(top of q)).
2. The target reads [last decided token, drafts] (gamma + 1 positions) in one cached forward: the target
   distribution p at every draft and one past them.
3. Draft i is accepted if u_i <= p~(d_i) / q(d_i) (p~ = p for exact decoding, LANTERN's relaxed target
   otherwise) and all drafts before it were; the first rejected position samples the residual
   max(p~ - q, 0), and a fully accepted row takes a bonus token from p at the end.
4. The drafter catches up on the gamma + 1 positions the target just computed, reading its prediction
   for the next round at the row's new position.

Rows accept different numbers of tokens, so the KV caches are addressed per row: ``input_pos`` (B, T).
Entries left by rejected drafts sit past a row's position and are overwritten before they can be seen.

Randomness: every round, each image draws 2 gamma + 1 uniforms of its own (gamma for sampled drafts,
unused for greedy ones; gamma for the acceptance tests; one for the residual/bonus token), made on the
device from its generator's key (``random.py``), so an image's random draws do not depend on its
batch-mates (see ``logits.py`` on rounding). The only host read of a round is the ledger's check whether
every image is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from arstudio.decoding.autoregressive import DecodeResult, StepCallback, with_unconditional
from arstudio.decoding.drafting import drafting_for
from arstudio.decoding.lantern import relaxed_target, residual
from arstudio.decoding.logits import (
    SamplingParams,
    classifier_free_guidance,
    filter_logits,
    sample_with_uniform,
)
from arstudio.decoding.random import as_device_random
from arstudio.decoding.rounds import SpeculationLedger, take_at


@dataclass(frozen=True)
class SpeculativeParams:
    draft_tokens: int = 4
    lantern_delta: float = 0.0  # 0: exact speculative decoding
    lantern_lambda: float = 1.0  # > 1: LANTERN++ cap on the relaxed mass
    greedy_drafts: bool = True  # drafts are the drafter's top token (q = point mass) rather than samples
    # (lantern_k lives in the neighbour table the caller passes)

    def __post_init__(self):
        from arstudio.decoding.knobs import DRAFT_TOKENS, LANTERN_DELTA, LANTERN_LAMBDA

        for knob in (DRAFT_TOKENS, LANTERN_DELTA, LANTERN_LAMBDA):
            knob.check(getattr(self, knob.name))


class _Guide:
    """CFG + filtering for logits of rows [cond; uncond] at per-image token indices."""

    def __init__(self, params: SamplingParams, batch: int, total: int):
        self.params, self.batch, self.total = params, batch, total

    def __call__(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """logits (R, ..., V) with R = B or 2B; index (B, ...) token indices -> probabilities (B, ..., V)."""
        p = self.params
        if p.uses_cfg:
            cond, uncond = logits[: self.batch], logits[self.batch :]
            lo, hi = p.cfg_interval
            fraction = index.float() / self.total
            guided = ((fraction >= lo) & (fraction < hi))[..., None]
            logits = torch.where(guided, classifier_free_guidance(cond, uncond, p.guidance_scale), cond)
        return filter_logits(logits, p.temperature, p.top_k, p.top_p)


@torch.no_grad()
def sample_speculative(
    target,
    drafter,
    cond: torch.Tensor,
    generators,
    params: SamplingParams | None = None,
    spec: SpeculativeParams | None = None,
    neighbours: torch.Tensor | None = None,
    negative_cond: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> DecodeResult:
    """Sample (B, N) tokens from ``target`` with drafts from ``drafter``.

    ``neighbours`` (V, k) latent-neighbour ids turn on LANTERN's relaxed acceptance (with
    ``spec.lantern_delta`` > 0); without them the result is distributed exactly as plain AR sampling.
    """
    params, spec = params or SamplingParams(), spec or SpeculativeParams()
    gamma, batch, total, prefix_len = spec.draft_tokens, cond.shape[0], target.seq_len, target.prefix_len
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
    device = cond.device
    rng = as_device_random(generators, device)
    if params.uses_cfg:
        cond = with_unconditional(target, cond, negative_cond)
    rows = cond.shape[0]
    streams = rows // batch  # 2 with guidance: every token goes to both the cond and the uncond row

    def both(x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (R, ...)
        return x.repeat(streams, *([1] * (x.ndim - 1)))

    guide = _Guide(params, batch, total)
    drafting = drafting_for(target, drafter)
    start = time.perf_counter()
    target.setup_cache(rows, device=device, extra=gamma + 1)
    drafting.setup(rows, device, extra=gamma + 1)
    try:
        # Token 0 from the target's prefill; the drafter reads the prefix and token 0 to draft token 1.
        logits, prefix_hidden = target.prefill(cond, return_hidden=True)  # (R, V), (R, P, dim)
        first_u = rng.uniform(1)[:, 0]
        zero = torch.zeros(batch, dtype=torch.long, device=device)
        ledger = SpeculationLedger(sample_with_uniform(guide(logits, zero), first_u), total, gamma)
        draft_logits = drafting.start(cond[:batch], negative_cond, params.uses_cfg, prefix_hidden,
                                      both(ledger.tokens[:, :1]))  # fmt: skip
        steps = ledger.steps
        while ledger.running:
            cursor = ledger.cursor
            u = rng.uniform(2 * gamma + 1)  # (B, 2 gamma + 1)

            # 1. Draft gamma tokens; draft i is token cursor + i.
            drafts = torch.zeros(batch, gamma, dtype=torch.long, device=device)
            q = []
            for i in range(gamma):
                q_i = guide(draft_logits, cursor + i)  # (B, V)
                if spec.greedy_drafts:
                    drafts[:, i] = q_i.argmax(-1)
                    q_i = torch.zeros_like(q_i).scatter_(-1, drafts[:, i : i + 1], 1.0)
                else:
                    drafts[:, i] = sample_with_uniform(q_i, u[:, i])
                q.append(q_i)
                if i + 1 < gamma:
                    position = (prefix_len + cursor - 1 + i)[:, None]
                    draft_logits = drafting.propose(both(drafts[:, i : i + 1]), both(position))
            q = torch.stack(q, dim=1)  # (B, gamma, V)

            # 2. Verify: [last decided token, drafts] at positions P + cursor - 1 + (0..gamma).
            chunk = torch.cat([ledger.last_decided(cursor), drafts], dim=1)  # (B, gamma + 1)
            positions = prefix_len + cursor[:, None] - 1 + steps  # (B, gamma + 1)
            logits, hidden = target.step(both(chunk), both(positions), return_hidden=True)
            p = guide(logits, cursor[:, None] + steps)  # (B, gamma + 1, V): token cursor + i

            # 3. Accept the longest prefix of drafts that pass; then one residual or bonus token.
            relaxed = relaxed_target(
                p[:, :gamma], drafts, neighbours, spec.lantern_delta, spec.lantern_lambda
            )
            p_draft = relaxed.gather(-1, drafts[..., None]).squeeze(-1)  # (B, gamma)
            q_draft = q.gather(-1, drafts[..., None]).squeeze(-1)
            passed = u[:, gamma : 2 * gamma] * q_draft <= p_draft  # u <= p~/q without dividing by q
            accepted = passed.long().cumprod(dim=1).sum(dim=1)  # (B,) in 0..gamma
            at = accepted.clamp(max=gamma - 1)
            after_reject = residual(take_at(relaxed, at), take_at(q, at))  # (B, V)
            final_probs = torch.where((accepted == gamma)[:, None], p[:, gamma], after_reject)
            new = ledger.commit(cursor, drafts, sample_with_uniform(final_probs, u[:, 2 * gamma]), accepted)

            # 4. The drafter catches up on the verified positions, reading on from each row's new end.
            draft_logits = drafting.catch_up(both(new), hidden, both(positions), both(accepted))
            if ledger.end_round(callback):
                break
    finally:
        target.backbone.reset_cache()
        drafting.reset()
    stats = {
        **ledger.stats(),
        "drafter_forwards": ledger.round_count * gamma + 1,
        "decode_seconds": time.perf_counter() - start,
    }
    return DecodeResult(ledger.result(), stats)
