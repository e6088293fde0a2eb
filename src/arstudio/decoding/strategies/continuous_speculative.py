"""Continuous speculative decoding (CSpD) for diffusion heads: vector drafts from a small draft model."""

from __future__ import annotations

from arstudio.decoding.continuous_speculative import (
    ContinuousSpeculativeParams,
    sample_continuous_speculative,
)
from arstudio.decoding.mar_cspd import MARSpeculation, sample_mar_speculative
from arstudio.decoding.strategies import mar
from arstudio.decoding.strategies.base import (
    DecodeRequest,
    DecodingParam,
    Strategy,
    control_reason,
    head_kind,
)
from arstudio.decoding.strategies.mar import NUM_ITER, is_mar
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
            "vector tokens a draft model with its own trunk proposes per target forward (a draft head: 1; "
            "a MAR draft: the MAR iterations it drafts per target pass, CSpD's num_draft 8)",
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
            "fraction of the tokens (MAR: iterations) the target makes alone before drafting (CSpD's token "
            "pre-filling)",
        ),
        NUM_ITER,
    )
    needs = "drafter"

    def cannot_apply(self, generator) -> dict[str, str]:
        return mar.STRATEGY.cannot_apply(generator) if is_mar(generator) else super().cannot_apply(generator)

    def applied_knobs(self, generator, knobs: dict) -> dict:
        """num_iter is MAR's: other presets' metadata leaves it out."""
        return knobs if is_mar(generator) else {k: v for k, v in knobs.items() if k != NUM_ITER.name}

    def supports(self, generator, tokenizer) -> str | None:
        if head_kind(generator) != "diffusion":
            return f"CSpD needs a diffusion head; this generator has a {head_kind(generator)} head"
        return control_reason(generator)

    def run(self, pipe, request: DecodeRequest) -> DecodeResult:
        r, knobs = request, request.knobs
        if is_mar(pipe.generator):
            return self.run_mar(pipe, request)
        if knobs["num_iter"] != NUM_ITER.default:
            raise ValueError(
                f"num_iter={knobs['num_iter']!r} applies to MAR presets; preset {pipe.preset.name!r} decodes in "
                "raster order: leave it None"
            )
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

    def run_mar(self, pipe, request: DecodeRequest) -> DecodeResult:
        """MAR-B drafting for MAR-L (CSpD's pair): ``decoding/mar_cspd.py``."""
        r, knobs = request, request.knobs
        spec = MARSpeculation(
            draft_iterations=knobs["draft_tokens"],
            inner_temperature=knobs["cspd_inner_temperature"],
            prefill=knobs["cspd_prefill"],
        )
        return sample_mar_speculative(
            pipe.generator,
            pipe.drafter,
            r.cond,
            r.generators,
            r.params,
            num_iter=knobs["num_iter"],
            num_inference_steps=r.head_steps,
            spec=spec,
            callback=r.callback,
        )


STRATEGY = ContinuousSpeculative()
