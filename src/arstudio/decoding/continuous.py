"""Raster-order decoding of vector tokens: the backbone gives z per position, a head loop turns z into a token.

- diffusion head: respaced DDPM over ``num_inference_steps`` of the training schedule; MAR's temperature
  scales the noise added at each reverse step (sigma_t * tau). The predicted x0 is clipped: with the cosine
  schedule sqrt(alpha_bar) at the first step is ~5e-5, so an unclipped x0 amplifies the noise-prediction
  error thousands of times (research probe A).
- flow head: Euler steps of the velocity from t = 1 (noise scaled by the temperature) to t = 0.
- bridge head: the d level ids one by one, with the discrete path's temperature / top-k / top-p and draws.

Guidance is applied to the head's conditioning vector, z_u + s (z_c - z_u) (TokenBridge), so the head
loop runs once per image whatever the guidance scale. Every draw is the image's own, made on the device
(``random.py``); the schedule's numbers are read to the host once per call.
"""

from __future__ import annotations

import math
import time

import torch

from arstudio.decoding.autoregressive import DecodeResult, StepCallback
from arstudio.decoding.guidance import ControlSignal, guidance_rows, guide
from arstudio.decoding.logits import SamplingParams, draw, filter_logits
from arstudio.decoding.random import DeviceRandom, as_device_random


def check_num_inference_steps(steps, head) -> int:
    """Head sampling steps: an integer in [1, T] for diffusion (T = training timesteps), >= 1 for flow."""
    high = getattr(head, "num_timesteps", None)
    allowed = f"an integer in [1, {high}]" if high else "an integer >= 1"
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (high and steps > high):
        raise ValueError(
            f"num_inference_steps={steps!r} is not allowed for a {head.kind} head: use {allowed}"
        )
    return steps


def per_row_randn(rng: DeviceRandom, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """(B, *shape) standard normal noise, row i from image i's draws, as ``like``'s dtype and device."""
    return rng.normal(shape).to(device=like.device, dtype=like.dtype)


def diffusion_schedule(head, steps: int) -> list[tuple[int, float, float]]:
    """The respaced reverse steps as host numbers, read once per call (not once per token):
    [(t, alpha_bar_t, alpha_bar of the next step or 1.0)]."""
    abar = head.alphas_cumprod_list
    timesteps = torch.linspace(head.num_timesteps - 1, 0, steps).round().long().tolist()
    nexts = [abar[t] for t in timesteps[1:]] + [1.0]
    return [(t, abar[t], a_prev) for t, a_prev in zip(timesteps, nexts, strict=True)]


def ddpm_sample(head, z, rng, steps: int, temperature: float, x0_clip: float, schedule=None) -> torch.Tensor:
    """z (B, dim) -> tokens (B, d) by ``steps`` respaced reverse DDPM steps; ``rng``: a DeviceRandom or one
    generator per row; ``schedule``: ``diffusion_schedule(head, steps)`` when the caller made it already."""
    rng = as_device_random(rng, z.device)
    schedule = schedule or diffusion_schedule(head, steps)
    x = per_row_randn(rng, (head.token_dim,), z)
    for i, (t, a_t, a_prev) in enumerate(schedule):
        eps = head(x, torch.full((x.shape[0],), t, device=z.device), z)
        x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-x0_clip, x0_clip)
        alpha = a_t / a_prev  # this (respaced) step's 1 - beta
        mean_x0 = math.sqrt(a_prev) * (1 - alpha) / (1 - a_t)
        mean_xt = math.sqrt(alpha) * (1 - a_prev) / (1 - a_t)
        x = mean_x0 * x0 + mean_xt * x
        if i + 1 < steps:
            sigma = math.sqrt((1 - alpha) * (1 - a_prev) / (1 - a_t))
            x = x + sigma * temperature * per_row_randn(rng, (head.token_dim,), z)
    return x


def euler_sample(head, z, rng, steps: int, temperature: float) -> torch.Tensor:
    """z (B, dim) -> tokens (B, d) by ``steps`` Euler steps of the flow from t = 1 to 0."""
    rng = as_device_random(rng, z.device)
    x = temperature * per_row_randn(rng, (head.token_dim,), z)
    times = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        v = head(x, torch.full((x.shape[0],), t, device=z.device), z)
        x = x + (t_next - t) * v
    return x


def dimensionwise_sample(head, z, rng, params: SamplingParams) -> torch.Tensor:
    """z (B, dim) -> level ids (B, d), one dimension at a time."""
    rng = as_device_random(rng, z.device)
    ids = torch.zeros(z.shape[0], 0, dtype=torch.long, device=z.device)
    for _ in range(head.token_dim):
        probs = filter_logits(head.next_logits(ids, z), params.temperature, params.top_k, params.top_p)
        ids = torch.cat([ids, draw(probs, rng)[:, None]], dim=1)
    return ids


def sample_head(
    model, z, rng, params: SamplingParams, num_inference_steps: int, schedule=None
) -> torch.Tensor:
    """One token per row from the head; ``schedule`` (diffusion heads): diffusion_schedule, made once."""
    head = model.head
    if head.kind == "diffusion":
        return ddpm_sample(
            head, z, rng, num_inference_steps, params.temperature, model.config.x0_clip, schedule
        )
    if head.kind == "flow":
        return euler_sample(head, z, rng, num_inference_steps, params.temperature)
    return dimensionwise_sample(head, z, rng, params)


@torch.no_grad()
def sample_continuous(
    model,
    cond: torch.Tensor,
    generators,
    params: SamplingParams | None = None,
    num_inference_steps: int = 25,
    callback: StepCallback | None = None,
    use_cache: bool = True,
    negative_cond: torch.Tensor | None = None,
    control: ControlSignal | None = None,
) -> DecodeResult:
    """Sample (B, N, d) tokens (float latents, or level ids for a bridge head) from a
    ``ContinuousImageGenerator`` for ``cond`` (B, ...); arguments as in ``sample_autoregressive``."""
    params = params or SamplingParams()
    if model.head.kind != "bridge":
        check_num_inference_steps(num_inference_steps, model.head)
    if len(generators) != cond.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {cond.shape[0]}")
    batch, total, d = cond.shape[0], model.seq_len, model.config.token_dim
    device = cond.device
    rng = as_device_random(generators, device)
    schedule = diffusion_schedule(model.head, num_inference_steps) if model.head.kind == "diffusion" else None
    cond = guidance_rows(model, cond, negative_cond, params, control)
    rows = cond.shape[0]
    dtype = torch.long if model.token_kind == "bridge" else model.tok_embeddings.weight.dtype
    tokens = torch.zeros(batch, total, d, dtype=dtype, device=device)
    forwards, start = 0, time.perf_counter()
    try:
        if use_cache:
            model.setup_cache(rows, device=device)
            z = model.prefill(cond)
            # The next step's position, on the device, advanced in place.
            position = torch.full((1,), model.prefix_len, dtype=torch.long, device=device)
        else:
            z = model(torch.zeros(rows, 1, d, dtype=dtype, device=device), cond)[:, -1]
        forwards += 1
        for index in range(total):
            z_guided = guide(z, batch, params, index, total, control)
            tokens[:, index] = sample_head(model, z_guided, rng, params, num_inference_steps, schedule)
            if callback is not None and callback(index, total, tokens[:, : index + 1]) is False:
                tokens = tokens[:, : index + 1]
                break
            if index + 1 == total:
                break
            if use_cache:
                step_tokens = tokens[:, index : index + 1].repeat(rows // batch, 1, 1)
                z = model.step(step_tokens, position, kv_len=model.prefix_len + index + 1)[:, -1]
                position += 1
            else:
                so_far = tokens[:, : index + 1].repeat(rows // batch, 1, 1)
                z = model(torch.cat([so_far, so_far[:, -1:]], dim=1), cond)[:, -1]  # last: unused placeholder
            forwards += 1
    finally:
        model.backbone.reset_cache()
        if control is not None:
            model.set_control(None)
    stats = {
        "forwards": forwards,
        "forwards_per_image": forwards,
        "head_steps": num_inference_steps if model.head.kind != "bridge" else d,
        "decode_seconds": time.perf_counter() - start,
    }
    return DecodeResult(tokens, stats)
