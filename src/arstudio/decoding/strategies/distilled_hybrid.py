"""DD1's hybrid sampler: one DD step, the teacher continues on the same noise, one DD step finishes.

The teacher samples part of the image, so this strategy takes the call's sampling settings.
"""

from __future__ import annotations

from arstudio.decoding.distilled import sample_distilled_hybrid
from arstudio.decoding.strategies.base import DecodeRequest, DecodingParam, Strategy
from arstudio.decoding.strategies.distilled import dd_reason, noise_for
from arstudio.decoding.types import DecodeResult


class DistilledHybrid(Strategy):
    name = "dd1_hybrid"
    knobs = (
        DecodingParam(
            "dd_hybrid_start",
            4,
            0,
            4095,
            True,
            "tokens kept from the first DD step before the teacher continues (below the model's switch point)",
        ),
    )
    needs = "dd1"
    takes_latents = True
    uses_head_steps = False

    def supports(self, generator, tokenizer) -> str | None:
        return dd_reason(generator, tokenizer)

    def run(self, pipe, request: DecodeRequest) -> DecodeResult:
        r, model = request, pipe.distilled["dd1"]
        codebook = pipe.tokenizer.codebook_vectors().detach()
        return sample_distilled_hybrid(
            model,
            pipe.generator,
            r.cond,
            noise_for(pipe, model, r),
            codebook,
            r.params,
            start=r.knobs["dd_hybrid_start"],
            negative_cond=r.negative,
        )


STRATEGY = DistilledHybrid()
