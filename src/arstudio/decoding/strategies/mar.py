"""MAR's own sampler (masked autoregression in a random order): the strategy of ``MARGenerator`` presets.

``decoding="ar"`` on a MAR preset runs this sampler at its default knobs (MAR is autoregressive, in a random
order); ``decoding="mar"`` exposes them.
"""

from __future__ import annotations

from arstudio.decoding.mar import sample_mar
from arstudio.decoding.strategies.base import DecodeRequest, DecodingParam, Strategy
from arstudio.decoding.types import DecodeResult
from arstudio.generators.mar import MARGenerator

NUM_ITER = DecodingParam(
    "num_iter", 64, 1, 1024, True, "MAR iterations (masked-order AR steps); MAR's best FID uses 256"
)
CFG_RAMP = DecodingParam(
    "cfg_ramp",
    1.0,
    0.0,
    1.0,
    False,
    "guidance schedule over the iterations: 1 grows it with the tokens decided (MAR's 'linear'), 0 is constant",
)


def is_mar(generator) -> bool:
    return isinstance(generator, MARGenerator)


class MaskedAutoregressive(Strategy):
    name = "mar"
    knobs = (NUM_ITER, CFG_RAMP)

    def supports(self, generator, tokenizer) -> str | None:
        return None if is_mar(generator) else "it is MAR's sampler: a MAR preset's (mar-base, mar-large, ...)"

    def cannot_apply(self, generator) -> dict[str, str]:
        why = "MAR's head denoises vectors: there are no logits to filter"
        interval = (
            "MAR guides every iteration, on the schedule cfg_ramp sets (cfg_interval is for raster order)"
        )
        return {"top_k": why, "top_p": why, "cfg_interval": interval}

    def default_knobs(self) -> dict:
        return {p.name: p.default for p in self.knobs}

    def run(self, pipe, request: DecodeRequest) -> DecodeResult:
        r = request
        return sample_mar(
            pipe.generator,
            r.cond,
            r.generators,
            r.params,
            num_iter=r.knobs["num_iter"],
            num_inference_steps=r.head_steps,
            cfg_ramp=r.knobs["cfg_ramp"],
            callback=r.callback,
        )


STRATEGY = MaskedAutoregressive()
