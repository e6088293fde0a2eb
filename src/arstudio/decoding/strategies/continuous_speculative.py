"""Continuous speculative decoding (CSpD) for diffusion heads: vector drafts from a small draft model."""

from __future__ import annotations

from arstudio.decoding.continuous_speculative import (
    ContinuousSpeculativeParams,
    sample_continuous_speculative,
)
from arstudio.decoding.strategies.base import (
    DecodeRequest,
    DecodingParam,
    Strategy,
    control_reason,
    head_kind,
)
from arstudio.decoding.strategies.mar import is_mar
from arstudio.decoding.types import DecodeResult


class ContinuousSpeculative(Strategy):
    name = "continuous_speculative"
    knobs = (
        DecodingParam(
            "draft_tokens",
            1,
            1,
            16,
            True,
            "vector tokens a draft model with its own trunk proposes per target forward (a draft head: 1)",
        ),
        DecodingParam(
            "cspd_inner_temperature",
            1.0,
            1.0,
            1000.0,
            False,
            "relaxed CSpD: tempers the trajectory density ratio; 1 is exact",
        ),
        DecodingParam(
            "cspd_prefill",
            0.15,
            0.0,
            1.0,
            False,
            "fraction of the tokens the target makes alone before drafting (CSpD's token pre-filling)",
        ),
    )
    needs = "drafter"

    def supports(self, generator, tokenizer) -> str | None:
        if is_mar(generator):
            return "MAR presets draft with a smaller MAR (not built yet)"
        if head_kind(generator) != "diffusion":
            return f"CSpD needs a diffusion head; this generator has a {head_kind(generator)} head"
        return control_reason(generator)

    def run(self, pipe, request: DecodeRequest) -> DecodeResult:
        r, knobs = request, request.knobs
        spec = ContinuousSpeculativeParams(
            knobs["draft_tokens"],
            r.head_steps,
            knobs["cspd_inner_temperature"],
            prefill=knobs["cspd_prefill"],
        )
        return sample_continuous_speculative(
            pipe.generator,
            pipe.drafter,
            r.cond,
            r.generators,
            r.params,
            spec=spec,
            negative_cond=r.negative,
            callback=r.callback,
        )


STRATEGY = ContinuousSpeculative()
