"""Seeded training batches of (tokens, condition) for generator-side training (generator, drafter, control).

Its own module so that ``training/control.py`` (which extends it with control maps) and
``training/generator.py`` (which uses both) do not import each other.
"""

from __future__ import annotations

import torch


class ConditionedBatches:
    """Seeded random batches of (tokens, condition) from a tokenized table, conditions dropped to the null
    condition at the model's rate (what teaches CFG). ``skip(n)`` replays n batches' draws, so a resumed run
    sees the batches an uninterrupted one would have."""

    def __init__(self, tokens: torch.Tensor, conds: torch.Tensor, batch_size: int, seed: int, conditioning):
        self.tokens, self.conds, self.batch_size = tokens, conds, batch_size
        self.conditioning = conditioning  # the model's cls_embedding: its ``drop`` does the dropout
        self.generator = torch.Generator().manual_seed(seed + 1)

    def skip(self, steps: int) -> None:
        for _ in range(steps):
            self.next()

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row indices (B,) of the next batch and their conditions after dropout."""
        index = torch.randint(0, self.tokens.shape[0], (self.batch_size,), generator=self.generator)
        cond = self.conds[index]
        cond = cond.float() if cond.is_floating_point() else cond  # text states are stored in fp16
        return index, self.conditioning.drop(cond, generator=self.generator)

    def next(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        index, cond = self.draw()
        return self.tokens[index].to(device), cond.to(device)
