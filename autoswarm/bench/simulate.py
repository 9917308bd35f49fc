"""The search benchmark: real scheduler and proposers, simulated training on a fake clock.

Everything but the training is real: the workspace is a git repository, every
variant becomes a commit, the ledger is SQLite, the proposer is the product's.
Only the backend is :class:`~autoswarm.backends.fake.FakeBackend`: a job "runs"
for budget + overhead seconds of *simulated* time and reports what the synthetic
objective's train.py would print. So eight hours on sixteen GPUs take seconds.

Per run it records the trace of the *true* (noise-free) value of the branch head
(the scheduler's ``best``) against simulated wall-clock, from which
:mod:`autoswarm.bench.report` computes time-to-target, speedup and GPU-hours. The
head is watched, not rebuilt from the ledger's keep rows: a keep rule may move the
branch back (revoke a keep), and the trace must show that. Each keep is also
checked against the truth: a keep whose true value is not better than the true
value of the best it replaced is a *false keep* (on the ``null`` objective, every
keep is one).
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoswarm.backends.fake import FakeBackend, Outcome
from autoswarm.bench.objectives import Objective
from autoswarm.clock import FakeClock
from autoswarm.config import load_config, with_overrides
from autoswarm.knobs import knobs_of
from autoswarm.ledger import Ledger
from autoswarm.outputs import status_record
from autoswarm.proposers.registry import make_proposer
from autoswarm.scheduler import Scheduler
from autoswarm.testing.synthetic import make_workspace
from autoswarm.types import Experiment, Job, Kind
from autoswarm.workspace import Workspace

# Verdict words of a judged candidate (by value: a rule may add states such as "revoked").
_JUDGED = ("keep", "discard", "revoked")
_EPS = 1e-12


@dataclass(frozen=True)
class SimResult:
    """One simulated run."""

    objective: str
    strategy: str
    slots: int
    rep: int
    horizon_s: float
    experiments: int
    busy_fraction: float
    best_measured: float
    best_true: float
    baseline_true: float
    trace: tuple[tuple[float, float], ...]  # (seconds since start, true value of the head)
    real_seconds: float  # how long the simulation itself took
    # What the noise benchmark (issue 13) needs; defaults keep hand-made results short.
    noise: float = 0.0  # the objective's base σ (the baseline's seed noise)
    reported_true: float = math.nan  # true value of the best status_record reports
    reported_se: float = math.nan  # the standard error status_record gives with it
    candidates: int = 0  # candidates judged: final keep or discard, plus any revoked
    keeps: int = 0  # candidates kept (revoked ones included)
    false_keeps: int = 0  # keeps whose true value is not better than the best they replaced
    revoked: int = 0
    heads: tuple[tuple[float, int, float], ...] = ()  # (seconds, experiment id, true value)

    def time_to(self, target: float) -> float | None:
        """First simulated second at which the head's true value reached ``target``."""
        for t, v in self.trace:
            if v <= target + _EPS:
                return t
        return None

    def time_to_end(self, target: float) -> float | None:
        """First simulated second after which the head's true value stayed at or below
        ``target`` until the end; None if it ends above it (see :func:`time_to_stay`)."""
        return time_to_stay(self.trace, target)


def time_to_stay(trace: Sequence[tuple[float, float]], target: float) -> float | None:
    """When a trace of (time, true value of the head) reached ``target`` for good.

    The head counts as having reached the target only if its *final* true value is at
    or below it; the time is the start of the last stretch it spent there (a keep that
    is revoked, or a branch that moves back, restarts the clock).
    """
    since: float | None = None
    for t, v in trace:
        if v <= target + _EPS:
            if since is None:
                since = t
        else:
            since = None
    return since


@dataclass(frozen=True)
class KeepCheck:
    """One keep, against the truth."""

    experiment_id: int
    at: float  # seconds since start
    replaced_true: float  # true value of the head it replaced
    true: float  # its own true value

    @property
    def false(self) -> bool:
        """Not better than what it replaced (lower is better; equal is not better)."""
        return not self.true < self.replaced_true - _EPS


def check_keeps(
    heads: Sequence[tuple[float, int, float]],
    kept: Mapping[int, tuple[float, float]],
    baseline_true: float,
) -> list[KeepCheck]:
    """Each keep with the true value of the head it replaced.

    ``heads`` is the watched head: (time, experiment id, true value) at each change;
    ``kept`` maps every kept candidate (revoked ones too) to (time kept, true value).
    A keep replaced the head seen just before the head first became it; a keep never
    seen as the head (superseded at the same instant) replaced the last other head
    at or before its time (the baseline when there is none).
    """
    checks: dict[int, KeepCheck] = {}
    seen: set[int] = set()
    for i, (t, eid, v) in enumerate(heads):
        if eid in kept and eid not in seen and i > 0:
            checks[eid] = KeepCheck(eid, t, heads[i - 1][2], v)
        seen.add(eid)
    for eid, (t, v) in kept.items():
        if eid not in checks:
            before = [h[2] for h in heads if h[0] <= t + _EPS and h[1] != eid]
            checks[eid] = KeepCheck(eid, t, before[-1] if before else baseline_true, v)
    return sorted(checks.values(), key=lambda c: (c.at, c.experiment_id))


class _Head:
    """Watches the scheduler's best (the branch head) and notes each change of it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sched: Scheduler | None = None
        self.log: list[tuple[float, int]] = []  # (clock time, experiment id)

    def __call__(self) -> None:
        best = self.sched.best if self.sched is not None else None
        if best is not None and (not self.log or self.log[-1][1] != best.experiment_id):
            self.log.append((self.clock.now(), best.experiment_id))


class _WatchedClock(FakeClock):
    """A fake clock that looks at the head before time moves on: every change of the
    head is seen at the simulated instant it happened."""

    watch: Callable[[], None] | None = None

    def sleep(self, seconds: float) -> None:
        if self.watch is not None:
            self.watch()
        super().sleep(seconds)

    def advance_to(self, t: float) -> None:
        if self.watch is not None:
            self.watch()
        super().advance_to(t)


class _WatchedLedger(Ledger):
    """The ledger, looking at the head before each write (two keeps decided at the same
    instant are both seen)."""

    watch: Callable[[], None] | None = None

    def add_experiment(self, *args: Any, **kwargs: Any) -> Experiment:
        if self.watch is not None:
            self.watch()
        return super().add_experiment(*args, **kwargs)

    def finish(self, *args: Any, **kwargs: Any) -> Experiment:
        if self.watch is not None:
            self.watch()
        return super().finish(*args, **kwargs)


def _outcome(objective: Objective, budget_s: float, overhead_s: float) -> Callable[[Job], Outcome]:
    def outcome(job: Job) -> Outcome:
        text = (job.workdir / "train.py").read_text()
        values = {name: k.value for name, k in knobs_of({"train.py": text}).items()}
        variant = hashlib.sha256(text.encode()).hexdigest()[:16]
        v = objective.measure(values, int(job.env["AUTOSWARM_SEED"]), variant)
        if v is None:  # crashes fail fast, at start-up
            return Outcome(duration=overhead_s, exit_code=1, log="loss is nan: diverged\n")
        return Outcome(
            duration=budget_s + overhead_s, metrics={"val_bpb": v, "peak_vram_mb": 1024.0}
        )

    return outcome


def simulate(
    objective: Objective,
    strategy: str,
    slots: int,
    *,
    rep: int = 0,
    horizon_s: float = 8 * 3600.0,
    budget_s: float = 300.0,
    overhead_s: float = 30.0,
    workdir: Path | None = None,
) -> SimResult:
    """Run ``strategy`` on ``slots`` simulated slots for ``horizon_s`` simulated seconds."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = make_workspace(Path(tmp) / "ws", train_py=objective.train_py(), budget=budget_s)
        cfg = with_overrides(
            load_config(root),
            budget=budget_s,
            timeout=4 * budget_s,
            time_limit=horizon_s,
            strategy=strategy,
            workers=slots,
            seed=42 + 1000 * rep,  # measurement noise and the proposer's RNG differ per repetition
        )
        clock = _WatchedClock()
        t0 = clock.now()
        ws = Workspace(root, cfg)
        ledger = _WatchedLedger(ws.ledger_path)
        backend = FakeBackend(slots, clock, _outcome(objective, budget_s, overhead_s))
        proposer = make_proposer(cfg, state_dir=None)
        head = _Head(clock)
        sched = Scheduler(
            workspace=ws,
            ledger=ledger,
            backend=backend,
            proposer=proposer,
            config=cfg,
            clock=clock,
            on_change=head,
        )
        head.sched = sched
        clock.watch = ledger.watch = head
        out = sched.run(tag=f"bench-{rep}")
        head()
        exps = ledger.experiments(out.run.id)
        status = status_record(ledger, out.run, clock.now())
        ledger.close()

    by_id = {e.id: e for e in exps}

    def true_of(e: Experiment | None) -> float:
        knobs = dict(objective.start) if e is None else dict(e.knobs or {})
        if e is not None and not knobs and e.kind is Kind.BASELINE:
            knobs = dict(objective.start)
        v = objective.true_value(knobs)
        return float("inf") if v is None else v

    baseline_true = true_of(None)
    heads = tuple((t - t0, eid, true_of(by_id.get(eid))) for t, eid in head.log)
    if not heads:  # no baseline result at all: the base commit is the head
        heads = ((0.0, 0, baseline_true),)
    judged = [e for e in exps if e.kind is Kind.CANDIDATE and e.status.value in _JUDGED]
    kept = {
        e.id: ((e.kept_at if e.kept_at is not None else e.finished_at or t0) - t0, true_of(e))
        for e in judged
        if e.status.value in ("keep", "revoked") or e.kept_at is not None
    }
    checks = check_keeps(heads, kept, baseline_true)
    best = status["best"]
    best_measured = best["val_bpb"] if best["val_bpb"] is not None else float("nan")
    reported = by_id.get(best["id"]) if best["id"] is not None else None
    return SimResult(
        objective=objective.name,
        strategy=strategy,
        slots=slots,
        rep=rep,
        horizon_s=horizon_s,
        experiments=len(exps),
        busy_fraction=float(status["busy_fraction"]),
        best_measured=float(best_measured),
        best_true=heads[-1][2],
        baseline_true=baseline_true,
        trace=tuple((t, v) for t, _, v in heads),
        real_seconds=time.perf_counter() - started,
        noise=objective.noise,
        reported_true=true_of(reported) if reported is not None else math.nan,
        reported_se=float(best["se"]) if best.get("se") else math.nan,
        candidates=len(judged),
        keeps=len(checks),
        false_keeps=sum(c.false for c in checks),
        revoked=sum(e.status.value == "revoked" for e in judged),
        heads=heads,
    )


__all__ = ["KeepCheck", "SimResult", "check_keeps", "simulate", "time_to_stay"]
