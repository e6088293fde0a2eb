"""Heads turn backbone hidden states into a distribution over the next token.

The discrete head is a linear layer to codebook logits; continuous heads (per-token diffusion/flow MLPs,
TokenBridge's per-dimension head) plug in next to it with the same input.
"""

from __future__ import annotations

import torch
from torch import nn


class CategoricalHead(nn.Module):
    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.output = nn.Linear(dim, vocab_size, bias=False)
        nn.init.zeros_(self.output.weight)  # LlamaGen: start from uniform predictions

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, dim) -> logits (B, T, vocab) in fp32 (sampling needs the precision)."""
        return self.output(hidden).float()
