"""MAR's sampler: masked autoregression in a random order over ``num_iter`` iterations.

Each image draws its own random order of the N positions (its generator's draws, on the device). Iteration k
starts with m_k positions still masked and ends with m_{k+1}: MaskGIT's cosine schedule,
m_{k+1} = max(1, min(m_k - 1, floor(N cos(pi/2 (k + 1) / num_iter)))), and the last iteration predicts every
position left. The schedule depends only on N and num_iter, so it is made on the host before the loop and
every shape in the loop is known there: the loop reads nothing back. In iteration k the positions
order[m_k:] are known and order[m_{k+1}:m_k] are predicted: one encoder-decoder pass gives z for them, and
the head (``mar_head.py``) denoises each predicted token on its own.

Guidance (MAR's): the null class's rows run beside the conditional ones and the head mixes their noise
predictions with a scale that grows with the fraction of tokens decided ("linear", Muse), or stays at the
guidance scale ("constant"). ``cfg_ramp`` interpolates the two: 1 is MAR's linear schedule, 0 its constant one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from arstudio.decoding.continuous import check_num_inference_steps
from arstudio.decoding.logits import SamplingParams
from arstudio.decoding.mar_head import learned_range_schedule, sample_mar_head
from arstudio.decoding.random import DeviceRandom, as_device_random
from arstudio.decoding.types import DecodeResult, StepCallback


@dataclass(frozen=True)
class MARIteration:
    """One iteration's host numbers: masked positions before and after it, and the mask length that sets
    the linear guidance schedule (MAR's ``mask_len``: at least 1, also at the last iteration)."""

    masked: int
    masked_after: int
    mask_len: int

    @property
    def predicted(self) -> int:
        return self.masked - self.masked_after


def mask_schedule(seq_len: int, num_iter: int) -> list[MARIteration]:
    """MAR's iterations for N = ``seq_len`` tokens in ``num_iter`` iterations (host integers)."""
    if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 1:
        raise ValueError(f"num_iter={num_iter!r} must be an integer >= 1")
    plan, masked = [], seq_len
    for step in range(num_iter):
        mask_len = math.floor(seq_len * math.cos(math.pi / 2 * (step + 1) / num_iter))
        mask_len = max(1, min(masked - 1, mask_len))
        after = 0 if step == num_iter - 1 else mask_len
        plan.append(MARIteration(masked, after, mask_len))
        masked = after
    return plan


def guidance_at(scale: float, ramp: float, mask_len: int, seq_len: int) -> float:
    """The iteration's guidance scale: 1 + (s - 1) (ramp (N - mask_len) / N + 1 - ramp)."""
    return 1 + (scale - 1) * (ramp * (seq_len - mask_len) / seq_len + (1 - ramp))


def random_orders(rng: DeviceRandom, seq_len: int) -> torch.Tensor:
    """(B, N) one random permutation of the positions per image, from its own draws."""
    return rng.uniform(seq_len).argsort(dim=1)


def iteration_noise(rng: DeviceRandom, predicted: int, steps: int, d: int) -> torch.Tensor:
    """(S, B * P, d) the head's noise for P predicted tokens per image (rows image-major)."""
    noise = rng.normal((predicted, steps, d))  # (B, P, S, d)
    return noise.permute(2, 0, 1, 3).flatten(1, 2)


def mar_iteration(
    model,
    tokens: torch.Tensor,
    order: torch.Tensor,
    it: MARIteration,
    cond: torch.Tensor,
    noise: torch.Tensor,
    params: SamplingParams,
    head_steps: int,
    ramp: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One iteration on the canvas ``tokens`` (B, N, d) (written in place): ``cond`` the class rows (B, dim),
    followed by the null class's (B, dim) when guided; ``noise`` (S, B * P, d). Returns (the predicted positions
    (B, P), sorted, and their tokens (B, P, d))."""
    batch = tokens.shape[0]
    predict, z, z_uncond = iteration_conditions(model, tokens, order, it, cond)
    scale = guidance_at(params.guidance_scale, ramp, it.mask_len, model.seq_len)
    schedule = learned_range_schedule(model.head.num_timesteps, head_steps)
    new = sample_mar_head(model.head, z, noise, schedule, params.temperature, z_uncond, scale)
    new = new.view(batch, it.predicted, -1)
    tokens.scatter_(1, predict[..., None].expand(-1, -1, tokens.shape[-1]), new.to(tokens.dtype))
    return predict, new


def iteration_conditions(
    model, tokens: torch.Tensor, order: torch.Tensor, it: MARIteration, cond: torch.Tensor
):
    """One pass for iteration ``it``: (the predicted positions (B, P), sorted; the head's conditions (B * P,
    dim), image-major; the null class's (B * P, dim), or None unguided)."""
    batch, streams = tokens.shape[0], cond.shape[0] // tokens.shape[0]
    known = order[:, it.masked :].sort(dim=1).values
    predict = order[:, it.masked_after : it.masked].sort(dim=1).values
    z = model(tokens.repeat(streams, 1, 1), known.repeat(streams, 1), cond)  # (R, N, dim)
    z = z.gather(1, predict.repeat(streams, 1)[..., None].expand(-1, -1, z.shape[-1])).flatten(0, 1)
    rows = batch * it.predicted
    return predict, z[:rows], z[rows:] if streams > 1 else None


def condition_rows(model, labels: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The class rows (B, dim), then the null class's (B, dim) when guided."""
    cond = model.class_embedding(labels)
    return torch.cat([cond, model.null_embedding(labels.shape[0])]) if params.uses_cfg else cond


def start_canvas(model, labels: torch.Tensor, generators, num_iter: int, num_inference_steps: int):
    """What both MAR samplers check and draw first: (the iterations, the images' draws, their random orders
    (B, N), an empty canvas (B, N, d))."""
    check_num_inference_steps(num_inference_steps, model.head)
    if len(generators) != labels.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {labels.shape[0]}")
    plan = mask_schedule(model.seq_len, num_iter)
    rng = as_device_random(generators, labels.device)
    order = random_orders(rng, model.seq_len)
    shape = (labels.shape[0], model.seq_len, model.config.token_dim)
    return plan, rng, order, torch.zeros(shape, dtype=model.z_proj.weight.dtype, device=labels.device)


@torch.no_grad()
def sample_mar(
    model,
    labels: torch.Tensor,
    generators,
    params: SamplingParams | None = None,
    num_iter: int = 64,
    num_inference_steps: int = 100,
    cfg_ramp: float = 1.0,
    callback: StepCallback | None = None,
) -> DecodeResult:
    """Tokens (B, N, d) for class ``labels`` (B,) from a ``MARGenerator``; one generator per image.
    ``callback(iteration, num_iter, canvas (B, N, d))``, undecided positions at 0; False stops (the tokens
    returned are then the canvas so far, in generation order: (B, decided, d))."""
    params, d = params or SamplingParams(), model.config.token_dim
    plan, rng, order, tokens = start_canvas(model, labels, generators, num_iter, num_inference_steps)
    schedule = learned_range_schedule(model.head.num_timesteps, num_inference_steps)
    cond = condition_rows(model, labels, params)
    forwards, start = 0, time.perf_counter()
    for step, it in enumerate(plan):
        if it.predicted:  # (num_iter near N: an iteration may have nothing left to predict)
            noise = iteration_noise(rng, it.predicted, schedule.steps, d)
            mar_iteration(model, tokens, order, it, cond, noise, params, num_inference_steps, cfg_ramp)
            forwards += 1
        if callback is not None and callback(step, num_iter, tokens) is False:
            decided = order[:, it.masked_after :].flip(1)  # generation order
            tokens = tokens.gather(1, decided[..., None].expand(-1, -1, d))
            break
    stats = {
        "forwards": forwards,
        "forwards_per_image": forwards,
        "num_iter": num_iter,
        "head_steps": schedule.steps,
        "decode_seconds": time.perf_counter() - start,
    }
    return DecodeResult(tokens, stats)
