"""Distilled decoding: all tokens of an image in one or two forwards of a DD model (DD1 arXiv 2412.17153,
DD2 arXiv 2510.21003), plus the teacher-side flow map they are built on.

- ``teacher_flow_tokens``: the teacher AR model with DD1's closed-form map (``decoding/flow_map.py``) in
  place of the random draw, chained over positions: noise (B, N, d) -> tokens, deterministic, and
  distributed exactly as the teacher's sampler (at its guidance, temperature, top-k/p). It makes DD1's
  training pairs, and it is the teacher part of the hybrid sampler.
- ``sample_distilled``: 1 step (X_0 = all noise -> every token) or 2 steps (keep the first
  ``two_step_start`` tokens of step 1, put the *same* noise back after them, run again from that state).
- ``sample_distilled_hybrid``: one DD step, keep its first ``start`` tokens, let the teacher continue
  with the flow map on the same noise up to ``two_step_start``, finish with one DD step from there.

Choices where the papers leave them open (tested in tests/test_distilled.py):
- The teacher's distribution is its *sampling* distribution at the preset's defaults (guidance 3 for
  shapes-c2i, temperature 1, no top-k): the DD model has no CFG of its own, so guidance is distilled in.
- Positions < ``logits_tokens`` take the argmax of the logits head; later positions send the regressed
  vector straight to the tokenizer's decoder (DD1's released sampler). ``tokens`` in the result are the
  nearest codes of those vectors, ``vectors`` what was decoded.
- Noise comes from each image's own ``torch.Generator`` (N x d standard normals, raster order), so one seed
  gives the same image alone or in a batch; passing ``noise`` directly replays a given trajectory.
"""

from __future__ import annotations

import time

import torch

from arstudio.decoding.autoregressive import DecodeResult, sample_autoregressive
from arstudio.decoding.flow_map import DEFAULT_FLOW_STEPS, flow_to_codebook
from arstudio.decoding.logits import SamplingParams
from arstudio.generators.distilled import nearest_codes

DISTILLED_STEPS = (1, 2)


def draw_noise(generators: list[torch.Generator], seq_len: int, token_dim: int, device=None) -> torch.Tensor:
    """(B, N, d) standard normals, row b from ``generators[b]``."""
    rows = [torch.randn(seq_len, token_dim, generator=g, device=g.device) for g in generators]
    return torch.stack(rows).to(device)


def check_noise(noise, batch: int, seq_len: int, token_dim: int) -> torch.Tensor:
    expected = (batch, seq_len, token_dim)
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != expected or not noise.is_floating_point():
        found = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(
            f"noise must be a float tensor (images, tokens, codebook dims) = {expected}, got {found}"
        )
    if not torch.isfinite(noise).all():
        raise ValueError("noise holds NaN or infinite values")
    return noise


def teacher_flow_tokens(
    teacher,
    cond: torch.Tensor,
    noise: torch.Tensor,
    codebook: torch.Tensor,
    params: SamplingParams,
    prefix: torch.Tensor | None = None,
    stop: int | None = None,
    negative_cond: torch.Tensor | None = None,
    flow_steps: int = DEFAULT_FLOW_STEPS,
) -> DecodeResult:
    """The teacher's tokens for ``noise`` (B, N, d) through DD1's map: (B, stop) ids, positions < k taken
    from ``prefix`` (B, k) when given."""
    total = teacher.seq_len
    stop = total if stop is None else stop
    check_noise(noise, cond.shape[0], total, codebook.shape[1])

    def pick(probs: torch.Tensor, index: int) -> torch.Tensor:
        return flow_to_codebook(noise[:, index].to(probs.device), probs, codebook, flow_steps)

    def until(index: int, _total: int, _tokens) -> bool:
        return index + 1 < stop  # False ends sampling after token stop - 1

    return sample_autoregressive(
        teacher, cond, [], params, until, negative_cond=negative_cond, prefix=prefix, pick=pick
    )


def _tokens_from_outputs(logits, vectors, codebook, kept: torch.Tensor | None = None):
    """Merge one DD forward's split outputs (logits (B, s, V) for the first s positions, vectors (B, N - s, d)
    for the rest) into (ids (B, N), vectors (B, N, d)): argmax codes first, then the regressed vectors and
    their nearest codes; the ``kept`` ids (B, k), when given, replace the first k positions."""
    early = logits.argmax(dim=-1)  # (B, s)
    ids = torch.cat([early, nearest_codes(vectors, codebook)], dim=1)
    out = torch.cat([codebook[early].to(vectors.dtype), vectors], dim=1)
    if kept is not None:
        known = kept.shape[1]
        ids = torch.cat([kept, ids[:, known:]], dim=1)
        out = torch.cat([codebook[kept].to(out.dtype), out[:, known:]], dim=1)
    return ids, out


@torch.no_grad()
def sample_distilled(
    model, cond: torch.Tensor, noise: torch.Tensor, codebook: torch.Tensor, steps: int = 1
) -> DecodeResult:
    """``steps`` DD forwards: noise (B, N, d) -> tokens (B, N) and decoded vectors (B, N, d)."""
    if steps not in DISTILLED_STEPS:
        raise ValueError(
            f"num_inference_steps={steps!r} is not supported by distilled decoding: use one of {DISTILLED_STEPS}"
        )
    config = model.config
    check_noise(noise, cond.shape[0], model.seq_len, config.token_dim)
    start = time.perf_counter()
    noise = noise.to(codebook.dtype)
    ids, out = _tokens_from_outputs(*model(noise, 0, cond, split=True), codebook)
    if steps == 2:
        result = _continue(model, cond, noise, codebook, ids[:, : config.two_step_start])
        ids, out = result.tokens, result.vectors
    stats = {
        "forwards": steps,
        "forwards_per_image": steps,
        "tokens_per_forward": ids.shape[1] / steps,
        "decode_seconds": time.perf_counter() - start,
    }
    return DecodeResult(ids, stats, out)


def _continue(
    model, cond, noise, codebook, kept: torch.Tensor, logits_tokens: int | None = None
) -> DecodeResult:
    """One DD forward from X_k: the kept ids (B, k) as data, the original noise after them."""
    known = kept.shape[1]
    state = torch.cat([codebook[kept].to(noise.dtype), noise[:, known:]], dim=1)  # (B, N, d)
    outputs = model(state, known, cond, split=True, logits_tokens=logits_tokens)
    ids, out = _tokens_from_outputs(*outputs, codebook, kept)
    return DecodeResult(ids, {}, out)


@torch.no_grad()
def sample_distilled_hybrid(
    model,
    teacher,
    cond: torch.Tensor,
    noise: torch.Tensor,
    codebook: torch.Tensor,
    params: SamplingParams,
    start: int,
    negative_cond: torch.Tensor | None = None,
) -> DecodeResult:
    """DD1's teacher-involved sampler: DD step -> keep ``start`` tokens -> teacher (flow map, same noise)
    to ``two_step_start`` -> DD step. Forwards: 1 + (teacher's) + 1."""
    switch = model.config.two_step_start
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < switch:
        raise ValueError(
            f"dd_hybrid_start={start!r} must be an integer in [0, {switch - 1}] (the model "
            f"switches back from the teacher at token {switch})"
        )
    check_noise(noise, cond.shape[0], model.seq_len, model.config.token_dim)
    began = time.perf_counter()
    noise = noise.to(codebook.dtype)
    forwards = 0
    kept = None
    if start:
        kept = _tokens_from_outputs(*model(noise, 0, cond, split=True), codebook)[0][:, :start]
        forwards += 1
    teacher_part = teacher_flow_tokens(teacher, cond, noise, codebook, params, kept, switch, negative_cond)
    forwards += teacher_part.stats["forwards"]
    # DD1's release finishes the teacher-involved sampler with a later logits/vector split than its few-step one
    split = model.config.hybrid_logits_tokens or None
    result = _continue(model, cond, noise, codebook, teacher_part.tokens[:, :switch], split)
    forwards += 1
    stats = {
        "forwards": forwards,
        "forwards_per_image": forwards,
        "tokens_per_forward": result.tokens.shape[1] / forwards,
        "decode_seconds": time.perf_counter() - began,
    }
    return DecodeResult(result.tokens, stats, result.vectors)
