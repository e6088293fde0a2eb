"""Exact speculative decoding: a drafter proposes ``draft_tokens`` tokens (``draft_width`` candidates at each
depth: a static tree), the target verifies them in one forward."""

from __future__ import annotations

from arstudio.decoding.knobs import DRAFT_TOKENS, DRAFT_WIDTH
from arstudio.decoding.speculative import SpeculativeParams, sample_speculative
from arstudio.decoding.strategies.base import DecodeRequest, Strategy, control_reason
from arstudio.decoding.types import DecodeResult


class Speculative(Strategy):
    name = "speculative"
    knobs = (DRAFT_TOKENS, DRAFT_WIDTH)
    needs = "drafter"

    def supports(self, generator, tokenizer) -> str | None:
        if generator.token_kind != "discrete":
            return "its generator makes vector tokens (decoding='continuous_speculative' drafts those)"
        return control_reason(generator)

    def neighbours(self, pipe, knobs: dict):
        """The relaxed target's neighbour table; exact decoding has none."""
        return None

    def run(self, pipe, request: DecodeRequest) -> DecodeResult:
        r, knobs = request, request.knobs
        spec = SpeculativeParams(
            knobs["draft_tokens"],
            knobs.get("lantern_delta", 0.0),
            knobs.get("lantern_lambda", 1.0),
            draft_width=knobs["draft_width"],
        )
        return sample_speculative(
            pipe.generator,
            pipe.drafter,
            r.cond,
            r.generators,
            r.params,
            spec=spec,
            neighbours=self.neighbours(pipe, knobs),
            negative_cond=r.negative,
            callback=r.callback,
        )


STRATEGY = Speculative()
