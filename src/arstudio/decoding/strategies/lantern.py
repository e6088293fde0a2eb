"""LANTERN: speculative decoding that also accepts a draft's latent neighbours, within a TV budget."""

from __future__ import annotations

import torch

from arstudio.decoding.knobs import DRAFT_TOKENS, DRAFT_WIDTH, LANTERN_DELTA, LANTERN_K, LANTERN_LAMBDA
from arstudio.decoding.lantern import latent_neighbours
from arstudio.decoding.strategies.speculative import Speculative


class Lantern(Speculative):
    name = "lantern"
    knobs = (DRAFT_TOKENS, DRAFT_WIDTH, LANTERN_K, LANTERN_DELTA, LANTERN_LAMBDA)

    def supports(self, generator, tokenizer) -> str | None:
        why = super().supports(generator, tokenizer)
        if why is None and not hasattr(tokenizer, "codebook_vectors"):
            why = "its tokenizer has no codebook (LANTERN's latent neighbourhoods live there)"
        return why

    def neighbours(self, pipe, knobs: dict) -> torch.Tensor:
        """The k-neighbour table of the tokenizer's codebook, kept in the pipeline's cache (``pipe.to``
        empties it); ``latent_neighbours`` checks k against the codebook size."""
        key = ("lantern_neighbours", knobs["lantern_k"])
        if key not in pipe.cache:
            codes = pipe.tokenizer.codebook_vectors()
            pipe.cache[key] = latent_neighbours(codes, knobs["lantern_k"]).to(pipe.device)
        return pipe.cache[key]


STRATEGY = Lantern()
