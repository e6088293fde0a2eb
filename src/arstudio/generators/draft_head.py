"""A small diffusion head distilled from a target's head: the draft of continuous speculative decoding that
reads the target's own trunk features.

The target's backbone state z already is the best possible "draft trunk" (it is exact), so the draft only has to
stand in for the expensive part of a token, the head's 25-odd sequential denoising calls: a shallower AdaLN MLP
on the same z, on the same noise schedule, trained to give the target's reverse-step means
(``training/cspd_draft.py``). Its config carries the fingerprint of the target it was distilled from; a draft
head meets only that target (``check_target``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from arstudio.generators.heads import DiffusionHead
from arstudio.generators.pairing import check_pairing, weights_fingerprint
from arstudio.io import PretrainedMixin


def continuous_target_fingerprint(generator) -> str:
    """A short hash of a continuous generator's parameter names and shapes and of its token embedding and head
    output values (``pairing.weights_fingerprint``)."""
    return weights_fingerprint(generator, (generator.tok_embeddings.weight, generator.head.net.output.weight))


@dataclass(frozen=True)
class DraftHeadConfig:
    token_dim: int = 8
    cond_dim: int = 192  # the target backbone's width: the draft reads the target's z
    width: int = 128
    depth: int = 1
    num_timesteps: int = 1000  # the target head's training schedule (the trajectories must line up)
    target_fingerprint: str = ""

    @classmethod
    def for_target(cls, generator, width: int | None = None, depth: int = 1) -> DraftHeadConfig:
        c = generator.config
        return cls(
            c.token_dim,
            c.backbone.dim,
            width or c.head_width,
            depth,
            c.num_timesteps,
            continuous_target_fingerprint(generator),
        )


class DraftHead(PretrainedMixin, nn.Module):
    """``head``: a ``DiffusionHead`` with the target's token size, condition width and schedule."""

    config_class = DraftHeadConfig
    kind = "draft_head"

    def __init__(self, config: DraftHeadConfig):
        super().__init__()
        self.config = config
        self.head = DiffusionHead(
            config.token_dim, config.cond_dim, config.width, config.depth, config.num_timesteps, batch_mul=1
        )

    @classmethod
    def from_target(cls, generator, width: int | None = None, depth: int = 1) -> DraftHead:
        """A draft whose time/condition embeddings, input layer, first ``depth`` blocks and output layer start as
        the target head's (same width), a warm start for distillation."""
        draft = cls(DraftHeadConfig.for_target(generator, width, depth))
        source, net = generator.head.net, draft.head.net
        if net.input_proj.weight.shape == source.input_proj.weight.shape:
            own = net.state_dict()
            net.load_state_dict({k: v for k, v in source.state_dict().items() if k in own})
        return draft

    def check_target(self, generator) -> None:
        """One-line error when this draft head was distilled from another target."""
        check_pairing(
            self,
            generator,
            continuous_target_fingerprint,
            "this CSpD draft head was distilled from target {expected}, but the target's fingerprint is "
            "{found}; distill one for this target with `python -m arstudio.training.cspd_draft`",
        )
