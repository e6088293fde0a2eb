"""Where speculative drafts come from. The sampler (``speculative.py``) only asks a drafting source for
next-token logits; two sources exist:

* ``HiddenStateDrafting``: an EAGLE-style ``Drafter`` reading the target's hidden states and sharing its
  embedding and head (LANTERN's drafter). Cheap and accurate, but tied to one target (fingerprinted).
* ``ModelDrafting``: an independent small ``ImageGenerator`` with its own prefix, cache and head (classic
  speculative decoding). It only has to share the token vocabulary, grid and kind of condition.

Positions follow the sampler's convention: ``position`` is the target position holding the last decided
token (the one whose hidden state predicts the draft), so a draft for token i is made "at" P + i - 1.

``propose`` drafts one level of a draft tree (``tree.py``) at once: ``tokens`` (R, m) side by side, each
continuing from its parent in the level before (``parents``); a ``TreeSlots`` then says which cache slots
they take and which earlier slots each one sees. A chain's level is one token and needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arstudio.decoding.autoregressive import with_unconditional
from arstudio.decoding.rounds import take_at
from arstudio.decoding.tree import TreeMask


@dataclass(frozen=True)
class TreeSlots:
    """Where a tree level's drafts go, in the sampler's convention (a drafting source shifts it to its own)."""

    slots: torch.Tensor  # (R, m) cache slot of each draft: base + node - 1
    visible: TreeMask  # over (m, N - 1): the draft nodes each one sees (itself included), slot base + j - 1
    base: torch.Tensor  # (R,) the first draft slot of the round; slots before it hold the decided prefix

    def mask(self, backbone, offset: int, kv_len: int | None) -> torch.Tensor:
        """Over the cache's slots, or its first ``kv_len`` (eager: the slots the round can reach)."""
        cache = backbone.caches[0].k
        width = None if kv_len is None else min(kv_len, cache.shape[2])
        return self.visible(self.base + offset, cache.shape[2], cache.dtype, width)


class HiddenStateDrafting:
    def __init__(self, target, drafter):
        drafter.check_target(target)
        self.target, self.drafter = target, drafter
        self.hidden = None  # (R, m, dim): the drafter's latest predicted target hidden states

    def setup(self, rows: int, device, extra: int) -> None:
        self.drafter.setup_cache(rows, device=device, extra=extra)

    def reset(self) -> None:
        self.drafter.reset_cache()

    def start(self, cond, negative_cond, uses_cfg, prefix_hidden, first_tokens) -> torch.Tensor:
        """After the target's prefill: read (prefix embedding j+1, f_j) for the prefix and token 0.
        ``first_tokens`` (R, 1); returns draft logits (R, V) for token 1."""
        cond_rows = self.target.cls_embedding(_rows(self.target, cond, negative_cond, uses_cfg))
        next_embeddings = torch.cat([cond_rows[:, 1:], self.target.tok_embeddings(first_tokens)], dim=1)
        positions = torch.arange(prefix_hidden.shape[1], device=prefix_hidden.device)
        self.hidden = self.drafter.step(next_embeddings, prefix_hidden, positions)[:, -1:]
        return self.target.head(self.hidden[:, 0])

    def propose(self, tokens, position, parents, tree: TreeSlots | None = None, kv_len=None) -> torch.Tensor:
        """The drafts just made (R, m) at ``position`` (R, m), each after the draft ``parents`` (m,) of the
        previous call -> logits (R, m, V) for the tokens after them. ``kv_len``: the sampler's (host) bound
        on the slots this round reaches, None for a compiled step (static shapes)."""
        embedded, hidden = self.target.tok_embeddings(tokens), self.hidden[:, parents]
        if tree is None:
            self.hidden = self.drafter.step(embedded, hidden, position, kv_len=kv_len)
        else:
            mask = tree.mask(self.drafter.backbone, 0, kv_len)
            self.hidden = self.drafter.step(embedded, hidden, tree.slots, mask=mask, rope_pos=position)
        return self.target.head(self.hidden)

    def catch_up(self, tokens, target_hidden, positions, accepted, kv_len=None) -> torch.Tensor:
        """Re-read the verified chunk with the target's true hidden states: tokens (R, T) (the token after
        each position), target_hidden (R, T, dim), positions (R, T); keep the prediction at index
        ``accepted`` (R,), the row's new end -> logits (R, V)."""
        out = self.drafter.step(self.target.tok_embeddings(tokens), target_hidden, positions, kv_len=kv_len)
        self.hidden = take_at(out, accepted)[:, None]
        return self.target.head(self.hidden[:, 0])


class ModelDrafting:
    def __init__(self, target, draft_model):
        check_draft_model(target, draft_model)
        self.target, self.model = target, draft_model

    def setup(self, rows: int, device, extra: int) -> None:
        self.model.setup_cache(rows, device=device, extra=extra)

    def reset(self) -> None:
        self.model.backbone.reset_cache()

    def start(self, cond, negative_cond, uses_cfg, prefix_hidden, first_tokens) -> torch.Tensor:
        self.model.prefill(_rows(self.model, cond, negative_cond, uses_cfg))
        position = torch.full((1,), self.model.prefix_len, dtype=torch.long, device=first_tokens.device)
        return self.model.step(first_tokens, position)[:, -1]

    def propose(self, tokens, position, parents, tree: TreeSlots | None = None, kv_len=None) -> torch.Tensor:
        # The draft model's input at position p is the token at p: one past the sampler's position (its
        # tree slots and reach too). Ancestry is all in the mask: the model keeps no per-draft state.
        reach = None if kv_len is None else kv_len + 1
        if tree is None:
            return self.model.step(tokens, position + 1, kv_len=reach)
        mask = tree.mask(self.model.backbone, 1, reach)
        return self.model.step(tokens, tree.slots + 1, mask=mask, rope_pos=position + 1)

    def catch_up(self, tokens, target_hidden, positions, accepted, kv_len=None) -> torch.Tensor:
        reach = None if kv_len is None else kv_len + 1
        logits = self.model.step(tokens, positions + 1, kv_len=reach)  # (R, T, V)
        return take_at(logits, accepted)


def _rows(model, cond, negative_cond, uses_cfg: bool) -> torch.Tensor:
    """The condition rows [cond; uncond] as ``model`` sees them: its own null condition unless a negative
    condition (e.g. a negative prompt's text states) was given."""
    return with_unconditional(model, cond, negative_cond) if uses_cfg else cond


def check_draft_model(target, draft_model) -> None:
    """An independent draft model must speak the target's tokens, grid and condition."""
    t, d = target.config, draft_model.config
    fields = {
        "vocab_size": (t.vocab_size, d.vocab_size),
        "grid_size": (t.backbone.grid_size, d.backbone.grid_size),
        "prefix_len": (t.backbone.prefix_len, d.backbone.prefix_len),
        "condition": (t.condition, d.condition),
        "num_classes" if t.condition == "class" else "text_dim": (
            (t.num_classes, d.num_classes) if t.condition == "class" else (t.text_dim, d.text_dim)
        ),
    }
    check_fits(fields)


def check_fits(
    fields: dict[str, tuple], subject: str = "the draft model", draft: str = "draft model"
) -> None:
    """One error naming every field where {name: (target's, draft's)} differ; the speculative samplers
    (discrete, continuous, MAR) all check their drafts with it."""
    bad = {name: pair for name, pair in fields.items() if pair[0] != pair[1]}
    if bad:
        detail = ", ".join(f"{name}: target {a}, {draft} {b}" for name, (a, b) in bad.items())
        raise ValueError(f"{subject} does not fit the target ({detail})")


def drafting_for(target, drafter):
    """The drafting source for a drafter object: an EAGLE ``Drafter`` or an independent ``ImageGenerator``."""
    from arstudio.generators.drafter import Drafter

    return (
        HiddenStateDrafting(target, drafter)
        if isinstance(drafter, Drafter)
        else ModelDrafting(target, drafter)
    )
