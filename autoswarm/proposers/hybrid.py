"""``hybrid``: a code-editing model and a classical knob search share the slots.

Classical search beats a code-editing agent per GPU-hour on hyperparameters, and
the agent finds what no knob search can (a new layer, another optimizer); the
hybrid runs both. ``[llm] hybrid_ratio`` is the model's share of the slots: each
call aims at ``ratio`` of all slots (running + free) holding code proposals, and
whatever the model leaves unused (it answers asynchronously, or has given up)
goes to the knob search, so no slot waits for the model.

The knob search proposes around ``Context.best_files`` on every call, so each
newly kept code change re-centres it: its next moves are made on the new code
(and on any knobs the change introduced).

Proposals are recorded as ``hybrid`` with ``meta["via"]`` naming the half that
made them (``llm`` or the knob strategy); :meth:`HybridProposer.observe` hands each
half its own experiments under its own name again.
"""

from __future__ import annotations

import dataclasses

from autoswarm.proposers.base import Context, Proposer, fingerprint
from autoswarm.types import Experiment, Proposal


class HybridProposer:
    """Implements :class:`~autoswarm.proposers.base.Proposer` from a code and a knob proposer.

    Args:
        code: the code-editing proposer (``llm``, an agent).
        knobs: the knob proposer (greedy, swarm, factorial ...).
        ratio: the code proposer's share of the slots, in (0, 1).
    """

    name = "hybrid"

    def __init__(self, code: Proposer, knobs: Proposer, *, ratio: float = 0.5) -> None:
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"ratio must be strictly between 0 and 1, got {ratio}")
        self.code = code
        self.knobs = knobs
        self.ratio = ratio

    @property
    def exhausted(self) -> bool:
        return self.code.exhausted and self.knobs.exhausted

    def code_share(self, ctx: Context, n: int) -> int:
        """How many of the ``n`` free slots to offer the code proposer now."""
        if self.code.exhausted:
            return 0
        running_code = sum(1 for e in ctx.running if self._via(e) == self.code.name)
        target = round((len(ctx.running) + n) * self.ratio)
        return max(0, min(n, target - running_code))

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        if n <= 0:
            return []
        out = [
            self._tag(p, self.code.name) for p in self.code.propose(ctx, self.code_share(ctx, n))
        ]
        rest = n - len(out)
        if rest > 0 and not self.knobs.exhausted:
            taken = {
                fingerprint({**ctx.best_files, **p.files})
                for p in out
                if p.parent == ctx.best_commit
            }
            more = self.knobs.propose(dataclasses.replace(ctx, seen=ctx.seen | taken), rest)
            out.extend(self._tag(p, self.knobs.name) for p in more[:rest])
        return out

    def observe(self, experiment: Experiment) -> None:
        via = self._via(experiment)
        for half in (self.code, self.knobs):
            # Each half sees its own experiments under its own name (knob proposers learn
            # from their own keeps), and everyone else's as they are.
            if via == half.name:
                half.observe(dataclasses.replace(experiment, proposer=half.name))
            else:
                half.observe(experiment)

    def close(self) -> None:
        self.code.close()
        self.knobs.close()

    # -- helpers ------------------------------------------------------------------

    def _tag(self, p: Proposal, via: str) -> Proposal:
        return dataclasses.replace(p, proposer=self.name, meta={**dict(p.meta), "via": via})

    def _via(self, e: Experiment) -> str:
        if e.proposer == self.name:
            return str(e.meta.get("via", ""))
        return e.proposer


__all__ = ["HybridProposer"]
