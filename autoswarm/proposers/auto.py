"""``auto``, the default strategy: factorial waves first, swarm moves when they run dry.

Chosen from the search benchmark (docs/benchmarks.md). Factorial waves are the
strategy that gets the most out of many slots: one wave measures the main effects
of several knobs at once and the winners are combined, so one round of the wave
clock moves several knobs where greedy moves one. But around a best where no
factor has a significant effect (the two-level steps straddle the optimum, or
there are only a few knobs) the design runs out of new points, and a run of pure
factorial waves would end or leave slots idle. ``auto`` then fills the free slots
with :class:`~autoswarm.proposers.knobs.SwarmProposer` moves (one-knob moves of
every size, improvements carried onto each new best), and the next new best
re-centres the factorial waves.

Near an optimum two-level designs stall without running dry: every design point
moves several knobs a full step, so each is worse than the best, while single small
moves would still find gains. So when the factorial half's last ``patience`` × slots
finished proposals brought no keep, ``auto`` gives it only a quarter of the slots
(enough to notice when its waves work again) and the swarm the rest; the factorial
half's next keep ends the stall. The quarter is counted over the slots handed out
since the stall began, not per call: with three slots or fewer (or when slots free one
at a time) every fourth slot is the factorial half's, so each half keeps getting one in
turn and a factorial keep can still end the stall.

Each proposal keeps the name of the proposer that made it (``factorial`` or
``swarm``) in the ledger, so the history says which half found what.
"""

from __future__ import annotations

import dataclasses

from autoswarm.proposers.base import Context, Proposer, fingerprint
from autoswarm.types import Experiment, Kind, Proposal, Status


class AutoProposer:
    """A primary proposer, with the free slots it leaves filled by a fallback."""

    name = "auto"

    def __init__(self, primary: Proposer, fallback: Proposer, *, patience: float = 2.0) -> None:
        self.primary = primary
        self.fallback = fallback
        self.patience = patience
        self._width = 1  # the most slots asked for at once
        self._dry_runs = 0  # the primary's finished proposals since its last keep
        self._stalled_slots = 0  # slots handed out while stalled (every fourth: primary)

    @property
    def parts(self) -> tuple[Proposer, ...]:
        """The proposers whose names appear on this one's proposals."""
        return (self.primary, self.fallback)

    @property
    def exhausted(self) -> bool:
        return self.primary.exhausted and self.fallback.exhausted

    @property
    def stalled(self) -> bool:
        """The primary's last ``patience`` × slots finished proposals found nothing."""
        return self._dry_runs >= self.patience * max(4, self._width)

    def observe(self, experiment: Experiment) -> None:
        self.primary.observe(experiment)
        self.fallback.observe(experiment)
        e = experiment
        if e.kind is Kind.CANDIDATE and e.proposer == self.primary.name:
            if e.status is Status.KEEP:
                self._dry_runs = 0
                self._stalled_slots = 0
            elif e.status is Status.DISCARD or e.status.failed:
                self._dry_runs += 1

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        self._width = max(self._width, n)
        # A stalled primary keeps a quarter of the slots (so it notices when its
        # designs work again), counted across calls so that one slot at a time (or three
        # in all) still reaches it; the fallback gets the rest first.
        share = n
        if self.stalled:
            before = self._stalled_slots
            self._stalled_slots += n
            share = (before + n + 3) // 4 - (before + 3) // 4
        out = self.primary.propose(ctx, share) if share > 0 else []
        if len(out) < n:
            # The fallback must not repeat what the primary just handed out.
            taken = {
                fingerprint({**ctx.best_files, **p.files})
                for p in out
                if p.parent == ctx.best_commit
            }
            more = self.fallback.propose(
                dataclasses.replace(ctx, seen=ctx.seen | taken), n - len(out)
            )
            out.extend(more)
        return out

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()


__all__ = ["AutoProposer"]
