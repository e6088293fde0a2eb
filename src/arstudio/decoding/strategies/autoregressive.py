"""Plain autoregressive decoding: one token per forward; every preset has it, control presets only it. A MAR
preset's is MAR's own sampler (autoregression in a random order) at its default knobs (``strategies/mar.py``)."""

from __future__ import annotations

import dataclasses

from arstudio.decoding.autoregressive import sample_autoregressive
from arstudio.decoding.continuous import sample_continuous
from arstudio.decoding.strategies import mar
from arstudio.decoding.strategies.base import DecodeRequest, Strategy
from arstudio.decoding.types import DecodeResult


class Autoregressive(Strategy):
    name = "ar"

    def cannot_apply(self, generator) -> dict[str, str]:
        return (
            mar.STRATEGY.cannot_apply(generator) if mar.is_mar(generator) else super().cannot_apply(generator)
        )

    def run(self, pipe, request: DecodeRequest) -> DecodeResult:
        r = request
        if mar.is_mar(pipe.generator):
            return mar.STRATEGY.run(pipe, dataclasses.replace(r, knobs=mar.STRATEGY.default_knobs()))
        if r.head_steps is not None:  # vector tokens (and the bridge's level ids): a head loop per token
            return sample_continuous(
                pipe.generator,
                r.cond,
                r.generators,
                r.params,
                num_inference_steps=r.head_steps,
                callback=r.callback,
                negative_cond=r.negative,
                control=r.control,
            )
        return sample_autoregressive(
            pipe.generator,
            r.cond,
            r.generators,
            r.params,
            callback=r.callback,
            negative_cond=r.negative,
            control=r.control,
        )


STRATEGY = Autoregressive()
