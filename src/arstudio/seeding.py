"""Seeded construction without touching the caller's random state (random presets, tests, training)."""

from __future__ import annotations

import torch


def seeded(build, seed: int):
    """``build()`` under ``torch.manual_seed(seed)`` without touching the caller's global RNG state.

    Weight init draws from the global generator; forking keeps a seeded init from leaking into, or being
    changed by, whatever else the process does.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()
