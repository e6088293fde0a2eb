"""Batched speculative decoding, exact (Leviathan/Chen acceptance) or LANTERN-relaxed.

Drafts come from a drafting source (``drafting.py``): an EAGLE-style drafter or an independent small model.

One round, for every image at once (each at its own position):
1. The drafter proposes ``draft_tokens`` (gamma) tokens from its own CFG-guided, filtered distribution:
   by default its most likely token, i.e. the proposal q is a point mass (as EAGLE-2 and LANTERN draft),
   or a sample from it (``greedy_drafts=False``). Either way the acceptance rule keeps the result exact.
   Point masses skip a sampling step per draft; which proposal is accepted more often depends on the
   drafter (a sampled proposal accepts with sum min(p, q), a point mass with p(top of q)).
2. The target reads [last decided token, drafts] (gamma + 1 positions) in one cached forward: the target
   distribution p at every draft and one past them.
3. Draft i is accepted if u_i <= p~(d_i) / q(d_i) (p~ = p for exact decoding, LANTERN's relaxed target
   otherwise) and all drafts before it were; the first rejected position samples the residual
   max(p~ - q, 0), and a fully accepted row takes a bonus token from p at the end.
4. The drafter catches up on the gamma + 1 positions the target just computed, reading its prediction
   for the next round at the row's new position.

A static draft tree (``draft_width`` > 1 or ``draft_tree``, see ``tree.py``) generalises steps 1-3: the
drafter drafts one tree level per forward, the target verifies every node in one forward under a tree
attention mask, and acceptance walks the tree by recursive rejection over siblings. The chain is the
depth-only tree and runs exactly as described above (causal mask, no slot moves).

Rows accept different numbers of tokens, so the KV caches are addressed per row: ``input_pos`` (B, T).
Entries left by rejected drafts sit past a row's position and are overwritten before they can be seen.

Randomness: every round, each image draws 2 gamma + 1 uniforms of its own (gamma for sampled drafts,
unused for greedy ones; gamma for the acceptance tests; one for the residual/bonus token; for a tree,
gamma is its number of draft nodes), made on the device from its generator's key (``random.py``; 16
rounds' worth at a time, the same numbers), so an image's random draws do not depend on its batch-mates
(see ``logits.py`` on rounding). The only host read of a round is the ledger's check whether every image
is done.

Cost: on the CPU a round's non-model work is a few hundred small ops, so the loop keeps their count down
(host-known shortcuts in ``_Guide``, greedy proposals never materialised as one-hot q, a chain accepted
without the tree walk, tree masks by table lookup); docs/speculation_cpu.md has the measured split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from arstudio.decoding.autoregressive import DecodeResult, StepCallback, with_unconditional
from arstudio.decoding.compiled import is_compiled
from arstudio.decoding.drafting import TreeSlots, drafting_for
from arstudio.decoding.logits import (
    SamplingParams,
    classifier_free_guidance,
    filter_logits,
    sample_with_uniform,
)
from arstudio.decoding.random import as_device_random
from arstudio.decoding.rounds import SpeculationLedger
from arstudio.decoding.tree import DraftTree, TreeIndex, accept_tree


@dataclass(frozen=True)
class SpeculativeParams:
    draft_tokens: int = 4  # the draft's depth
    lantern_delta: float = 0.0  # 0: exact speculative decoding
    lantern_lambda: float = 1.0  # > 1: LANTERN++ cap on the relaxed mass
    greedy_drafts: bool = True  # drafts are the drafter's top token (q = point mass) rather than samples
    draft_width: int = 1  # candidates at each depth of the top-1 path (``tree.spine``); 1: a chain
    draft_tree: tuple | None = None  # a static tree as a list of paths (``tree.py``); replaces the two above
    # (lantern_k lives in the neighbour table the caller passes)

    def __post_init__(self):
        from arstudio.decoding.knobs import DRAFT_TOKENS, DRAFT_WIDTH, LANTERN_DELTA, LANTERN_LAMBDA

        for knob in (DRAFT_TOKENS, LANTERN_DELTA, LANTERN_LAMBDA, DRAFT_WIDTH):
            knob.check(getattr(self, knob.name))

    def tree(self, vocab: int) -> DraftTree:
        """The draft tree, checked against the vocabulary and the deepest draft a drafter makes."""
        from arstudio.decoding.knobs import DRAFT_TOKENS

        if self.draft_tree is None and self.draft_width == 1:
            return DraftTree.chain(self.draft_tokens)
        spec = (self.draft_tokens, self.draft_width) if self.draft_tree is None else self.draft_tree
        return DraftTree.parse(spec, int(DRAFT_TOKENS.high), vocab)


class _Guide:
    """CFG + filtering for logits of rows [cond; uncond] at per-image token indices."""

    def __init__(self, params: SamplingParams, batch: int, total: int):
        self.params, self.batch, self.total = params, batch, total
        # Host-known shortcuts taken every call of every round, each giving the same numbers with fewer
        # small ops: a whole-image CFG interval guides exactly the indices < total (index / total in
        # [0, 1); overshoot past the image stays unguided, as before), and unit temperature without top-k
        # or top-p filters nothing (x / 1.0 == x), leaving the softmax.
        self.whole_image = tuple(params.cfg_interval) == (0.0, 1.0)
        self.unfiltered = params.temperature == 1.0 and params.top_k == 0 and params.top_p == 1.0

    def __call__(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """logits (R, ..., V) with R = B or 2B; index (B, ...) token indices -> probabilities (B, ..., V)."""
        p = self.params
        if p.uses_cfg:
            cond, uncond = logits[: self.batch], logits[self.batch :]
            if self.whole_image:
                guided = (index < self.total)[..., None]
            else:
                lo, hi = p.cfg_interval
                fraction = index.float() / self.total
                guided = ((fraction >= lo) & (fraction < hi))[..., None]
            logits = torch.where(guided, classifier_free_guidance(cond, uncond, p.guidance_scale), cond)
        if self.unfiltered:
            return logits.float().softmax(dim=-1)
        return filter_logits(logits, p.temperature, p.top_k, p.top_p)


@torch.no_grad()
def sample_speculative(
    target,
    drafter,
    cond: torch.Tensor,
    generators,
    params: SamplingParams | None = None,
    spec: SpeculativeParams | None = None,
    neighbours: torch.Tensor | None = None,
    negative_cond: torch.Tensor | None = None,
    callback: StepCallback | None = None,
) -> DecodeResult:
    """Sample (B, N) tokens from ``target`` with drafts from ``drafter``.

    ``neighbours`` (V, k) latent-neighbour ids turn on LANTERN's relaxed acceptance (with
    ``spec.lantern_delta`` > 0); without them the result is distributed exactly as plain AR sampling.
    """
    params, spec = params or SamplingParams(), spec or SpeculativeParams()
    tree = spec.tree(target.config.vocab_size)
    batch, total, prefix_len = cond.shape[0], target.seq_len, target.prefix_len
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
    device = cond.device
    rng = as_device_random(generators, device)
    if params.uses_cfg:
        cond = with_unconditional(target, cond, negative_cond)
    rows = cond.shape[0]
    streams = rows // batch  # 2 with guidance: every token goes to both the cond and the uncond row

    def both(x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (R, ...)
        return x.repeat(streams, *([1] * (x.ndim - 1)))

    guide = _Guide(params, batch, total)
    drafting = drafting_for(target, drafter)
    index = tree.on(device)
    nodes, depth = tree.size, tree.depth
    # Eager forwards attend over the cache slots a round can reach, as plain AR's steps do (kv_len); a
    # compiled step keeps the whole static cache, so its shapes never change.
    eager = not (is_compiled(target) or is_compiled(drafter))
    start = time.perf_counter()
    target.setup_cache(rows, device=device, extra=nodes)
    drafting.setup(rows, device, extra=nodes)
    try:
        # Token 0 from the target's prefill; the drafter reads the prefix and token 0 to draft token 1.
        logits, prefix_hidden = target.prefill(cond, return_hidden=True)  # (R, V), (R, P, dim)
        first_u = rng.uniform(1)[:, 0]
        zero = torch.zeros(batch, dtype=torch.long, device=device)
        ledger = SpeculationLedger(sample_with_uniform(guide(logits, zero), first_u), total, depth)
        draft_logits = drafting.start(
            cond[:batch], negative_cond, params.uses_cfg, prefix_hidden, both(ledger.tokens[:, :1])
        )
        steps = ledger.steps
        # each round: 2 (N - 1) + 1 uniforms per image: draws, acceptance tests, the last token
        draws = _RoundDraws(rng, 2 * nodes - 1, min(16, total))
        while ledger.running:
            cursor = ledger.cursor
            base = prefix_len + cursor - 1  # (B,) where the last decided token sits: the tree's root
            u = draws.next()  # (B, 2 N - 1)
            # the furthest slot any row writes this round is its base + N - 1
            kv_len = prefix_len + ledger.furthest_cursor + nodes - 1 if eager else None

            # 1. Draft the tree level by level; a node at depth d is token cursor + d - 1.
            rows_base = both(base)  # (R,)
            drafts, q = _draft(
                drafting,
                guide,
                index,
                draft_logits[:, None],
                cursor,
                rows_base,
                u,
                spec.greedy_drafts,
                kv_len,
            )

            # 2. Verify [last decided token, drafts] in one forward: node i at slot base + i, position
            # base + depth i, seeing its ancestors (a chain: slots are positions, the causal mask suffices).
            chunk = torch.cat([ledger.last_decided(cursor), drafts], dim=1)  # (B, N)
            slots = rows_base[:, None] + index.order  # (R, N)
            tree_args = {"kv_len": kv_len}
            if not tree.is_chain:
                cache = target.backbone.caches[0].k
                mask = index.mask(rows_base, cache.shape[2], cache.dtype, kv_len)
                tree_args = {"mask": mask, "rope_pos": rows_base[:, None] + index.depth}
            logits, hidden = target.step(both(chunk), slots, return_hidden=True, **tree_args)
            # (B, N, V): the children of node i are token cursor + d_i
            p = guide(logits, cursor[:, None] + index.depth)

            # 3. Walk the tree: recursive rejection over siblings, the first accepted child goes on.
            accepted, path, final_probs = accept_tree(
                index,
                p,
                drafts,
                q,
                u[:, nodes - 1 : 2 * nodes - 2],
                neighbours,
                spec.lantern_delta,
                spec.lantern_lambda,
            )
            final = sample_with_uniform(final_probs, u[:, 2 * nodes - 2])
            # a chain's path is its first accepted + 1 nodes: the drafts in order (what follows is unread)
            path_tokens = drafts if tree.is_chain else chunk.gather(1, path[:, 1:])
            new = ledger.commit(cursor, path_tokens, final, accepted)
            positions = rows_base[:, None] + steps  # (R, D + 1) the path's sequence positions
            if not tree.is_chain:  # the path's keys/values move from their slots to its positions
                target.backbone.move_slots(rows_base[:, None] + both(path), positions)
                hidden = hidden.gather(1, both(path)[..., None].expand(-1, -1, hidden.shape[-1]))

            # 4. The drafter catches up on the verified path, reading on from each row's new end.
            draft_logits = drafting.catch_up(both(new), hidden, positions, both(accepted), kv_len)
            if ledger.end_round(callback):
                break
        draws.close()
    finally:
        target.backbone.reset_cache()
        drafting.reset()
    stats = {
        **ledger.stats(),
        # per round: one per tree level with children, and the catch-up
        "drafter_forwards": ledger.round_count * (len(index.drafting_levels) + 1) + 1,
        "tree_nodes": nodes - 1,
        "decode_seconds": time.perf_counter() - start,
    }
    return DecodeResult(ledger.result(), stats)


class _RoundDraws:
    """Each round's ``lanes`` uniforms per image, made ``ahead`` rounds at a time: the numbers of one
    ``rng.uniform(lanes)`` per round (``DeviceRandom.uniform_ahead``), with the hashing ops paid per block."""

    def __init__(self, rng, lanes: int, ahead: int):
        self.rng, self.lanes, self.ahead, self.left, self.block = rng, lanes, ahead, 0, None

    def next(self) -> torch.Tensor:
        if self.left == 0:
            self.block, self.left = self.rng.uniform_ahead(self.ahead, self.lanes), self.ahead
        self.left -= 1
        return self.block[:, self.ahead - 1 - self.left]

    def close(self) -> None:
        """Give back the draws of rounds that did not run (a DeviceRandom handed in reads on after them)."""
        self.rng.draws -= self.left
        self.left = 0


def _draft(drafting, guide, index: TreeIndex, level_logits, cursor, rows_base, u, greedy: bool, kv_len):
    """Draft every node of the tree, one drafter forward per level with children. level_logits (R, 1, V):
    the drafter's prediction for token ``cursor``; rows_base (R,) the round's root position per row. Returns
    drafts (B, N - 1) and the proposal each was drawn from, q (B, N - 1, V), or None for greedy drafts (point
    masses: ``accept_tree`` needs only the token). ``kv_len``: the round's reach, None when compiled."""
    streams = rows_base.shape[0] // cursor.shape[0]
    drafts, q = [], []
    for d, level in enumerate(index.levels, start=1):
        q_parent = guide(level_logits, (cursor + (d - 1))[:, None])  # (B, m, V); one token index per row
        if greedy and level.width == 1:  # the parent's top candidate
            top = q_parent.argmax(-1)  # (B, m)
            tokens = top if level.one_per_parent else top[:, level.parents]
        elif greedy:  # the parent's top candidates
            tokens = q_parent.topk(level.width).indices[:, level.parents, level.ranks]  # (B, n)
        else:  # independent samples of the parent's proposal (SpecInfer's multi-candidate sampling)
            q_level = q_parent[:, level.parents]  # (B, n, V): each node's parent's proposal
            tokens = sample_with_uniform(q_level, u[:, level.nodes - 1])
            q.append(q_level)
        drafts.append(tokens)
        if level.drafting_nodes:
            chosen = tokens if level.all_drafting else tokens[:, level.drafting]  # (B, m) nodes with children
            position = (rows_base + (d - 1))[:, None].expand(-1, chosen.shape[1])  # (R, m)
            slots = None
            if not index.tree.is_chain:
                slots = TreeSlots(rows_base[:, None] + level.draft_slots, level.draft_mask, rows_base)
            chosen = chosen.repeat(streams, 1)  # (R, m)
            level_logits = drafting.propose(chosen, position, level.drafting_parents, slots, kv_len)
    # levels hold consecutive nodes, in order
    return torch.cat(drafts, dim=1), torch.cat(q, dim=1) if q else None
