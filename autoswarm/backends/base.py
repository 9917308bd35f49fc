"""The Backend protocol: run jobs in slots and report what happened.

A backend knows nothing about search or keep/discard. The scheduler picks a free
slot and hands over a :class:`~autoswarm.types.Job`; the backend starts it and
later returns a :class:`~autoswarm.types.RunResult` from :meth:`Backend.poll`.
Failures of the experiment (exit codes, timeouts) are fields of the result.

Every implementation must pass ``autoswarm.testing.contract.BackendContract``.
"""

from __future__ import annotations

import queue
from typing import Protocol, TypeVar, runtime_checkable

from autoswarm.types import Job, RunResult


@runtime_checkable
class Backend(Protocol):
    """Runs jobs; five methods."""

    def capacity(self) -> int:
        """Number of slots; slot ids are ``0 .. capacity()-1``."""
        ...

    def submit(self, job: Job) -> str:
        """Start ``job`` in ``job.slot`` (which the scheduler guarantees is free).

        Returns an opaque handle (JSON text) that the ledger stores, so that after an
        orchestrator crash :meth:`cancel` can find and stop the job.
        """
        ...

    def poll(self, timeout: float) -> list[RunResult]:
        """Results of jobs that ended since the last call, waiting up to ``timeout`` seconds."""
        ...

    def cancel(self, experiment_id: int, handle: str | None = None) -> None:
        """Stop a job. With ``handle``, also a job started by an earlier process (an orphan).

        A cancelled job of this process still yields a result with ``cancelled=True``.
        """
        ...

    def close(self) -> None:
        """Kill whatever still runs and release resources. Idempotent."""
        ...


@runtime_checkable
class Reattachable(Protocol):
    """A backend whose jobs outlive the orchestrator (Ray detached actors, SkyPilot jobs).

    On ``--resume`` the scheduler offers every experiment the ledger shows as running
    to :meth:`reattach`; what is adopted reports through :meth:`Backend.poll` as if this
    process had started it, and what is not is cancelled and queued again.
    """

    def reattach(self, job: Job, handle: str) -> bool:
        """Adopt ``job`` (started earlier with ``handle``) in ``job.slot``; False if it is gone."""
        ...


# ---------------------------------------------------------------------------
# Conveniences for implementations

T = TypeVar("T")


def drain(results: queue.Queue[T], timeout: float) -> list[T]:
    """Everything in ``results``, waiting up to ``timeout`` seconds for the first item.

    The body of :meth:`Backend.poll` for a backend whose threads queue its results.
    """
    out: list[T] = []
    try:
        out.append(results.get(timeout=timeout) if timeout > 0 else results.get_nowait())
    except queue.Empty:
        return out
    while True:
        try:
            out.append(results.get_nowait())
        except queue.Empty:
            return out


__all__ = ["Backend", "Reattachable", "drain"]
