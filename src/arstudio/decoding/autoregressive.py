"""Plain autoregressive decoding: one token per step, raster order, static KV cache, CFG, callbacks.

``use_cache=False`` recomputes the whole sequence every step; it exists as the speed baseline and as a
check that the cache changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from arstudio.decoding.logits import SamplingParams, classifier_free_guidance, draw, filter_logits

# callback(step_index, num_steps, tokens_so_far (B, step_index + 1)) -> None | False (False stops early)
StepCallback = Callable[[int, int, torch.Tensor], "bool | None"]


@dataclass
class DecodeResult:
    tokens: torch.Tensor  # (B, N) int64, raster order
    stats: dict = field(default_factory=dict)
    vectors: torch.Tensor | None = None  # (B, N, d) what the decoder should read instead of the ids' codes


def with_unconditional(model, cond: torch.Tensor, negative_cond: torch.Tensor | None) -> torch.Tensor:
    """CFG's doubled batch [cond; uncond] (2B, ...): uncond is ``negative_cond`` or the model's null condition."""
    uncond = model.cls_embedding.null(cond.shape[0], cond.device) if negative_cond is None else negative_cond
    if uncond.shape != cond.shape:
        raise ValueError(f"negative condition {tuple(uncond.shape)} does not match {tuple(cond.shape)}")
    return torch.cat([cond, uncond.to(cond.device)])


@torch.no_grad()
def sample_autoregressive(
    model,
    cond: torch.Tensor,
    generators: list[torch.Generator],
    params: SamplingParams | None = None,
    callback: StepCallback | None = None,
    use_cache: bool = True,
    negative_cond: torch.Tensor | None = None,
    prefix: torch.Tensor | None = None,
    pick: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> DecodeResult:
    """Sample (B, N) tokens from ``model`` (an ImageGenerator-like object) for ``cond`` (B, ...).

    ``cond`` is what the model's condition module takes: class labels (B,) or text states (B, L, D).
    With guidance the batch is doubled to [cond; uncond], uncond being ``negative_cond`` (e.g. a negative
    prompt) or the model's null condition; both halves receive the same sampled token.

    ``prefix`` (B, k): tokens already known (read in one cached forward); sampling continues at k.
    ``pick(probs (B, V), index) -> ids (B,)`` replaces the random draw (Distilled Decoding's flow map).
    """
    params = params or SamplingParams()
    batch, total = cond.shape[0], model.seq_len
    device = cond.device
    if params.uses_cfg:
        cond = with_unconditional(model, cond, negative_cond)
    rows = cond.shape[0]
    tokens = torch.zeros(batch, total, dtype=torch.long, device=device)
    known = 0 if prefix is None else prefix.shape[1]
    if prefix is not None:
        if use_cache is False or prefix.shape[0] != batch or not 0 < known < total:
            raise ValueError(
                f"prefix must be (B={batch}, k < {total}) with the cache on, got {tuple(prefix.shape)}"
            )
        tokens[:, :known] = prefix
    pick = pick or (lambda probs, index: draw(probs, generators))
    forwards = 0
    start = time.perf_counter()

    def guide(logits: torch.Tensor, index: int) -> torch.Tensor:
        if not params.uses_cfg:
            return logits
        cond_logits, uncond_logits = logits[:batch], logits[batch:]
        if not params.guided(index, total):
            return cond_logits
        return classifier_free_guidance(cond_logits, uncond_logits, params.guidance_scale)

    if use_cache:
        model.setup_cache(rows, device=device)
        logits = model.prefill(cond)
        if known:
            positions = torch.arange(model.prefix_len, model.prefix_len + known, device=device)
            logits = model.step(prefix.repeat(rows // batch, 1), positions)[:, -1]
            forwards += 1
    else:
        # Full pass over [prefix]: the placeholder token is never embedded (forward drops the last token).
        logits = model(torch.zeros(rows, 1, dtype=torch.long, device=device), cond)[:, -1]
    forwards += 1
    try:
        for index in range(known, total):
            probs = filter_logits(guide(logits, index), params.temperature, params.top_k, params.top_p)
            tokens[:, index] = pick(probs, index)
            if callback is not None and callback(index, total, tokens[:, : index + 1]) is False:
                tokens = tokens[:, : index + 1]
                break
            if index + 1 == total:
                break
            step_tokens = tokens[:, index : index + 1].repeat(rows // batch, 1)
            if use_cache:
                position = torch.tensor([model.prefix_len + index], device=device)
                logits = model.step(step_tokens, position)[:, -1]
            else:
                so_far = tokens[:, : index + 1].repeat(rows // batch, 1)
                padded = torch.cat([so_far, so_far[:, -1:]], dim=1)  # last column is the unused placeholder
                logits = model(padded, cond)[:, -1]
            forwards += 1
    finally:
        model.backbone.reset_cache()  # free the cache memory between calls
    elapsed = time.perf_counter() - start
    stats = {"forwards": forwards, "forwards_per_image": forwards, "tokens_per_forward": tokens.shape[1] / forwards,
             "decode_seconds": elapsed}  # fmt: skip
    return DecodeResult(tokens, stats)
