"""Decoding strategies. Each takes a model that only computes (prefill/step) and explicit generators.

``strategies.STRATEGIES`` is the one registry of strategies (name, knobs, the sampling they apply, when
they can run, how they run); ``DECODING_PARAMS`` is its table of knobs, kept for the studio and the CLI.
"""

from __future__ import annotations

from arstudio.decoding.strategies import STRATEGIES, DecodingParam, Strategy

__all__ = ["DECODING_PARAMS", "STRATEGIES", "DecodingParam", "Strategy"]

# strategy name -> its knobs (name, default, range), derived from the registry
DECODING_PARAMS: dict[str, tuple[DecodingParam, ...]] = {name: s.knobs for name, s in STRATEGIES.items()}
