"""The discrete image generator: condition prefix + token embeddings -> backbone -> categorical head.

It only computes: ``forward`` for teacher-forced training and ``prefill`` / ``step`` for decoding.
Sampling loops live in ``arstudio.decoding``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from arstudio.generators.backbone import Backbone, BackboneConfig
from arstudio.generators.conditioning import ClassConditioning
from arstudio.generators.heads import CategoricalHead
from arstudio.io import PretrainedMixin


@dataclass(frozen=True)
class GeneratorConfig:
    vocab_size: int = 512
    num_classes: int = 24
    class_dropout_prob: float = 0.1
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    initializer_range: float = 0.02

    def __post_init__(self):
        if isinstance(self.backbone, dict):  # from config.json
            object.__setattr__(self, "backbone", BackboneConfig(**self.backbone))


class ClassImageGenerator(PretrainedMixin, nn.Module):
    """Class-conditional AR model over a grid of discrete tokens (LlamaGen c2i layout)."""

    config_class = GeneratorConfig

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        dim = config.backbone.dim
        self.cls_embedding = ClassConditioning(config.num_classes, dim, config.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(config.vocab_size, dim)
        self.backbone = Backbone(config.backbone)
        self.head = CategoricalHead(dim, config.vocab_size)
        self.apply(self._init_weights)
        nn.init.zeros_(self.head.output.weight)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def seq_len(self) -> int:
        return self.config.backbone.grid_size**2

    @property
    def prefix_len(self) -> int:
        return self.config.backbone.prefix_len

    def check_tokens(self, tokens: torch.Tensor) -> None:
        vocab = self.config.vocab_size
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
            raise ValueError(
                f"token ids span [{int(tokens.min())}, {int(tokens.max())}]; allowed 0..{vocab - 1}"
            )

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokens (B, N) raster order, labels (B,) -> logits (B, N, vocab) for tokens[:, i]."""
        self.check_tokens(tokens)
        x = torch.cat([self.cls_embedding(labels), self.tok_embeddings(tokens[:, :-1])], dim=1)
        hidden = self.backbone(x)  # (B, P + N - 1, dim)
        return self.head(hidden[:, self.prefix_len - 1 :])

    def setup_cache(self, batch_size: int, device=None, dtype=None) -> None:
        self.backbone.setup_cache(batch_size, device, dtype)

    def prefill(self, labels: torch.Tensor) -> torch.Tensor:
        """Write the condition prefix into the cache; returns logits (B, vocab) for the first token."""
        prefix = self.cls_embedding(labels)
        positions = torch.arange(prefix.shape[1], device=prefix.device)
        return self.head(self.backbone.step(prefix, positions))[:, -1]

    def step(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) placed at sequence positions ``input_pos`` (T,) -> logits (B, T, vocab).

        Logits at position p predict the token at p + 1, as in training.
        """
        return self.head(self.backbone.step(self.tok_embeddings(tokens), input_pos))
