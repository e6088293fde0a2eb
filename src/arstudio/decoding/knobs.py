"""Strategy knobs: a named number with its allowed range, and the knobs a sampler also checks itself.

Below the samplers and the strategies both: ``SpeculativeParams`` validates against the same knobs the
pipeline and the studio show, without importing the strategy registry (which imports the samplers).
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


DRAFT_TOKENS = DecodingParam("draft_tokens", 4, 1, 16, True, "tokens the drafter proposes per target forward")
DRAFT_WIDTH = DecodingParam(
    "draft_width",
    1,
    1,
    8,
    True,
    "candidates drafted at each depth of the top-1 path (a static tree); 1: a chain",
)
LANTERN_K = DecodingParam(
    "lantern_k", 8, 1, 4096, True, "latent neighbours per token (capped by the codebook size)"
)
LANTERN_DELTA = DecodingParam(
    "lantern_delta",
    0.2,
    0.0,
    1.0,
    False,
    "total-variation budget per token; 0 is exact, 1 leaves only lantern_k as the limit (fastest)",
)
LANTERN_LAMBDA = DecodingParam(
    "lantern_lambda", 1.0, 1.0, 1e6, False, "LANTERN++ relaxation factor; 1 turns it off"
)
