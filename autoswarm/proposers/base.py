"""The Proposer protocol: given what is known, suggest variants to run.

The scheduler calls :meth:`Proposer.propose` whenever slots are free, with ``n``
= the number of free slots, and :meth:`Proposer.observe` with every experiment that
reaches a final state (also, on ``--resume``, with every finished experiment of the
run, so a proposer rebuilds its state from the ledger).

Batch and asynchronous proposers fit the same three calls:

* a batch proposer (a factorial wave, Optuna's ask) returns up to ``n`` at once;
* an asynchronous one (an LLM) starts work in the background and returns ``[]``
  until something is ready; the scheduler asks again on its next turn.

``exhausted`` tells the scheduler that nothing more will ever come (a finished grid),
so the run can end once the running experiments finish.

Every implementation must pass ``autoswarm.testing.contract.ProposerContract``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from autoswarm.types import Direction, Experiment, Proposal


@dataclass(frozen=True, kw_only=True)
class Context:
    """What a proposer may know when it proposes. Read-only.

    Attributes:
        best_commit: commit of the best accepted files (the branch head's tree).
        best_files: contents of the editable files at ``best_commit``.
        best_value: metric of the best (None until the baseline has finished).
        noise_sigma: seed-to-seed σ of the metric measured on the baseline (None before).
        metric / direction: what is optimised.
        running: experiments in flight now, so parallel proposals can differ.
        history: finished experiments of this run, oldest first.
        seen: content fingerprints of every variant already tried or running (dedup).
        now: the scheduler's clock.
        tag: the run's tag (names per-run state such as an Optuna study).
    """

    best_commit: str
    best_files: Mapping[str, str]
    best_value: float | None
    noise_sigma: float | None
    metric: str
    direction: Direction
    running: Sequence[Experiment] = ()
    history: Sequence[Experiment] = ()
    seen: frozenset[str] = field(default_factory=frozenset)
    now: float = 0.0
    tag: str = ""


@runtime_checkable
class Proposer(Protocol):
    """Suggests variants; three methods and one property."""

    name: str

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        """Up to ``n`` proposals (fewer, or none, is fine: the scheduler asks again)."""
        ...

    def observe(self, experiment: Experiment) -> None:
        """Learn from an experiment in a final state (keep, discard, crash, rejected)."""
        ...

    @property
    def exhausted(self) -> bool:
        """True once this proposer will never propose anything again."""
        ...

    def close(self) -> None:
        """Release background resources (threads, clients). Idempotent."""
        ...


# ---------------------------------------------------------------------------
# Optional capabilities: members some proposers have, declared here so that the
# scheduler and the contract suites ask ``isinstance`` instead of probing with getattr.


@runtime_checkable
class IdlePolling(Protocol):
    """A proposer that waits on others (agent threads, outside submissions).

    ``idle_poll_s`` caps the scheduler's idle sleep between two empty ``propose`` calls
    (default 5 s), so work that arrives from elsewhere is picked up soon.
    """

    idle_poll_s: float


@runtime_checkable
class Composite(Protocol):
    """A proposer made of others (``auto``) that hands out their proposals under their names."""

    @property
    def parts(self) -> tuple[Proposer, ...]:
        """The proposers whose names may appear on this one's proposals."""
        ...


def fingerprint(files: Mapping[str, str]) -> str:
    """A content hash of a variant's files, used to skip duplicates."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode())
        h.update(b"\0")
        h.update(files[path].encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


__all__ = ["Composite", "Context", "IdlePolling", "Proposer", "fingerprint"]
