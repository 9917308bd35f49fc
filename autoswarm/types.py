"""Records and states that flow between Proposer, Scheduler, Backend and Ledger.

Everything here is a frozen dataclass or an Enum: records are facts about the
past, so nobody mutates them; a new state means a new record (``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import statistics
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
    FORGED = "forged"  # printed a metric the locked evaluation of its model does not confirm

    @property
    def failed(self) -> bool:
        """True for runs without a value to decide on: a crash, a forged metric."""
        return self in (Status.CRASH, Status.FORGED)

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
_FINISHED = frozenset(
    (Status.KEEP, Status.DISCARD, Status.CRASH, Status.REJECTED, Status.REVOKED, Status.FORGED)
)


class Kind(enum.Enum):
    """Why an experiment exists."""

    BASELINE = "baseline"  # the unmodified editable files, repeated to measure noise
    CANDIDATE = "candidate"  # a proposer's variant
    CONFIRM = "confirm"  # a re-run of a candidate with another seed


class Purpose(enum.Enum):
    """Why a re-run (a ``Kind.CONFIRM`` row) exists: what its value is evidence for."""

    CONFIRM = "confirm"  # fresh seeds on the candidate's own tier, before its verdict
    VALIDATE = "validate"  # a promising screen re-run on the tier that decides (promoted)
    REPLICATE = "replicate"  # a kept variant re-measured, so its bar rests on fresh runs
    FINAL = "final"  # the end-of-run validation of the best ([run] final_runs)
    REPRODUCE = "reproduce"  # `autoswarm reproduce`

    @property
    def remeasures(self) -> bool:
        """True for re-measurements of a kept (or any finished) variant, after its verdict."""
        return self in (Purpose.REPLICATE, Purpose.FINAL, Purpose.REPRODUCE)


class Problem(enum.Enum):
    """Why a proposal may not run as it is (its human message is recorded beside it)."""

    OUTSIDE = "outside the workspace"  # a path that leaves the workspace
    LOCKED = "locked file"  # edits a [workspace] locked file
    NOT_EDITABLE = "non-editable file"  # changes a file that is not [workspace] editable
    SYNTAX = "syntax error"  # a Python file that does not compile: a crash, no slot spent
    DUPLICATE = "duplicate"  # the same code as an earlier experiment
    NO_CHANGE = "changes nothing"  # the files are the parent's

    @property
    def status(self) -> Status:
        """The row a proposal with this problem becomes: a syntax error is a crash (it has
        a commit and counts as a tried variant), every other problem a rejection."""
        return Status.CRASH if self is Problem.SYNTAX else Status.REJECTED


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
class Evaluation:
    """The locked evaluation of a job's trained model ([metric] evaluate), run after it.

    The backend starts ``argv`` once training has exited 0, in a fresh directory that
    holds only ``files`` (the run's locked files, written after training ended), with
    ``AUTOSWARM_RUN_DIR`` and ``AUTOSWARM_MODEL`` in its environment. In a sandbox it
    sees ``sealed`` (data the training process never sees) and the run directory
    read-only; its summary block is the metric (:mod:`autoswarm.evaluation`).
    """

    argv: tuple[str, ...]
    files: tuple[tuple[str, bytes], ...]  # (path relative to the workspace, contents)
    sealed: tuple[str, ...] = ()  # relative = inside the data cache ($AUTOSWARM_CACHE)
    timeout_s: float = 600.0
    model: str = "model.pt2"  # where train.py saves its model, relative to its run directory


@dataclass(frozen=True, kw_only=True)
class Job:
    """One run of train.py in its own snapshot directory (and its locked evaluation)."""

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
    evaluation: Evaluation | None = None  # None: the metric is what train.py prints

    @property
    def eval_log_path(self) -> Path:
        """Where the evaluation's output goes: beside the training log."""
        return self.log_path.with_name(self.log_path.stem + ".eval.log")


@dataclass(frozen=True, kw_only=True)
class EvalOutcome:
    """What the backend observed of a job's locked evaluation (failures are fields)."""

    exit_code: int | None  # None: it never started
    timed_out: bool
    seconds: float
    metrics: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    error: str = ""
    log_tail: str = ""
    cancelled: bool = False  # killed on purpose (Ctrl-C, shutdown)


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
    # The locked evaluation, when the job had one and training exited 0 (finished_at is
    # its end: the slot was busy until then).
    evaluation: EvalOutcome | None = None

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


# ---------------------------------------------------------------------------
# What the ledger stores


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """What a verdict was based on (:mod:`autoswarm.judge` makes it; recorded with the row)."""

    values: tuple[float, ...]  # every run of the variant on the deciding tier
    selected: tuple[float, ...]  # the runs that selected it (the screen)
    fresh: tuple[float, ...]  # runs with seeds chosen after it was selected
    bar: tuple[float, ...]  # the runs of the bar it was compared with
    bar_id: int  # the experiment that set that bar
    sigma: float  # pooled σ̂
    sigma_df: float
    own_sigma: float  # the variant's own sample σ (0 with one run)
    gain: float  # bar mean − variant mean (positive = better)
    se: float
    t: float
    df: float
    p: float
    alpha: float
    unstable: bool = False
    # How many runs the keep was decided on, once re-measurements joined ``values``.
    decided_runs: int | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def replicated(self) -> float | None:
        """Mean of the fresh runs: the variant's value as a new bar (None without any)."""
        return statistics.fmean(self.fresh) if self.fresh else None

    def with_run(self, value: float) -> Evidence:
        """The evidence after one more fresh run (a re-measurement of a keep)."""
        return dataclasses.replace(
            self,
            values=(*self.values, value),
            fresh=(*self.fresh, value),
            decided_runs=len(self.values) if self.decided_runs is None else self.decided_runs,
        )

    def as_meta(self) -> dict[str, object]:
        """The record as JSON (the ledger's ``evidence`` column, ``results --json``)."""

        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        out: dict[str, object] = {
            "runs": len(self.values),
            "values": list(self.values),
            "mean": self.mean,
            "selected": list(self.selected),
            "selected_mean": statistics.fmean(self.selected) if self.selected else None,
            "fresh": list(self.fresh),
            "replicated_mean": self.replicated,
            "best_before": statistics.fmean(self.bar) if self.bar else None,
            "best_runs": len(self.bar),
            "bar": list(self.bar),
            "bar_id": self.bar_id,
            "sigma": self.sigma,
            "sigma_df": num(self.sigma_df),
            "own_sigma": self.own_sigma,
            "gain": self.gain,
            "se": self.se,
            "z": num(self.t),
            "df": num(self.df),
            "p": self.p,
            "alpha": self.alpha,
            "unstable": self.unstable,
        }
        if self.decided_runs is not None:
            out["decided_runs"] = self.decided_runs
        return out

    @classmethod
    def from_meta(cls, d: Mapping[str, Any]) -> Evidence:
        """The record back from :meth:`as_meta` (missing numbers read as NaN).

        Written for speed (a resume reads one per judged row: 70,000 at 100,000 rows).
        """
        get = d.get
        decided = get("decided_runs")
        return cls(
            values=tuple(map(float, get("values") or ())),
            selected=tuple(map(float, get("selected") or ())),
            fresh=tuple(map(float, get("fresh") or ())),
            bar=tuple(map(float, get("bar") or ())),
            bar_id=int(get("bar_id") or 0),
            sigma=_num(get("sigma")),
            sigma_df=_num(get("sigma_df")),
            own_sigma=_num(get("own_sigma")),
            gain=_num(get("gain")),
            se=_num(get("se")),
            t=_num(get("z")),
            df=_num(get("df")),
            p=_num(get("p")),
            alpha=_num(get("alpha")),
            unstable=bool(get("unstable")),
            decided_runs=int(decided) if isinstance(decided, int) else None,
        )


def _num(v: object) -> float:
    """A recorded number back as a float; missing (None, a string) reads as NaN."""
    return float(v) if isinstance(v, int | float) else math.nan


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
    meta: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # the proposer's, only
    tier: str = ""  # the hardware tier it ran on ([[pool.tiers]] name); "" = implicit local tier
    # The scheduler's own facts (ledger columns, never keys of the proposer's ``meta``).
    # What was admitted: the full editable files' fingerprint, their normalised key
    # (autoswarm.dedup) and knob values; None on re-runs, which share their candidate's.
    fingerprint: str | None = None
    dedup: str | None = None
    knobs: Mapping[str, Any] | None = None
    duplicate_of: int | None = None  # a rejected duplicate: the experiment it repeats
    # A re-run (Kind.CONFIRM): why, of which experiment, and the tier it must run on.
    purpose: Purpose | None = None
    rerun_of: int | None = None
    pinned_tier: str | None = None  # baselines and re-runs: the tier they must run on
    z_before: float | None = None  # confirmation/validation: the screen's z that earned it
    screening: Evidence | None = None  # validation (and its candidate): the promoting screen
    # The verdict: its evidence, when it was kept or revoked, where it was validated.
    evidence: Evidence | None = None
    kept_at: float | None = None
    revoked_at: float | None = None
    validated_on: str | None = None  # a promoted candidate: the tier its verdict was on
    validated: bool = False  # the best whose end-of-run validation was queued

    def value(self, metric: str) -> float | None:
        """The metric's value, or None when missing or not finite."""
        v = self.metrics.get(metric)
        if v is None or not math.isfinite(v):
            return None
        return float(v)

    @property
    def is_remeasure(self) -> bool:
        """A re-run after its experiment's verdict (replicate, final validation, reproduce)."""
        return self.purpose is not None and self.purpose.remeasures

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)


__all__ = [
    "Direction",
    "EvalOutcome",
    "Evaluation",
    "Evidence",
    "Experiment",
    "Job",
    "Kind",
    "Problem",
    "Proposal",
    "Purpose",
    "RunResult",
    "Status",
]
