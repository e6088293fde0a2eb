"""Decoding strategies. Each takes a model that only computes (prefill/step) and explicit generators.

``DECODING_PARAMS`` is the one list of strategies and their knobs: the pipeline validates against it and
the studio builds its controls from it, so a new strategy shows up everywhere once it is listed here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodingParam:
    """One knob of a decoding strategy, with its allowed range (inclusive)."""

    name: str
    default: float
    low: float
    high: float
    integer: bool
    help: str

    def check(self, value) -> float:
        """Return ``value`` if it is allowed, else raise naming the value and the range."""
        kind = "an integer" if self.integer else "a number"
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value != value  # nan: int(nan) would raise a ValueError that does not name the knob
            or (self.integer and (value in (float("inf"), float("-inf")) or value != int(value)))
        ):
            raise ValueError(f"{self.name}={value!r} must be {kind} in [{self.low}, {self.high}]")
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.name}={value!r} is out of range: allowed are [{self.low}, {self.high}]")
        return int(value) if self.integer else float(value)


_DRAFT_TOKENS = DecodingParam(
    "draft_tokens", 4, 1, 16, True, "tokens the drafter proposes per target forward"
)
_DD_STEPS = DecodingParam(
    "num_inference_steps", 1, 1, 2, True, "distilled-decoding forwards: 1, or 2 (keep a prefix, re-run)"
)
DECODING_PARAMS: dict[str, tuple[DecodingParam, ...]] = {
    "ar": (),
    "speculative": (_DRAFT_TOKENS,),
    "lantern": (
        _DRAFT_TOKENS,
        DecodingParam(
            "lantern_k", 8, 1, 4096, True, "latent neighbours per token (capped by the codebook size)"
        ),
        DecodingParam("lantern_delta", 0.2, 0.0, 1.0, False, "total-variation budget per token; 0 is exact"),
        DecodingParam("lantern_lambda", 1.0, 1.0, 1e6, False, "LANTERN++ relaxation factor; 1 turns it off"),
    ),
    "continuous_speculative": (
        DecodingParam(
            "draft_tokens", 3, 1, 16, True, "vector tokens the draft model proposes per target forward"
        ),
        DecodingParam(
            "cspd_inner_temperature",
            1.0,
            1.0,
            1000.0,
            False,
            "relaxed CSpD: tempers the trajectory density ratio; 1 is exact",
        ),
    ),
    "dd1": (_DD_STEPS,),
    "dd1_hybrid": (
        DecodingParam(
            "dd_hybrid_start",
            4,
            0,
            4095,
            True,
            "tokens kept from the first DD step before the teacher continues (below the model's switch point)",
        ),
    ),
    "dd2": (_DD_STEPS,),
}
DISTILLED_STRATEGIES = ("dd1", "dd1_hybrid", "dd2")
# One-shot distilled decoding samples the teacher at the settings it was distilled with (the preset's
# default sampling): guidance, temperature, top-k and top-p cannot change it. The hybrid runs the teacher
# itself for part of the image, so it takes them.
FIXED_SAMPLING_STRATEGIES = ("dd1", "dd2")
