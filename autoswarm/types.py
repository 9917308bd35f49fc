"""Records and states that flow between Proposer, Scheduler, Backend and Ledger.

Everything here is a frozen dataclass or an Enum: records are facts about the
past, so nobody mutates them; a new state means a new record (``dataclasses.replace``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})


# ---------------------------------------------------------------------------
# States


class Status(enum.Enum):
    """Where an experiment is in its life. Finished states change only by a later verdict: a keep can be revoked (KEEP -> REVOKED), a slowed baseline repeat discarded."""

    QUEUED = (
        "queued"  # recorded, waiting for a slot (also: re-queued after a crash of the orchestrator)
    )
    RUNNING = "running"  # handed to a backend
    PENDING = "pending"  # ran and has a metric; the verdict waits (baseline incomplete)
    KEEP = "keep"  # finished, better than the best by more than the noise margin
    DISCARD = "discard"  # finished, not better enough
    CRASH = "crash"  # finished without a usable metric (exit code, timeout, NaN, OOM, syntax)
    REJECTED = "rejected"  # never ran: edits a locked file, does not apply, duplicate
    INTERRUPTED = "interrupted"  # killed by Ctrl-C; re-queued by `autoswarm run --resume`
    REVOKED = "revoked"  # was kept, but its re-measured evidence no longer supports the keep

    def is_finished(self) -> bool:
        """True for states a resumed run must never run again."""
        return self in _FINISHED

    @property
    def tsv(self) -> str:
        """The status word autoresearch's results.tsv uses (keep|discard|crash)."""
        if self in (Status.KEEP, Status.DISCARD):
            return self.value
        if self is Status.REVOKED:
            return "discard"
        return "crash"


# Asked of every row, often (results.tsv, the live view, a resume): a set, made once.
_FINISHED = frozenset((Status.KEEP, Status.DISCARD, Status.CRASH, Status.REJECTED, Status.REVOKED))


class Kind(enum.Enum):
    """Why an experiment exists."""

    BASELINE = "baseline"  # the unmodified editable files, repeated to measure noise
    CANDIDATE = "candidate"  # a proposer's variant
    CONFIRM = "confirm"  # a re-run of a candidate with another seed


class Direction(enum.Enum):
    """Whether a smaller or a larger metric is better."""

    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"

    def improvement(self, best: float, value: float) -> float:
        """How much better ``value`` is than ``best`` (positive = better)."""
        return best - value if self is Direction.MINIMIZE else value - best


# ---------------------------------------------------------------------------
# What a proposer hands the scheduler


@dataclass(frozen=True, kw_only=True)
class Proposal:
    """A variant to try: new contents for some editable files, relative to ``parent``.

    Attributes:
        description: one line for humans and results.tsv, e.g. ``MATRIX_LR 0.04 -> 0.05``.
        files: path (relative to the workspace) -> full new text. Paths not listed keep
            the parent's contents.
        parent: commit the variant is based on (normally the current best).
        proposer: name of the proposer that made it.
        meta: free-form, JSON-serialisable facts the proposer wants recorded (knob
            values, design-point coordinates, token counts, ...).
    """

    description: str
    files: Mapping[str, str]
    parent: str
    proposer: str
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


# ---------------------------------------------------------------------------
# What the scheduler hands a backend, and what comes back


@dataclass(frozen=True, kw_only=True)
class Job:
    """One run of train.py in its own snapshot directory."""

    experiment_id: int
    workdir: Path
    argv: tuple[str, ...]
    env: Mapping[str, str]
    timeout_s: float
    slot: int
    log_path: Path
    budget_s: float
    # Name of the slot's hardware tier ([[pool.tiers]]); "" = the implicit local tier.
    tier: str = ""


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a backend observed about one finished job. Failures are fields, not errors."""

    experiment_id: int
    exit_code: int | None  # None when the process never started
    timed_out: bool
    started_at: float
    finished_at: float
    log_path: Path
    metrics: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    error: str = ""  # backend-side failure (could not start, lost worker, ...)
    cancelled: bool = False  # killed on purpose (Ctrl-C, shutdown)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


# ---------------------------------------------------------------------------
# What the ledger stores


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """One row of the ledger: a proposal, where it ran, and what came of it."""

    id: int
    run_id: int
    kind: Kind
    status: Status
    parent: str
    commit: str
    description: str
    proposer: str
    diff: str = ""
    seed: int = 0
    slot: int | None = None
    metrics: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    log_path: str = ""
    reason: str = ""
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    tier: str = ""  # the hardware tier it ran on ([[pool.tiers]] name); "" = implicit local tier

    def value(self, metric: str) -> float | None:
        """The metric's value, or None when missing or not finite."""
        v = self.metrics.get(metric)
        if v is None or not math.isfinite(v):
            return None
        return float(v)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)


__all__ = [
    "Direction",
    "Experiment",
    "Job",
    "Kind",
    "Proposal",
    "RunResult",
    "Status",
]
