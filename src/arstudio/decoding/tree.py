"""Static draft trees (EAGLE-1 / LANTERN++ style) for speculative decoding: the tree's shape, its tree
attention masks and the acceptance walk over its paths.

A tree is a list of paths of candidate ranks below the root (the last decided token): ``(0,)`` is the
drafter's best guess for the next token, ``(1,)`` its second best, ``(0, 2)`` the third best guess after
``(0,)``. A chain of gamma drafts is the depth-only tree ``(0,), (0, 0), ...``. Nodes are numbered
breadth-first, the root 0; node i sits at depth ``depth[i]`` (the token cursor + depth - 1).

Verification reads all N nodes in one target forward: node i is written to the scratch slot base + i
(base = the root's position) at the RoPE position base + depth[i], and sees the decided prefix and its own
ancestors (``tree_mask``). Afterwards the accepted path's keys and values move to their sequence
positions (``Backbone.move_slots``). The drafter drafts one tree level per forward, the level's nodes
side by side, at slots base + i - 1 (it predicts from the node's parent, one position earlier).

Acceptance is recursive rejection over siblings (SpecInfer / EAGLE's tree verification), with LANTERN's
relaxed target at each test: at a node with target distribution r, try its children in rank order; child
c passes if u_c q(c) <= r~_c(c); after a failure r becomes residual(r~_c, q); if every child fails the
next token is drawn from the last residual, at a leaf from the target itself. With delta = 0 every step is
an exact rejection step, so the sampled tokens follow the target distribution whatever the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from arstudio.decoding.lantern import point_residual, relaxed_target, residual
from arstudio.decoding.rounds import take_at


@dataclass(frozen=True)
class DraftTree:
    paths: tuple[tuple[int, ...], ...]  # breadth-first, ranks in order among siblings

    @classmethod
    def parse(cls, spec, max_depth: int, vocab: int) -> DraftTree:
        """A tree from a list of paths, or the shorthand (depth, width) (see ``spine``); one-line errors
        name the bad path and what is allowed."""
        if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
            spec = spine(*spec)
        if isinstance(spec, (str, bytes)) or not hasattr(spec, "__iter__"):
            raise ValueError(
                f"draft_tree={spec!r} is not allowed: give a list of paths such as "
                "[[0], [1], [0, 0]] or a (depth, width) pair"
            )
        paths = []
        for path in spec:
            ok = isinstance(path, (list, tuple)) and len(path) > 0
            if not ok or any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in path):
                raise ValueError(
                    f"draft_tree path {path!r} is not allowed: a path is a non-empty list of "
                    "candidate ranks (integers >= 0)"
                )
            paths.append(tuple(path))
        if not paths:
            raise ValueError("draft_tree=[] is not allowed: give at least one path, e.g. [[0]]")
        known = set()
        for path in paths:
            if path in known:
                raise ValueError(f"draft_tree lists path {list(path)} twice; each node once")
            known.add(path)
        for path in paths:
            if len(path) > 1 and path[:-1] not in known:
                raise ValueError(
                    f"draft_tree path {list(path)} has no parent {list(path[:-1])}: every "
                    "prefix of a path must be a path of the tree"
                )
            if len(path) > max_depth:
                raise ValueError(
                    f"draft_tree path {list(path)} is {len(path)} deep; the drafter drafts "
                    f"at most {max_depth} tokens ahead (allowed depth 1..{max_depth})"
                )
            if max(path) >= vocab:
                raise ValueError(
                    f"draft_tree path {list(path)} asks for candidate {max(path) + 1} of a "
                    f"{vocab}-token vocabulary (allowed ranks 0..{vocab - 1})"
                )
        return cls(tuple(sorted(paths, key=lambda p: (len(p), p))))

    @classmethod
    def chain(cls, depth: int) -> DraftTree:
        return cls(tuple((0,) * d for d in range(1, depth + 1)))

    # ---- shape (host lists, index 0 the root) -------------------------------------------------------
    @property
    def size(self) -> int:
        """Nodes including the root: the verify forward's length."""
        return len(self.paths) + 1

    @property
    def depth(self) -> int:
        return len(self.paths[-1])

    @property
    def is_chain(self) -> bool:
        return all(rank == 0 for path in self.paths for rank in path)

    @cached_property
    def parent(self) -> list[int]:
        index = {path: i + 1 for i, path in enumerate(self.paths)}
        return [-1] + [index.get(path[:-1], 0) for path in self.paths]

    @cached_property
    def depths(self) -> list[int]:
        return [0] + [len(path) for path in self.paths]

    @cached_property
    def children(self) -> list[list[int]]:
        """Each node's children, in rank order."""
        kids = [[] for _ in range(self.size)]
        for i in range(1, self.size):
            kids[self.parent[i]].append(i)
        return kids

    def level(self, depth: int) -> list[int]:
        return [i for i in range(1, self.size) if self.depths[i] == depth]

    def on(self, device) -> TreeIndex:
        return TreeIndex(self, device)


def spine(depth: int, width: int) -> list[list[int]]:
    """The (depth, width) shorthand: the top-1 chain ``depth`` deep, with ``width`` candidates at each of
    its depths (the ``width - 1`` alternatives are leaves). The drafter then runs one node per level, as
    for a chain, and the verify forward reads depth * width + 1 positions. Width 1 is the chain."""
    return [[0] * (d - 1) + [rank] for d in range(1, depth + 1) for rank in range(width)]


class TreeIndex:
    """A tree's static index tensors on one device, built once per call."""

    def __init__(self, tree: DraftTree, device):
        self.tree = tree
        n = tree.size
        long = dict(dtype=torch.long, device=device)
        self.depth = torch.tensor(tree.depths, **long)  # (N,)
        self.order = torch.arange(n, **long)  # (N,) node i's slot offset from the root's
        ancestors = torch.eye(n, dtype=torch.bool)
        for i in range(1, n):
            ancestors[i] |= ancestors[tree.parent[i]]
        self.ancestors = ancestors.to(device)  # (N, N): [i, j] node j is i or above it
        self.mask = TreeMask(self.ancestors)  # the verify forward's tree attention mask
        self.internal = [i for i in range(n) if tree.children[i]]  # nodes with children
        width = max(len(tree.children[i]) for i in self.internal)
        kids = [tree.children[i] + [0] * (width - len(tree.children[i])) for i in self.internal]
        self.kids = torch.tensor(kids, **long).T  # (W, I): rank j's child of each internal node (0: none)
        self.internal_t = torch.tensor(self.internal, **long)
        # host: whether rank j's child exists at every internal node
        self.kids_full = [all(row) for row in zip(*kids, strict=True)]
        slot = {node: j for j, node in enumerate(self.internal)}
        self.parent_slot = torch.tensor([slot[tree.parent[i]] for i in range(1, n)], **long)  # (N - 1,)
        self.path_to = torch.tensor([_root_path(tree, i) for i in range(n)], **long)  # (N, D + 1)
        # Per level d >= 1: the nodes, their parents' places in level d - 1, their ranks, and which of them
        # have children (those need a drafter forward).
        self.levels = []
        for d in range(1, tree.depth + 1):
            nodes = tree.level(d)
            previous = [i for i in tree.level(d - 1) if tree.children[i]] if d > 1 else [0]
            parents = [previous.index(tree.parent[i]) for i in nodes]
            ranks = [tree.paths[i - 1][-1] for i in nodes]
            drafting = [j for j, i in enumerate(nodes) if tree.children[i]]
            self.levels.append(
                TreeLevel(
                    nodes=torch.tensor(nodes, **long),
                    parents=torch.tensor(parents, **long),
                    ranks=torch.tensor(ranks, **long),
                    width=max(ranks) + 1,
                    one_per_parent=parents == list(range(len(previous))) and max(ranks) == 0,
                    all_drafting=len(drafting) == len(nodes),
                    drafting=torch.tensor(drafting, **long),
                    drafting_nodes=[nodes[j] for j in drafting],
                    drafting_parents=torch.tensor([parents[j] for j in drafting], **long),
                    draft_slots=torch.tensor([nodes[j] - 1 for j in drafting], **long),
                    draft_mask=TreeMask(self.ancestors[[nodes[j] for j in drafting]][:, 1:]),
                )
            )
        self.drafting_levels = [level for level in self.levels if level.drafting_nodes]


def _root_path(tree: DraftTree, node: int) -> list[int]:
    """The nodes from the root down to ``node``, padded with ``node`` to depth + 1 entries (the walk's
    path when it stops there)."""
    path = [node]
    while tree.parent[path[-1]] >= 0:
        path.append(tree.parent[path[-1]])
    return path[::-1] + [node] * (tree.depth + 1 - len(path))


@dataclass(frozen=True)
class TreeLevel:
    nodes: torch.Tensor  # (n,) node ids at this depth
    parents: torch.Tensor  # (n,) index of each node's parent among the previous level's nodes with children
    ranks: torch.Tensor  # (n,) candidate rank under the parent
    width: int  # candidates needed per parent (max rank + 1)
    one_per_parent: bool  # node j is the top candidate of parent j (a chain's level): no index needed
    all_drafting: bool  # every node has children
    drafting: torch.Tensor  # (m,) index among ``nodes`` of the nodes with children
    drafting_nodes: list[int]  # their node ids (host)
    drafting_parents: torch.Tensor  # (m,) their parents' index among the previous level's nodes with children
    draft_slots: torch.Tensor  # (m,) their drafter slots after the round's base (node - 1: no root there)
    draft_mask: TreeMask  # over (m, N - 1): the draft nodes each of them sees (the root is not drafted)


def tree_mask(ancestors: torch.Tensor, base: torch.Tensor, length: int, dtype) -> torch.Tensor:
    """Additive attention mask (R, 1, Q, length) over a cache: query q sees every slot before ``base`` (R,)
    (the decided prefix) and the slots base + j of the tree nodes j with ``ancestors[q, j]`` (Q, M)."""
    rel = torch.arange(length, device=base.device) - base[:, None]  # (R, length) slot relative to base
    inside = (rel >= 0) & (rel < ancestors.shape[1])
    seen = ancestors[:, rel.clamp(0, ancestors.shape[1] - 1)].permute(1, 0, 2)  # (R, Q, length)
    visible = (rel < 0)[:, None] | (inside[:, None] & seen)
    return torch.where(visible, 0.0, float("-inf")).to(dtype)[:, None]


class TreeMask:
    """``tree_mask`` for one ancestry (Q, M), made by lookup: per cache length and dtype, the mask of every
    slot offset from the base is built once ((Q, 2 length), from ``tree_mask`` itself), so a round's mask
    costs a subtraction and a gather instead of a dozen small ops. The same numbers as ``tree_mask``."""

    def __init__(self, ancestors: torch.Tensor):
        self.ancestors, self._tables = ancestors, {}

    def __call__(self, base: torch.Tensor, length: int, dtype, width: int | None = None) -> torch.Tensor:
        """The mask over a cache of ``length`` slots, or over its first ``width`` (an eager forward that
        attends over the slots a round can reach: the same table, fewer columns)."""
        key = (length, dtype)
        if key not in self._tables:
            # column c holds slot offset c - length from the base: the table is tree_mask at base = length
            at = torch.full((1,), length, dtype=torch.long, device=base.device)
            table = tree_mask(self.ancestors, at, 2 * length, dtype)[0, 0]  # (Q, 2 length)
            self._tables[key] = table, torch.arange(length, 2 * length, device=base.device)
        table, columns = self._tables[key]
        columns = columns if width is None else columns[:width]
        return table[:, columns - base[:, None]].permute(1, 0, 2)[:, None]  # (R, 1, Q, width or length)


def accept_tree(
    index: TreeIndex,
    p: torch.Tensor,
    drafts: torch.Tensor,
    q: torch.Tensor | None,
    u: torch.Tensor,
    neighbours,
    delta: float,
    lam: float,
):
    """Recursive rejection over the tree (see the module docstring).

    p (B, N, V): the (guided, filtered) target at every node, predicting its children's token; drafts
    (B, N - 1) the nodes' tokens; q (B, N - 1, V) the proposal each node was drawn from, or None for greedy
    drafts (point masses at the drafts, never materialised); u (B, N - 1) one uniform per node. Returns
    accepted (B,) path length, path (B, D + 1) node ids (repeating the last accepted node past it) and the
    distribution of the token after the path (B, V).
    """
    accept = _accept_chain if index.tree.is_chain else _accept_siblings
    return accept(index, p, drafts, q, u, neighbours, delta, lam)


def _accept_siblings(index: TreeIndex, p, drafts, q, u, neighbours, delta: float, lam: float):
    """``accept_tree`` for any tree: each internal node tries its children rank by rank, all nodes at once."""
    r = p[:, index.internal_t]  # (B, I, V)
    winner = torch.full((p.shape[0], len(index.internal)), -1, dtype=torch.long, device=p.device)
    # rank j's children (I,), and whether every internal node has one
    for rank, (kids, full) in enumerate(zip(index.kids, index.kids_full, strict=True)):
        token = drafts[:, kids - 1]  # (B, I); index -1 (no child) reads a real node, masked out below
        relaxed = relaxed_target(r, token, neighbours, delta, lam)
        p_tok = relaxed.gather(-1, token[..., None]).squeeze(-1)
        if q is None:  # greedy drafts: point masses, q(token) = 1
            test, rest = u[:, kids - 1], point_residual(relaxed, token, p_tok)
        else:
            q_kid = q[:, kids - 1]  # (B, I, V)
            test = u[:, kids - 1] * q_kid.gather(-1, token[..., None]).squeeze(-1)
            rest = residual(relaxed, q_kid)
        # Where every internal node has this child (a chain's one rank, the first rank of any tree) the
        # masks are all true and are skipped: the same decisions with fewer small ops per round.
        passed = test <= p_tok
        if not full:
            passed = passed & (kids > 0)
        if rank > 0:  # the first rank finds every winner still unset
            passed = passed & (winner < 0)
        winner = torch.where(passed, kids, winner)
        r = rest if full else torch.where((kids > 0)[:, None], rest, r)
    return _walk(index, p, r, winner)


def _accept_chain(index: TreeIndex, p, drafts, q, u, neighbours, delta: float, lam: float):
    """``accept_tree`` for a chain, node d's one child being node d + 1: the same tests at every depth at
    once, and the walk is the leading run of passes."""
    relaxed = relaxed_target(p[:, :-1], drafts, neighbours, delta, lam)  # (B, D, V) before each draft
    p_tok = relaxed.gather(-1, drafts[..., None]).squeeze(-1)
    if q is None:  # greedy drafts: point masses, q(token) = 1
        test, rest = u, point_residual(relaxed, drafts, p_tok)
    else:
        test, rest = u * q.gather(-1, drafts[..., None]).squeeze(-1), residual(relaxed, q)
    accepted = (test <= p_tok).cumprod(1).sum(1)  # (B,)
    stop = torch.cat([rest, p[:, -1:]], dim=1)  # a rejected depth: its residual; past the last: the bonus
    return accepted, index.path_to[accepted], take_at(stop, accepted)


def _walk(index: TreeIndex, p: torch.Tensor, r: torch.Tensor, winner: torch.Tensor):
    """Follow each row's accepted children from the root, all depths at once: node i is on the walk when
    every node on its root path was its parent's winner; the walk ends at the deepest such node (the
    highest id, nodes being breadth-first). r (B, I, V): the last residual at each internal node;
    winner (B, I): the child each accepted (-1: none)."""
    chosen = winner[:, index.parent_slot] == index.order[1:]  # (B, N - 1) node i >= 1 won at its parent
    chosen = torch.cat([chosen.new_ones(chosen.shape[0], 1), chosen], dim=1)  # (B, N), the root always
    reached = chosen[:, index.path_to].all(-1)  # (B, N)
    end = (reached * index.order).argmax(-1)  # (B,)
    stop = p.index_copy(1, index.internal_t, r)  # leaves: the bonus token from p; else the last residual
    return index.depth[end], index.path_to[end], take_at(stop, end)
