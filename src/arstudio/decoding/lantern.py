"""LANTERN relaxed acceptance (arXiv 2410.03355) and LANTERN++'s lambda cap (arXiv 2502.06352).

Visual AR models spread probability over many interchangeable tokens, so a drafter's guess is often
rejected although a token whose codebook vector is almost the same would have been fine. LANTERN lets
the target's mass on the draft's latent neighbours count for the draft:

* A_k(x): the k codebook entries nearest to x, in the space the decoder sees (l2-normalised vectors for
  LlamaGen-style codebooks; the reference code ranks raw vectors, which is a slightly different space).
  Only the top k are stored (V x k), not the V x V ranking.
* The budget: the largest distance-ordered prefix n_1..n_j of A_k(x) whose target mass S_j = sum p(n_m)
  stays <= delta (LANTERN's total-variation budget); with lambda > 1 also <= (lambda - 1) p(x) (LANTERN++
  caps the relaxed mass at lambda p(x)). Here both caps apply at once, so delta always bounds the TVD.
* The relaxed target p~_x moves that mass onto x: p~(x) = p(x) + S, p~(n_m) = 0 for the m <= j moved.
  TV(p~_x, p) = S <= delta. Accept the draft if u <= p~(x) / q(x); on rejection sample the residual
  max(p~_x - q, 0), which zeroes x (rejected) and the neighbours whose mass was moved.

delta = 0 moves nothing (only zero-mass neighbours), so p~ = p and this is exact speculative sampling.
"""

from __future__ import annotations

import torch


def latent_neighbours(codebook: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """(V, d) codebook vectors -> (V, k) int64 ids of each entry's k nearest other entries, nearest first.

    Built in row chunks, so a 16384-entry codebook never materialises the full V x V distance matrix.
    """
    vocab = codebook.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < vocab:
        raise ValueError(
            f"lantern_k={k!r} is out of range: allowed are 1..{vocab - 1} (codebook size {vocab})"
        )
    vectors = codebook.detach().float()
    rows = []
    for start in range(0, vocab, chunk):
        distances = torch.cdist(vectors[start : start + chunk], vectors)  # (chunk, V)
        own = torch.arange(start, min(start + chunk, vocab), device=vectors.device)
        distances[torch.arange(len(own), device=vectors.device), own] = float("inf")  # not its own neighbour
        rows.append(distances.topk(k, dim=-1, largest=False).indices)
    return torch.cat(rows)


def relaxed_target(
    p: torch.Tensor, draft: torch.Tensor, neighbours: torch.Tensor | None, delta: float, lam: float = 1.0
) -> torch.Tensor:
    """The relaxed target p~_x for each draft: p (..., V) probabilities, draft (...) ids -> (..., V).

    ``neighbours`` None (or delta = 0) returns p unchanged: exact speculative sampling.
    """
    if neighbours is None or delta <= 0:
        return p
    near = neighbours[draft]  # (..., k)
    near_mass = p.gather(-1, near)  # (..., k), distance order
    budget = delta  # (a plain number unless capped: fewer small ops per call)
    if lam > 1:
        budget = ((lam - 1) * p.gather(-1, draft[..., None])).clamp(max=delta)  # (..., 1)
    # Largest prefix within budget (the running sum only grows, so "within" is a prefix).
    moved = near_mass.cumsum(-1) <= budget  # (..., k)
    moved_mass = (near_mass * moved).sum(-1)  # S
    relaxed = p.scatter(-1, near, near_mass.masked_fill(moved, 0.0))  # zero the neighbours whose mass moves
    return relaxed.scatter_add(-1, draft[..., None], moved_mass[..., None])


def residual(relaxed: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Where to sample after a rejection: max(p~ - q, 0), normalised; p~ itself where that is all zero
    (p~ == q up to rounding, so a rejection was a rounding accident)."""
    return _normalised((relaxed - q).clamp_min(0), relaxed)


def point_residual(relaxed: torch.Tensor, draft: torch.Tensor, relaxed_draft: torch.Tensor) -> torch.Tensor:
    """``residual`` for a point-mass proposal at ``draft`` (...) ids, p~(draft) = ``relaxed_draft`` (...),
    without the dense one-hot q: only the draft's entry changes (max(p~ - 1, 0)), every other entry is
    p~ - 0 = p~, so the result is bit for bit the dense form's."""
    rest = relaxed.scatter(-1, draft[..., None], (relaxed_draft - 1).clamp_min(0)[..., None])
    return _normalised(rest, relaxed)


def _normalised(rest: torch.Tensor, relaxed: torch.Tensor) -> torch.Tensor:
    total = rest.sum(-1, keepdim=True)
    return torch.where(total > 1e-12, rest / total.clamp_min(1e-30), relaxed)


def total_variation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a - b).abs().sum(-1)
