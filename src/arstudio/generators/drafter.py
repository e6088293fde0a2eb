"""EAGLE-style drafter for speculative decoding (as LANTERN trains it for LlamaGen).

One backbone block reads, at position j, the target's hidden state f_j next to the embedding of the token
the target consumed at j + 1, and predicts f_{j+1}. The target's own token embedding and head turn that
prediction into draft logits, so the drafter owns only ``fc`` (2 dim -> dim) and one block: about a
sixth of a 6-layer target. Its config carries a fingerprint of the target it was trained for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from arstudio.generators.backbone import Backbone, BackboneConfig, RMSNorm
from arstudio.generators.pairing import check_pairing, weights_fingerprint
from arstudio.io import PretrainedMixin


def target_fingerprint(generator) -> str:
    """A short hash of a target's parameter names and shapes and of its embedding and head values
    (``pairing.weights_fingerprint``)."""
    return weights_fingerprint(generator, (generator.tok_embeddings.weight, generator.head.output.weight))


@dataclass(frozen=True)
class DrafterConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    target_fingerprint: str = ""
    # EAGLE-1's layout, as LANTERN's published drafters keep it (``convert/lantern.py``):
    input_norm: bool = True  # False: the first block has no attention pre-norm (EAGLE's layer 0)
    output_norm: bool = True  # False: the prediction goes to the target's head without a final norm
    prefix_embedding: bool = (
        False  # True: prefix positions read one stored vector (LANTERN: token 0's embedding)
    )

    def __post_init__(self):
        if isinstance(self.backbone, dict):  # from config.json
            object.__setattr__(self, "backbone", BackboneConfig(**self.backbone))

    @classmethod
    def for_target(cls, generator, n_layer: int = 1) -> DrafterConfig:
        """Same width, grid and prefix as ``generator`` (so positions line up), ``n_layer`` blocks."""
        return cls(replace(generator.config.backbone, n_layer=n_layer), target_fingerprint(generator))


class Drafter(PretrainedMixin, nn.Module):
    config_class = DrafterConfig

    def __init__(self, config: DrafterConfig):
        super().__init__()
        self.config = config
        dim = config.backbone.dim
        self.fc = nn.Linear(2 * dim, dim)
        self.backbone = Backbone(config.backbone)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        eps = config.backbone.norm_eps
        if not config.input_norm:
            self.backbone.layers[0].attention_norm = PassThroughNorm(dim, eps)
        if not config.output_norm:
            self.backbone.norm = PassThroughNorm(dim, eps)
        if config.prefix_embedding:
            self.prefix_embedding = nn.Parameter(torch.zeros(dim))

    def check_target(self, generator) -> None:
        check_pairing(
            self,
            generator,
            target_fingerprint,
            "this drafter was trained for target {expected}, but the target's fingerprint is {found}; "
            "train one for this target with `arstudio train drafter`",
        )

    def _inputs(
        self, next_embeddings: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        if (
            self.config.prefix_embedding
        ):  # positions (T,) or (B, T): where the stored vector replaces the input
            in_prefix = (positions < self.config.backbone.prefix_len)[..., None]
            next_embeddings = torch.where(
                in_prefix, self.prefix_embedding.to(next_embeddings.dtype), next_embeddings
            )
        return self.fc(torch.cat([next_embeddings, hidden.to(next_embeddings.dtype)], dim=-1))

    def forward(
        self, next_embeddings: torch.Tensor, hidden: torch.Tensor, mask=None, rope=None
    ) -> torch.Tensor:
        """Training: next_embeddings, hidden (B, L, dim), position j holding (e_{j+1}, f_j) -> predicted
        f_{j+1} (B, L, dim). ``mask`` and ``rope`` as in ``Backbone.forward`` (training on the drafter's own
        rollouts lays several draft steps side by side)."""
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        return self.backbone(self._inputs(next_embeddings, hidden, positions), mask=mask, rope=rope)

    def setup_cache(self, batch_size: int, device=None, dtype=None, extra: int = 0) -> None:
        self.backbone.setup_cache(batch_size, device, dtype, extra)

    def reset_cache(self) -> None:
        self.backbone.reset_cache()

    def step(
        self,
        next_embeddings: torch.Tensor,
        hidden: torch.Tensor,
        input_pos: torch.Tensor,
        mask=None,
        rope_pos=None,
        kv_len: int | None = None,
    ) -> torch.Tensor:
        """Cached: (B, T, dim) pairs at positions ``input_pos`` ((T,) or (B, T)) -> predicted hidden (B, T, dim).
        ``mask``/``rope_pos``: a draft tree level's slots; ``kv_len``: see ``Backbone.step``."""
        inputs = self._inputs(next_embeddings, hidden, input_pos)
        return self.backbone.step(inputs, input_pos, mask=mask, rope_pos=rope_pos, kv_len=kv_len)


class PassThroughNorm(RMSNorm):
    """A norm slot left empty (EAGLE's layout): returns its input. It keeps the (unused, all-ones) weight so
    code that reads a backbone's device and dtype from its norm still works."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
