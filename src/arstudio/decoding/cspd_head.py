"""CSpD with a draft head on the target's own trunk features (``generators/draft_head.py``).

One token per round: the target's trunk step gives z (exact, as in plain AR); the draft head runs the first
S - tail reverse steps on z, cheaply (a shallow net, the condition's part computed once per token); the target
scores those steps in one batched head call; rejected images take a residual sample of the same steps
(``residual_sample``; whether any image needs one is the round's one host read); then the target makes the
last ``tail_steps`` itself from the kept state, on the draft's noise, so the token is the target's. The
residual's draws are skipped, not left out, when no image needs it, so an image's draws never depend on its
batch-mates.
"""

from __future__ import annotations

import time

import torch

from arstudio.decoding.guidance import guide, with_unconditional
from arstudio.decoding.random import as_device_random
from arstudio.decoding.trajectories import Trajectories, prefill_tokens, residual_sample
from arstudio.decoding.types import DecodeResult


@torch.no_grad()
def sample_with_draft_head(
    target, draft, cond, generators, params, spec, negative_cond, callback
) -> DecodeResult:
    """``sample_continuous_speculative`` for a ``DraftHead`` (checked by the caller)."""
    batch, total, device = cond.shape[0], target.seq_len, cond.device
    rng = as_device_random(generators, device)
    rows = with_unconditional(target, cond, negative_cond) if params.uses_cfg else cond
    streams = rows.shape[0] // batch
    p = Trajectories(target.head, spec.num_inference_steps, params.temperature, target.config.x0_clip)
    q = Trajectories(draft.head, spec.num_inference_steps, params.temperature, target.config.x0_clip)
    residual_draws = spec.max_tries + 1  # residual_sample's draw calls: one noise per try, one uniform
    tail = min(2, spec.num_inference_steps - 1) if spec.tail_steps is None else spec.tail_steps
    drafted = spec.num_inference_steps - tail  # >= 1
    count = spec.prefilled(total)
    accepted = torch.zeros(total, dtype=torch.long, device=device)  # per token index, read after the loop
    residual_rounds, start = 0, time.perf_counter()
    try:
        first, z, position = prefill_tokens(target, p, rows, batch, count, params, rng, extra=0)
        tokens = first.new_zeros(batch, total, first.shape[-1])
        tokens[:, :count] = first
        stop = callback is not None and callback(count - 1, total, tokens[:, :count]) is False
        index = count
        while index < total and not stop:
            zg = guide(z, batch, params, index, total)
            noise = q.noise(rng, zg)  # (S, B, d): the draft's draws, and the target's in the tail
            # (drafted + 1, B, d): x_T .. the state the tail starts from
            xs = q.sample(zg, noise, stop=drafted)
            # (drafted, B, d): the target's step means along it, one batched call
            means = p.means(xs[:-1], zg)
            log_q = Trajectories.own_log_density(noise[: drafted + 1])
            log_ratio = (p.log_density(xs, means) - log_q) / spec.inner_temperature
            ok = rng.uniform(1)[:, 0].log() <= log_ratio.clamp(max=0)
            state = xs[-1]
            if bool(ok.all()):  # the round's one host read
                rng.draws += residual_draws
            else:
                residual_rounds += 1
                fixed = residual_sample(p, q, zg, zg, rng, spec.max_tries, steps=drafted)
                state = torch.where(ok[:, None], state, fixed)
            # The tail: the target's own last steps from the kept state, on the draft's noise (shared noise).
            token = p.sample(zg, noise, start=drafted, x=state)[-1]
            accepted[index] = ok.sum()
            tokens[:, index] = token.float()
            stop = callback is not None and callback(index, total, tokens[:, : index + 1]) is False
            index += 1
            if index < total and not stop:
                step_tokens = token[:, None].repeat(streams, 1, 1).to(z.dtype)
                z = target.step(step_tokens, position)[:, -1]
                position += 1
    finally:
        target.backbone.reset_cache()
    drafted = max(index - count, 0) * batch
    by_token = (accepted[count:index].double() / batch).tolist()  # one read after the loop
    stats = {
        "forwards": index,
        "forwards_per_image": index,
        "acceptance_rate": sum(by_token) * batch / max(drafted, 1),
        "acceptance_by_token": by_token,
        "residual_rounds": residual_rounds,
        "prefilled_tokens": count,
        "head_steps": spec.num_inference_steps,
        "decode_seconds": time.perf_counter() - start,
    }
    return DecodeResult(tokens[:, :index], stats)
