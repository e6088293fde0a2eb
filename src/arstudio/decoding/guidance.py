"""Classifier-free guidance streams, with an optional spatial control guided jointly or on its own scale.

Without control the batch is [cond; uncond] (2 streams) as in LlamaGen. With control (ControlAR):

- joint (``ControlSignal.guidance_scale`` None): [cond + control; uncond + null control], one scale for both,
  as ControlAR drops text and control together;
- separate scales: three streams [cond + control; uncond + control; uncond + null control] combined as
  InstructPix2Pix does for its two conditions,
  out = none + s_control (control_only - none) + s (full - control_only).
  With s_control = s this is the joint rule; s_control = 1 keeps the control unguided while the class
  is guided given the control.

Works on logits and on continuous heads' conditioning vectors alike (both are guided linearly).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from arstudio.decoding.logits import SamplingParams, classifier_free_guidance


@dataclass(frozen=True)
class ControlSignal:
    """Control tokens for one sampling call (from ``model.encode_control``, strength applied)."""

    tokens: torch.Tensor  # (B, N, dim) for the conditioned rows
    null: torch.Tensor  # (B, N, dim) the null control, for the unguided stream
    guidance_scale: float | None = None  # None: guided jointly with the class / text

    def __post_init__(self):
        scale = self.guidance_scale
        if scale is not None and (
            isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale < float("inf")
        ):  # "not 0 <= scale" also refuses nan
            raise ValueError(
                f"control_guidance_scale={scale!r} is not allowed: use a number >= 0 (None: same as guidance)"
            )


def with_unconditional(model, cond: torch.Tensor, negative_cond: torch.Tensor | None) -> torch.Tensor:
    """CFG's doubled batch [cond; uncond] (2B, ...): uncond is ``negative_cond`` or the model's null condition."""
    uncond = model.cls_embedding.null(cond.shape[0], cond.device) if negative_cond is None else negative_cond
    if uncond.shape != cond.shape:
        raise ValueError(f"negative condition {tuple(uncond.shape)} does not match {tuple(cond.shape)}")
    return torch.cat([cond, uncond.to(cond.device)])


def uses_guidance(params: SamplingParams, control: ControlSignal | None) -> bool:
    return params.uses_cfg or (control is not None and control.guidance_scale not in (None, 1.0))


def guidance_rows(
    model, cond: torch.Tensor, negative_cond, params: SamplingParams, control: ControlSignal | None
) -> torch.Tensor:
    """The condition rows of every stream (streams x B, ...), in the order ``guide`` reads them; hands the
    matching control rows to the model (``model.set_control``; the caller resets it afterwards)."""
    batch = cond.shape[0]
    if not uses_guidance(params, control):
        rows, control_rows = cond, None if control is None else control.tokens
    elif control is not None and control.guidance_scale is not None:
        rows = with_unconditional(model, cond, negative_cond)
        rows = torch.cat([rows, rows[batch:]])  # [cond; uncond; uncond]
        control_rows = torch.cat([control.tokens, control.tokens, control.null])
    else:
        rows = with_unconditional(model, cond, negative_cond)
        control_rows = None if control is None else torch.cat([control.tokens, control.null])
    if control_rows is not None:
        model.set_control(control_rows)
    return rows


def guided_tokens(params: SamplingParams, index: torch.Tensor, total: int) -> torch.Tensor:
    """``params.guided`` for per-image token indices (B, ...) on the device: the same decision, as the division
    is made in float64 like Python's ``index / total``."""
    lo, hi = params.cfg_interval
    fraction = index.double() / total
    return (fraction >= lo) & (fraction < hi)


def guide(
    out: torch.Tensor,
    batch: int,
    params: SamplingParams,
    index: int | torch.Tensor,
    total: int,
    control: ControlSignal | None = None,
) -> torch.Tensor:
    """Combine the streams' outputs (streams x B, ...) of token ``index`` into (B, ...). ``index``: one token
    index for the batch, or per-image indices (B, ...) matching ``out``'s leading dimensions (batched
    speculation, where images stand at different tokens); guidance then switches per image without a host read.
    """
    streams = out.shape[0] // batch
    if streams == 1:
        return out
    if isinstance(index, torch.Tensor):
        guided = guided_tokens(params, index, total)
        guided = guided.view(*guided.shape, *([1] * (out.ndim - guided.ndim)))
        every = dataclasses.replace(params, cfg_interval=(0.0, 1.0))
        return torch.where(guided, guide(out, batch, every, 0, total, control), out[:batch])
    if not params.guided(index, total):
        return out[:batch]
    if streams == 2:
        return classifier_free_guidance(out[:batch], out[batch:], params.guidance_scale)
    full, control_only, none = out.split(batch)
    return (
        none + control.guidance_scale * (control_only - none) + params.guidance_scale * (full - control_only)
    )
