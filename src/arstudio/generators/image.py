"""The discrete image generator: condition prefix + token embeddings -> backbone -> categorical head.

The condition is a class id (one prefix token) or text-encoder states (``text_len`` prefix tokens); either
way it sits in ``cls_embedding``, as in LlamaGen's c2i and t2i models.

It only computes: ``forward`` for teacher-forced training and ``prefill`` / ``step`` for decoding.
Sampling loops live in ``arstudio.decoding``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from arstudio.generators.backbone import Backbone, BackboneConfig
from arstudio.generators.conditioning import ClassConditioning, TextConditioning
from arstudio.generators.heads import CategoricalHead
from arstudio.io import PretrainedMixin


@dataclass(frozen=True)
class GeneratorConfig:
    vocab_size: int = 512
    num_classes: int = 24
    class_dropout_prob: float = 0.1  # label / caption dropout to the null condition (teaches CFG)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    initializer_range: float = 0.02
    condition: str = "class"  # "class" (num_classes) or "text" (text_dim states, backbone.prefix_len long)
    text_dim: int = 0
    text_positions: bool = False  # learned positions for the text prefix (see TextConditioning)

    def __post_init__(self):
        check_condition_config(self)


def check_condition_config(config) -> None:
    """Shared by every generator config: backbone from a dict (config.json), a known condition kind."""
    if isinstance(config.backbone, dict):  # from config.json
        object.__setattr__(config, "backbone", BackboneConfig(**config.backbone))
    if config.condition not in ("class", "text"):
        raise ValueError(f"condition={config.condition!r} is not allowed: use 'class' or 'text'")
    if config.condition == "text" and config.text_dim <= 0:
        raise ValueError("a text-conditioned generator needs text_dim > 0 (the text encoder's width)")
    if config.condition == "class" and config.backbone.prefix_len != 1:
        raise ValueError(
            f"class conditioning is one prefix token, got prefix_len={config.backbone.prefix_len}"
        )


class PrefixARGenerator(PretrainedMixin, nn.Module):
    """What every image generator shares: condition prefix (``cls_embedding``) + ``backbone``.

    Subclasses give ``tok_embeddings`` (how a token enters the backbone: ``embed``) and add ``head`` (what
    the hidden state predicts). Hidden state i is the one that predicts token i.
    """

    def _build_trunk(self, config, make_tok_embeddings) -> None:
        """Condition prefix, token input, backbone, created in this order (seeded random inits depend on it)."""
        dim = config.backbone.dim
        if config.condition == "class":
            self.cls_embedding = ClassConditioning(config.num_classes, dim, config.class_dropout_prob)
        else:
            self.cls_embedding = TextConditioning(
                config.text_dim,
                config.backbone.prefix_len,
                dim,
                config.class_dropout_prob,
                config.text_positions,
            )
        self.tok_embeddings = make_tok_embeddings()
        self.backbone = Backbone(config.backbone)

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

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def hidden(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokens (B, N, ...) + condition -> hidden (B, N, dim), row i predicting token i."""
        x = torch.cat([self.cls_embedding(cond), self.embed(tokens[:, :-1])], dim=1)
        return self.backbone(x)[:, self.prefix_len - 1 :]  # (B, P + N - 1, dim) -> (B, N, dim)

    def setup_cache(self, batch_size: int, device=None, dtype=None, extra: int = 0) -> None:
        self.backbone.setup_cache(batch_size, device, dtype, extra)

    def prefix_hidden(self, cond: torch.Tensor) -> torch.Tensor:
        """Write the condition prefix into the cache; returns its hidden states (B, P, dim), the last of
        which predicts the first token."""
        prefix = self.cls_embedding(cond)
        positions = torch.arange(prefix.shape[1], device=prefix.device)
        return self.backbone.step(prefix, positions)

    def step_hidden(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, ...) at sequence positions ``input_pos`` ((T,) or per row (B, T)) -> hidden (B, T, dim)
        for the next ones."""
        return self.backbone.step(self.embed(tokens), input_pos)


class ImageGenerator(PrefixARGenerator):
    """AR model over a grid of discrete tokens, conditioned by a class or text prefix (LlamaGen layout)."""

    config_class = GeneratorConfig
    token_kind = "discrete"

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self._build_trunk(config, lambda: nn.Embedding(config.vocab_size, config.backbone.dim))
        self.head = CategoricalHead(config.backbone.dim, config.vocab_size)
        self.apply(self._init_weights)
        nn.init.zeros_(self.head.output.weight)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.is_floating_point():
            raise ValueError(
                f"a discrete generator takes integer token ids, got {tokens.dtype} (continuous latents go to "
                "a ContinuousImageGenerator)"
            )
        vocab = self.config.vocab_size
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
            raise ValueError(
                f"token ids span [{int(tokens.min())}, {int(tokens.max())}]; allowed 0..{vocab - 1}"
            )

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embeddings(tokens)

    def forward(self, tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokens (B, N) raster order + condition (labels (B,) or text states (B, L, D))
        -> logits (B, N, vocab), row i predicting tokens[:, i]."""
        self.check_tokens(tokens)
        return self.head(self.hidden(tokens, cond))

    def prefill(self, cond: torch.Tensor, return_hidden: bool = False):
        """Write the condition prefix into the cache; returns logits (B, vocab) for the first token (and
        the prefix's hidden states (B, P, dim) if ``return_hidden``)."""
        hidden = self.prefix_hidden(cond)
        logits = self.head(hidden[:, -1:])[:, -1]
        return (logits, hidden) if return_hidden else logits

    def step(self, tokens: torch.Tensor, input_pos: torch.Tensor, return_hidden: bool = False):
        """tokens (B, T) placed at sequence positions ``input_pos`` ((T,) or per row (B, T)) -> logits
        (B, T, vocab) (and hidden (B, T, dim) if ``return_hidden``).

        Logits at position p predict the token at p + 1, as in training.
        """
        hidden = self.step_hidden(tokens, input_pos)
        logits = self.head(hidden)
        return (logits, hidden) if return_hidden else logits
