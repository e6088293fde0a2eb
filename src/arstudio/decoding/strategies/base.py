"""What every decoding strategy is: a name, its knobs, the sampling it applies, when it can run, how it runs.

A strategy object holds no state of its own; ``run`` reads the models from the pipeline it is given and
everything else from a ``DecodeRequest`` the pipeline has already checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arstudio.decoding.guidance import ControlSignal
from arstudio.decoding.knobs import DecodingParam
from arstudio.decoding.logits import SAMPLING_KEYS, SamplingParams
from arstudio.decoding.types import DecodeResult, StepCallback

# Every sampling setting a call may ask for: a preset's defaults (SAMPLING_KEYS) and the guidance interval.
SAMPLING_SETTINGS = (*SAMPLING_KEYS, "cfg_interval")
VECTOR_HEADS = ("diffusion", "flow")  # heads that denoise a vector: they take num_inference_steps


@dataclass(frozen=True)
class DecodeRequest:
    """One call's checked inputs, as a strategy's ``run`` reads them."""

    cond: torch.Tensor  # labels (B,) or text states (B, L, D)
    negative: torch.Tensor | None  # same shape as cond, or None for the model's null condition
    generators: list[torch.Generator]  # one per image
    params: SamplingParams
    knobs: dict  # the strategy's knobs, checked, defaults filled in
    head_steps: int | None = None  # vector-token heads: steps per token (the bridge's: its d dimensions)
    callback: StepCallback | None = None
    control: ControlSignal | None = None
    latents: torch.Tensor | None = None  # given noise, for strategies with ``takes_latents``


def _interval(value) -> tuple:
    """cfg_interval as a (lo, hi) tuple (a list from JSON recipes is fine); the range is checked later."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"cfg_interval={value!r} is not allowed: use (lo, hi) with 0 <= lo <= hi <= 1")
    return tuple(value)


def head_kind(generator) -> str:
    return getattr(generator.head, "kind", "categorical")


def control_reason(generator) -> str | None:
    """Drafters and DD models take no control: a control preset decodes with plain AR."""
    if getattr(generator, "control_encoder", None) is not None:
        return "a control preset decodes with decoding='ar' only (the drafters take no control)"
    return None


class Strategy:
    """A decoding strategy. Subclasses set the class attributes and ``run``; most need nothing else."""

    name: str = ""
    knobs: tuple[DecodingParam, ...] = ()
    needs: str | None = None  # the pipeline component it runs with besides the generator ("drafter", "dd1")
    fixed_sampling: bool = False  # samples at the preset's default sampling (distilled in): refuses others
    takes_latents: bool = False  # ``latents=`` (given noise) replaces its random draws
    uses_head_steps: bool = True  # with a diffusion/flow head, num_inference_steps are the head's steps

    def __repr__(self) -> str:
        return f"<strategy {self.name!r}>"

    def supports(self, generator, tokenizer) -> str | None:
        """Why this strategy cannot decode for these models (None when it can). Loading asks it too, to
        load only the components some strategy will use."""
        return None

    def available(self, pipe) -> str | None:
        """Why this strategy cannot run on ``pipe`` (None when it can)."""
        why = self.supports(pipe.generator, pipe.tokenizer)
        if why is None and self.needs is not None and self.needs not in pipe.components:
            why = f"it ships no {self.needs} model"
        return why

    def cannot_apply(self, generator) -> dict[str, str]:
        """{sampling setting: why} for the settings this strategy leaves at their neutral value."""
        head = head_kind(generator)
        if head in VECTOR_HEADS:
            why = f"a {head} head denoises vectors: there are no logits to filter"
            return {"top_k": why, "top_p": why}
        return {}

    def sampling(self, pipe, asked: dict) -> tuple[SamplingParams, dict[str, tuple]]:
        """(the sampling it runs with, {setting: (asked, what it uses instead)} for each setting in ``asked``
        it cannot apply). None values and keys that are not sampling settings are ignored."""
        asked = {k: _interval(v) if k == "cfg_interval" else v for k, v in asked.items() if v is not None}
        asked = {k: v for k, v in asked.items() if k in SAMPLING_SETTINGS}
        preset_sampling = SamplingParams.from_defaults(pipe.preset.defaults)
        if self.fixed_sampling:
            return preset_sampling, {
                k: (v, getattr(preset_sampling, k))
                for k, v in asked.items()
                if v != getattr(preset_sampling, k)
            }
        left = self.cannot_apply(pipe.generator)
        neutral = SamplingParams()
        conflicts = {
            k: (v, getattr(neutral, k)) for k, v in asked.items() if k in left and v != getattr(neutral, k)
        }
        applied = {k: v for k, v in asked.items() if k not in left}
        return SamplingParams.from_defaults(pipe.preset.defaults, **applied), conflicts

    def applied_knobs(self, generator, knobs: dict) -> dict:
        """The knobs an image's metadata records: the ones that apply to this generator (all by default)."""
        return knobs

    def applied_settings(self, generator) -> tuple[str, ...]:
        """The sampling settings an image's metadata records: the ones this strategy applies."""
        left = () if self.fixed_sampling else self.cannot_apply(generator)
        return tuple(k for k in SAMPLING_SETTINGS if k not in left)

    def refusal(self, pipe, conflicts: dict[str, tuple]) -> str:
        """The message for sampling settings this strategy cannot apply."""
        asked = ", ".join(f"{k}={v[0]!r}" for k, v in conflicts.items())
        if self.fixed_sampling:
            used = ", ".join(f"{k}={v[1]!r}" for k, v in conflicts.items())
            return (
                f"decoding={self.name!r} samples the teacher's default sampling it was distilled with "
                f"({used}); {asked} cannot apply (use decoding='dd1_hybrid' or 'ar' to change it)"
            )
        reasons = self.cannot_apply(pipe.generator)
        why = "; ".join(sorted({reasons[k] for k in conflicts}))
        neutral = ", ".join(f"{k}={v[1]!r}" for k, v in conflicts.items())
        return (
            f"decoding={self.name!r} on preset {pipe.preset.name!r} cannot apply {asked} ({why}); "
            f"leave it None or {neutral}"
        )

    def head_steps(self, pipe, asked) -> int | None:
        """Steps of a vector-token head per token (None for the categorical head): ``asked`` or the preset's
        default for diffusion/flow heads, the bridge head's d dimensions; refused where it means nothing."""
        head = head_kind(pipe.generator)
        if asked is not None and not self.uses_head_steps:
            raise ValueError(
                f"num_inference_steps={asked!r} does not apply to {self.name} (it has no head "
                "sampling steps of its own); leave it None"
            )
        if head in VECTOR_HEADS:
            return pipe.preset.defaults.get("num_inference_steps", 25) if asked is None else asked
        if asked is not None:
            raise ValueError(
                f"num_inference_steps={asked!r} applies to diffusion/flow heads; preset "
                f"{pipe.preset.name!r} has a {head} head: leave it None"
            )
        return pipe.generator.config.token_dim if head == "bridge" else None

    def run(self, pipe, request: DecodeRequest) -> DecodeResult:
        raise NotImplementedError
