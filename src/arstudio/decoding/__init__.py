"""Decoding strategies. Each takes a model that only computes (prefill/step) and explicit generators."""

DECODING_STRATEGIES = ("ar",)
