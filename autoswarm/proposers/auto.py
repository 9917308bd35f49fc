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

Each proposal keeps the name of the proposer that made it (``factorial`` or
``swarm``) in the ledger, so the history says which half found what.
"""

from __future__ import annotations

import dataclasses

from autoswarm.proposers.base import Context, Proposer, fingerprint
from autoswarm.types import Experiment, Proposal


class AutoProposer:
    """A primary proposer, with the free slots it leaves filled by a fallback."""

    name = "auto"

    def __init__(self, primary: Proposer, fallback: Proposer) -> None:
        self.primary = primary
        self.fallback = fallback

    @property
    def parts(self) -> tuple[Proposer, ...]:
        """The proposers whose names appear on this one's proposals."""
        return (self.primary, self.fallback)

    @property
    def exhausted(self) -> bool:
        return self.primary.exhausted and self.fallback.exhausted

    def observe(self, experiment: Experiment) -> None:
        self.primary.observe(experiment)
        self.fallback.observe(experiment)

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        out = self.primary.propose(ctx, n) if n > 0 else []
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
