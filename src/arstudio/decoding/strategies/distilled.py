"""One-shot distilled decoding (DD1, DD2): noise -> every token in 1 or 2 forwards of a DD model.

The DD model was distilled from the teacher's sampling at the preset's defaults (guidance, temperature,
top-k/p, every token guided): it cannot sample at other settings, so it refuses them (``fixed_sampling``).
"""

from __future__ import annotations

from arstudio.decoding.distilled import DISTILLED_STEPS, draw_noise, sample_distilled
from arstudio.decoding.strategies.base import DecodeRequest, DecodingParam, Strategy, control_reason
from arstudio.decoding.types import DecodeResult

DD_STEPS = DecodingParam(
    "num_inference_steps",
    1,
    min(DISTILLED_STEPS),
    max(DISTILLED_STEPS),
    True,
    "distilled-decoding forwards: 1, or 2 (keep a prefix, re-run)",
)


def dd_reason(generator, tokenizer) -> str | None:
    """DD maps noise into the tokenizer's codebook space, for a discrete teacher without control."""
    if generator.token_kind != "discrete":
        return "distilled decoding needs a discrete-token generator"
    if not hasattr(tokenizer, "codebook_vectors"):
        return "its tokenizer has no codebook (DD maps noise into the codebook space)"
    return control_reason(generator)


def noise_for(pipe, model, request: DecodeRequest):
    """The given latents, or (B, N, d) noise from each image's generator."""
    if request.latents is not None:
        return request.latents.to(pipe.device)
    return draw_noise(request.generators, model.seq_len, model.config.token_dim, pipe.device)


class Distilled(Strategy):
    knobs = (DD_STEPS,)
    fixed_sampling = True
    takes_latents = True
    uses_head_steps = False

    def __init__(self, method: str):
        self.name = self.needs = method

    def supports(self, generator, tokenizer) -> str | None:
        return dd_reason(generator, tokenizer)

    def run(self, pipe, request: DecodeRequest) -> DecodeResult:
        model = pipe.distilled[self.needs]
        codebook = pipe.tokenizer.codebook_vectors().detach()
        return sample_distilled(
            model,
            request.cond,
            noise_for(pipe, model, request),
            codebook,
            steps=request.knobs["num_inference_steps"],
        )


DD1 = Distilled("dd1")
DD2 = Distilled("dd2")
