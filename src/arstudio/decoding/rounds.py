"""Bookkeeping shared by the batched speculative samplers (discrete ``speculative.py`` and continuous
``continuous_speculative.py``): where each image stands, writing what a round fixed, the step callback and
the statistics. The strategies differ in how they draft and accept; this part is the same for both.
"""

from __future__ import annotations

import torch


def take_at(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) and per-row positions index (B,) -> x[b, index[b]], (B, ...)."""
    return x[torch.arange(x.shape[0], device=x.device), index]


class SpeculationLedger:
    """Per-image progress of one batched speculative run.

    Tokens are (B, N + gamma + 1, ...): a round may write up to gamma + 1 tokens past the last decided one,
    and a row that finishes keeps riding along (its extra tokens are dropped by ``result``).
    """

    def __init__(self, first: torch.Tensor, total: int, gamma: int):
        """``first`` (B, ...): token 0 of every image, from the target's prefill."""
        batch, device = first.shape[0], first.device
        self.total, self.gamma = total, gamma
        self.tokens = first.new_zeros(batch, total + gamma + 1, *first.shape[1:])
        self.tokens[:, 0] = first
        self.decided = torch.ones(batch, dtype=torch.long, device=device)  # tokens fixed so far, per image
        self.rounds = torch.zeros(batch, dtype=torch.long, device=device)  # verify rounds each image needed
        self.forwards = 1  # target forwards of the batch: the prefill, then one verify per round
        self.round_count = 0  # rounds of the batch (host-side)
        self.steps = torch.arange(gamma + 1, device=device)
        self.rows = torch.arange(batch, device=device)
        self.least_decided = 1  # host copy of decided.min(), refreshed once per round by end_round
        # tokens every image had before its first round (set again then: a sampler may prefill)
        self.start = 1
        # Host copies of the per-image fixed tokens and rounds, as of the last end_round: ``stats`` derives
        # the acceptance sums from them (each active round fixes accepted + 1 tokens, proposes gamma).
        self.read_back = {"decided": [1] * batch, "rounds": [0] * batch}

    @property
    def running(self) -> bool:
        return self.least_decided < self.total

    @property
    def furthest_cursor(self) -> int:
        """Host bound on every image's cursor at the start of a round (no read of its own): the largest
        fixed count of the last round's read, or of a sampler's prefill, clamped as ``cursor`` is."""
        return min(max(*self.read_back["decided"], self.least_decided), self.total - 1)

    @property
    def cursor(self) -> torch.Tensor:
        """(B,) index of each image's next token. Finished rows are parked at the last token, which keeps
        their positions inside the cache."""
        return self.decided.clamp(max=self.total - 1)

    def last_decided(self, cursor: torch.Tensor) -> torch.Tensor:
        """(B, 1, ...) the token before ``cursor``: the first input of the verify forward."""
        return take_at(self.tokens, cursor - 1)[:, None]

    def commit(
        self, cursor: torch.Tensor, drafts: torch.Tensor, final: torch.Tensor, accepted: torch.Tensor
    ) -> torch.Tensor:
        """Fix a verified round: the first ``accepted`` (B,) of ``drafts`` (B, gamma, ...), then ``final``
        (B, ...) (the residual or bonus token). Returns the round's tokens at cursor .. cursor + gamma
        (B, gamma + 1, ...), ``final`` at index ``accepted`` (what the drafter reads next)."""
        if self.round_count == 0:  # every image's fixed count before the first round (a sampler may prefill)
            self.start = self.least_decided
        active, rows = self.decided < self.total, self.rows
        new = torch.cat([drafts, final[:, None]], dim=1)
        new[rows, accepted] = final
        # All gamma + 1 tokens are written; those past ``accepted`` are rewritten by the row's next round
        # (which starts there) before anything reads them. A finished row writes past the image's end
        # (the buffer's last gamma + 1 slots, never read), so its tokens stay as they are.
        start = torch.where(active, cursor, self.total)
        self.tokens[rows[:, None], start[:, None] + self.steps] = new.to(self.tokens.dtype)
        self.forwards += 1
        self.round_count += 1
        self.rounds += active
        self.decided = torch.where(active, self.decided + accepted + 1, self.decided)
        return new

    def end_round(self, callback) -> bool:
        """After a commit: the round's one host read (every image's fixed count and rounds), then
        ``callback(step, total, tokens)`` with the tokens every image has fixed. True when sampling ends:
        every image is done, or the callback asked to stop (the tokens are then cut there)."""
        # One read: every image's fixed count and rounds (2 B numbers), so the statistics after the loop
        # need no read of their own.
        numbers = torch.cat([self.decided, self.rounds]).tolist()
        batch = len(numbers) // 2
        self.read_back = {"decided": numbers[:batch], "rounds": numbers[batch:]}
        done = self.least_decided = min(min(numbers[:batch]), self.total)
        if callback is not None and callback(done - 1, self.total, self.tokens[:, :done]) is False:
            self.tokens = self.tokens[:, :done]
            return True
        return not self.running

    def result(self) -> torch.Tensor:
        return self.tokens[:, : self.total]

    def stats(self) -> dict:
        """Host arithmetic on the last round's read (no read of its own)."""
        read = self.read_back
        rounds = sum(read["rounds"])
        # decided = start + the sum over its active rounds of (accepted + 1)
        accepted = sum(read["decided"]) - len(read["decided"]) * self.start - rounds
        proposed = self.gamma * rounds
        per_image = [r + 1 for r in read["rounds"]]  # prefill + verify rounds
        return {
            "forwards": self.forwards,
            "forwards_per_image": sum(per_image) / len(per_image),
            "tokens_per_forward": sum(self.total / f for f in per_image) / len(per_image),
            "acceptance_rate": accepted / max(proposed, 1),
            # tokens fixed per round and image: accepted drafts + the residual/bonus token
            "mean_accepted_length": (accepted + rounds) / max(rounds, 1),
        }
