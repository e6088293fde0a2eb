"""Conditions become a prefix of embeddings in front of the image tokens.

Every condition module maps its input to (B, prefix_len, dim) and owns a *null* condition, used for
classifier-free guidance at sampling time and for condition dropout in training. Class labels are the
first kind; text and control prefixes plug in the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from arstudio.checks import value_span
from arstudio.generators import draws


class ClassConditioning(nn.Module):
    """Class id -> one prefix token. Row ``num_classes`` of the table is the null class (LlamaGen layout)."""

    prefix_len = 1

    def __init__(self, num_classes: int, dim: int, dropout_prob: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def check_labels(self, labels: torch.Tensor) -> None:
        if labels.dtype not in (torch.int64, torch.int32) or labels.ndim != 1:
            raise ValueError(
                f"class labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}"
            )
        span = value_span(labels)  # one host read; none for a pipeline's own (host-checked) labels
        if span is not None and (span[0] < 0 or span[1] > self.num_classes):
            bad = span[0] if span[0] < 0 else span[1]
            raise ValueError(
                f"class label {bad} is out of range: allowed are 0..{self.num_classes - 1} "
                f"(and {self.num_classes}, the null class)"
            )

    def drop(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training: replace labels by the null class with probability ``dropout_prob`` (teaches CFG)."""
        keep = draws.rand(labels.shape, generator, labels.device) >= self.dropout_prob
        return torch.where(keep, labels, torch.full_like(labels, self.null_label))

    def null(self, batch_size: int, device=None) -> torch.Tensor:
        return torch.full((batch_size,), self.null_label, dtype=torch.long, device=device)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B,) -> prefix (B, 1, dim)."""
        self.check_labels(labels)
        return self.embedding_table(labels)[:, None, :]


class TextConditioning(nn.Module):
    """Text-encoder states (B, L, text_dim) -> prefix (B, L, dim) through a 2-layer MLP (LlamaGen's
    ``CaptionEmbedder``). The null condition is a learned (L, text_dim) ``uncond_embedding``: CFG's
    unconditional stream, and what captions are replaced by under caption dropout in training.
    """

    def __init__(
        self, text_dim: int, text_len: int, dim: int, dropout_prob: float = 0.1, positions: bool = False
    ):
        super().__init__()
        self.text_len = text_len
        self.prefix_len = text_len
        self.dropout_prob = dropout_prob
        self.cap_proj = nn.Sequential(
            nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.uncond_embedding = nn.Parameter(torch.randn(text_len, text_dim) / text_dim**0.5)
        # Prefix tokens get no RoPE, so without positions the backbone reads the caption as a bag of word
        # states and swaps attributes between two objects ("a large red circle ... and a small blue square"
        # came out as a small red square and a large blue circle). Zero-init: a model trained without it
        # starts out unchanged when fine-tuned with it.
        self.position_embedding = nn.Parameter(torch.zeros(text_len, dim)) if positions else None

    def check(self, states: torch.Tensor) -> None:
        expected = (self.text_len, self.uncond_embedding.shape[1])
        if states.ndim != 3 or tuple(states.shape[1:]) != expected:
            raise ValueError(
                f"text states must be (B, {expected[0]}, {expected[1]}), got {tuple(states.shape)}"
            )

    def drop(self, states: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        drop = draws.rand(states.shape[0], generator, states.device) < self.dropout_prob
        null = self.uncond_embedding.detach().to(states.dtype)[None].expand_as(states)
        return torch.where(drop[:, None, None], null, states)

    def null(self, batch_size: int, device=None) -> torch.Tensor:
        return self.uncond_embedding.detach()[None].expand(batch_size, -1, -1).to(device)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        self.check(states)
        prefix = self.cap_proj(states.to(self.uncond_embedding.dtype))
        return prefix if self.position_embedding is None else prefix + self.position_embedding
