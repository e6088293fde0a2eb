"""Types every sampler shares: what a decoding loop returns and the per-step callback it calls.

A module of its own so that samplers, strategies and pipelines import them without importing a sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# callback(step_index, num_steps, tokens_so_far (B, step_index + 1)) -> None | False (False stops early)
StepCallback = Callable[[int, int, torch.Tensor], "bool | None"]


@dataclass
class DecodeResult:
    tokens: torch.Tensor  # (B, N) int64, raster order
    stats: dict = field(default_factory=dict)
    vectors: torch.Tensor | None = None  # (B, N, d) what the decoder should read instead of the ids' codes
