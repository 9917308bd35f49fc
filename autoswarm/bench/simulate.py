"""The search benchmark: real scheduler and proposers, simulated training on a fake clock.

Everything but the training is real: the workspace is a git repository, every
variant becomes a commit, the ledger is SQLite, the proposer is the product's.
Only the backend is :class:`~autoswarm.backends.fake.FakeBackend`: a job "runs"
for budget + overhead seconds of *simulated* time and reports what the synthetic
objective's train.py would print. So eight hours on sixteen GPUs take seconds.

Per run it records the trace of the *true* (noise-free) value of the best accepted
variant against simulated wall-clock, from which :mod:`autoswarm.bench.report`
computes time-to-target, speedup and GPU-hours.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
from autoswarm.types import Job, Kind, Status
from autoswarm.workspace import Workspace


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
    trace: tuple[tuple[float, float], ...]  # (seconds since start, true value of the best)
    real_seconds: float  # how long the simulation itself took

    def time_to(self, target: float) -> float | None:
        """First simulated second at which the best's true value reached ``target``."""
        for t, v in self.trace:
            if v <= target + 1e-12:
                return t
        return None


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
        clock = FakeClock()
        t0 = clock.now()
        ws = Workspace(root, cfg)
        ledger = Ledger(ws.ledger_path)
        backend = FakeBackend(slots, clock, _outcome(objective, budget_s, overhead_s))
        proposer = make_proposer(cfg, state_dir=None)
        sched = Scheduler(
            workspace=ws, ledger=ledger, backend=backend, proposer=proposer, config=cfg, clock=clock
        )
        out = sched.run(tag=f"bench-{rep}")
        exps = ledger.experiments(out.run.id)
        status = status_record(ledger, out.run, clock.now())
        ledger.close()

    def true_of(e_knobs: dict[str, object]) -> float:
        v = objective.true_value(e_knobs)  # type: ignore[arg-type]
        return float("inf") if v is None else v

    base_rows = [e for e in exps if e.kind is Kind.BASELINE and e.finished_at is not None]
    baseline_true = true_of(dict(objective.start))
    base_end = max((e.finished_at or t0 for e in base_rows), default=t0)
    trace = [(base_end - t0, baseline_true)]
    kept = sorted(
        (e for e in exps if e.kind is Kind.CANDIDATE and e.status is Status.KEEP),
        key=lambda e: float(e.meta.get("kept_at", e.finished_at or 0.0)),
    )
    best_measured = (
        status["best"]["val_bpb"] if status["best"]["val_bpb"] is not None else float("nan")
    )
    for e in kept:
        trace.append(
            (
                float(e.meta.get("kept_at", e.finished_at or 0.0)) - t0,
                true_of(dict(e.meta.get("knobs", {}))),
            )
        )
    return SimResult(
        objective=objective.name,
        strategy=strategy,
        slots=slots,
        rep=rep,
        horizon_s=horizon_s,
        experiments=len(exps),
        busy_fraction=float(status["busy_fraction"]),
        best_measured=float(best_measured),
        best_true=trace[-1][1],
        baseline_true=baseline_true,
        trace=tuple(trace),
        real_seconds=time.perf_counter() - started,
    )


__all__ = ["SimResult", "simulate"]
