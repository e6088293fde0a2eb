"""Plain autoregressive decoding: one token per step, raster order, static KV cache, CFG, callbacks.

``use_cache=False`` recomputes the whole sequence every step; it exists as the speed baseline and as a
check that the cache changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from arstudio.decoding.guidance import ControlSignal, guidance_rows, guide, with_unconditional
from arstudio.decoding.logits import SamplingParams, draw, filter_logits
from arstudio.decoding.random import as_device_random
from arstudio.decoding.types import DecodeResult, StepCallback

__all__ = ["DecodeResult", "StepCallback", "sample_autoregressive", "with_unconditional"]


@torch.no_grad()
def sample_autoregressive(
    model,
    cond: torch.Tensor,
    generators,
    params: SamplingParams | None = None,
    callback: StepCallback | None = None,
    use_cache: bool = True,
    negative_cond: torch.Tensor | None = None,
    prefix: torch.Tensor | None = None,
    pick: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    control: ControlSignal | None = None,
) -> DecodeResult:
    """Sample (B, N) tokens from ``model`` (an ImageGenerator-like object) for ``cond`` (B, ...).

    ``cond`` is what the model's condition module takes: class labels (B,) or text states (B, L, D).
    With guidance the batch is doubled to [cond; uncond], uncond being ``negative_cond`` (e.g. a negative
    prompt) or the model's null condition; both halves receive the same sampled token. ``control``: control
    tokens for a model with a control encoder, guided as ``decoding/guidance.py`` describes.

    ``prefix`` (B, k): tokens already known (read in one cached forward); sampling continues at k.
    ``pick(probs (B, V), index) -> ids (B,)`` replaces the random draw (Distilled Decoding's flow map).
    ``generators``: one ``torch.Generator`` per image (or a ``DeviceRandom``); unused with ``pick``.

    The loop reads nothing back from the device: the position advances in place on the device, draws are
    made there (``random.py``), and every decision taken per token (guided or not) is host arithmetic.
    """
    params = params or SamplingParams()
    batch, total = cond.shape[0], model.seq_len
    device = cond.device
    tokens = torch.zeros(batch, total, dtype=torch.long, device=device)
    known = 0 if prefix is None else prefix.shape[1]
    if prefix is not None:
        if use_cache is False or prefix.shape[0] != batch or not 0 < known < total:
            raise ValueError(
                f"prefix must be (B={batch}, k < {total}) with the cache on, got {tuple(prefix.shape)}"
            )
        tokens[:, :known] = prefix
    # After every check that can raise: guidance_rows sets the model's control, which only finally resets.
    cond = guidance_rows(model, cond, negative_cond, params, control)
    rows = cond.shape[0]
    if pick is None:
        rng = as_device_random(generators, device)

        def pick(probs, index):
            return draw(probs, rng)

    forwards = 0
    start = time.perf_counter()
    try:
        if use_cache:
            model.setup_cache(rows, device=device)
            logits = model.prefill(cond)
            if known:
                positions = torch.arange(model.prefix_len, model.prefix_len + known, device=device)
                logits = model.step(prefix.repeat(rows // batch, 1), positions)[:, -1]
                forwards += 1
            # The next step's position, (1,) on the device, advanced in place (its address stays put).
            position = torch.full((1,), model.prefix_len + known, dtype=torch.long, device=device)
        else:
            # Full pass over [prefix]: the placeholder token is never embedded (forward drops the last token).
            logits = model(torch.zeros(rows, 1, dtype=torch.long, device=device), cond)[:, -1]
        forwards += 1
        for index in range(known, total):
            probs = filter_logits(
                guide(logits, batch, params, index, total, control),
                params.temperature,
                params.top_k,
                params.top_p,
            )
            tokens[:, index] = pick(probs, index)
            if callback is not None and callback(index, total, tokens[:, : index + 1]) is False:
                tokens = tokens[:, : index + 1]
                break
            if index + 1 == total:
                break
            step_tokens = tokens[:, index : index + 1].repeat(rows // batch, 1)
            if use_cache:
                # kv_len: the host knows how far the cache is written (eager steps attend over that much)
                logits = model.step(step_tokens, position, kv_len=model.prefix_len + index + 1)[:, -1]
                position += 1
            else:
                so_far = tokens[:, : index + 1].repeat(rows // batch, 1)
                padded = torch.cat([so_far, so_far[:, -1:]], dim=1)  # last column is the unused placeholder
                logits = model(padded, cond)[:, -1]
            forwards += 1
    finally:
        model.backbone.reset_cache()  # detach the (pooled) caches between calls
        if control is not None:
            model.set_control(None)
    elapsed = time.perf_counter() - start
    stats = {
        "forwards": forwards,
        "forwards_per_image": forwards,
        "tokens_per_forward": tokens.shape[1] / forwards,
        "decode_seconds": elapsed,
    }
    return DecodeResult(tokens, stats)
