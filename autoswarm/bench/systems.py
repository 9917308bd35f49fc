"""The systems benchmark: busy fraction and dispatch overhead with real processes.

A synthetic train.py that sleeps for the budget runs on N local slots for a fixed
time with the real scheduler, ledger, git snapshots and local backend, proposals
from ``random`` on the eight-knob ``wide`` objective (its neighbourhoods are large
enough that the proposer never runs dry and leaves slots idle, which would measure
the search space rather than the orchestrator). Two figures come out of the ledger:

* busy fraction: training-slot seconds used ÷ slot seconds available;
* dispatch overhead: for each slot, the gap between one experiment's process exit
  and the next experiment's process start on that slot (collecting the result,
  judging it, asking the proposer, committing, exporting the snapshot, starting
  the process): median and 95th percentile.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoswarm.backends.base import Backend
from autoswarm.backends.local import LocalBackend
from autoswarm.bench.objectives import OBJECTIVES
from autoswarm.bench.options import csv
from autoswarm.config import load_config, with_overrides
from autoswarm.ledger import Ledger
from autoswarm.outputs import status_record
from autoswarm.proposers.registry import make_proposer
from autoswarm.sandbox import view_of
from autoswarm.scheduler import Scheduler
from autoswarm.testing.synthetic import make_workspace
from autoswarm.workspace import Workspace


@dataclass(frozen=True)
class SystemsResult:
    backend: str
    slots: int
    budget_s: float
    duration_s: float
    experiments: int
    busy_fraction: float
    dispatch_median_ms: float
    dispatch_p95_ms: float


def dispatch_gaps(rows: list[tuple[int, float, float]]) -> list[float]:
    """Seconds between an experiment's end and the next start on the same slot."""
    by_slot: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for slot, start, end in rows:
        by_slot[slot].append((start, end))
    gaps = []
    for runs in by_slot.values():
        runs.sort()
        for (_, end), (nxt, _) in itertools.pairwise(runs):
            gaps.append(max(0.0, nxt - end))
    return gaps


BACKENDS = ("local", "ray")  # what the systems benchmark can run on


def run_local(
    slots: int,
    budget_s: float,
    duration_s: float,
    workdir: Path | None = None,
    *,
    backend: str = "local",
    final_runs: int | None = None,
) -> SystemsResult:
    """``slots`` slots of a sleeping train.py for ``duration_s`` seconds.

    ``backend`` is ``local`` (subprocesses) or ``ray`` (one slot actor per slot on a
    throw-away local Ray cluster with ``slots`` logical CPUs, started and stopped here).
    ``final_runs``: ``[run] final_runs`` (None: its default; 0 leaves out the end-of-run
    validation of the best, a phase on a few slots that a short run feels and a long
    one does not).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp, contextlib.ExitStack() as stack:
        root = make_workspace(
            Path(tmp) / "ws", train_py=OBJECTIVES["wide"].train_py(), budget=budget_s
        )
        cfg = with_overrides(
            load_config(root),
            budget=budget_s,
            timeout=budget_s + 60,
            time_limit=duration_s,
            strategy="random",
            workers=slots,
            final_runs=final_runs,
        )
        ws = Workspace(root, cfg)
        ledger = Ledger(ws.ledger_path)
        runner: Backend
        if backend == "ray":
            from autoswarm.backends.ray import RayBackend
            from autoswarm.testing.raycluster import LocalRayCluster

            cluster = stack.enter_context(LocalRayCluster.start(num_cpus=slots))
            runner = RayBackend(
                cfg.pool.slot_tiers(slots), address=cluster.address, log_max_bytes=100_000
            )
            stack.callback(runner.close)
        else:
            # As the product runs them: in the run's sandbox where bubblewrap works.
            runner = LocalBackend(
                slots,
                gpus=[],
                log_max_bytes=100_000,
                sandbox=view_of(cfg.sandbox, workspace=ws.root, state_dir=ws.state_dir),
            )
        sched = Scheduler(
            workspace=ws,
            ledger=ledger,
            backend=runner,
            proposer=make_proposer(cfg),
            config=cfg,
            environ={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
        )
        out = sched.run(tag="systems")
        exps = ledger.experiments(out.run.id)
        st = status_record(ledger, out.run, max(e.finished_at or 0.0 for e in exps))
        ledger.close()
    rows = [
        (e.slot, e.started_at, e.finished_at)
        for e in exps
        if e.slot is not None and e.started_at is not None and e.finished_at is not None
    ]
    gaps = sorted(dispatch_gaps(rows)) or [0.0]
    p95 = gaps[min(len(gaps) - 1, round(0.95 * (len(gaps) - 1)))]
    return SystemsResult(
        backend=backend,
        slots=slots,
        budget_s=budget_s,
        duration_s=duration_s,
        experiments=len(rows),
        busy_fraction=float(st["busy_fraction"]),
        dispatch_median_ms=1000 * statistics.median(gaps),
        dispatch_p95_ms=1000 * p95,
    )


def backends_of(text: str) -> list[str]:
    """The backends of ``--backend`` (comma-separated), or a ValueError."""
    backends = csv(text)
    if not backends or not set(backends) <= set(BACKENDS):
        raise ValueError(f"--backend {text!r}: use local, ray or local,ray")
    return backends


def run_all(
    slots: Sequence[int],
    budget_s: float,
    duration_s: float,
    backends: Sequence[str] = ("local",),
    on_result: Callable[[SystemsResult], None] | None = None,
    final_runs: int | None = None,
) -> list[SystemsResult]:
    """:func:`run_local` for every slot count on every backend, one after the other."""
    results = []
    for count in slots:
        for which in backends:
            sr = run_local(count, budget_s, duration_s, backend=which, final_runs=final_runs)
            if on_result is not None:
                on_result(sr)
            results.append(sr)
    return results


def progress(r: SystemsResult) -> str:
    """One line per finished run (the command prints it to stderr)."""
    return f"{r.backend} ×{r.slots}: {r.experiments} experiments, busy {100 * r.busy_fraction:.1f}%"


def section(backends: Sequence[str], slots: Sequence[str], budget_s: float) -> str:
    """The block of the markdown file a table goes into: one per backends, slots and budget."""
    return f"systems-{'+'.join(backends)}-{'+'.join(slots)}x{budget_s:g}s"


def markdown(results: list[SystemsResult]) -> str:
    head = (
        "| backend | slots | budget (s) | duration (s) | experiments | busy fraction "
        "| dispatch median (ms) | dispatch p95 (ms) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    return (
        head
        + "\n".join(
            f"| {r.backend} | {r.slots} | {r.budget_s:g} | {r.duration_s:g} | {r.experiments} "
            f"| {100 * r.busy_fraction:.1f}% | {r.dispatch_median_ms:.1f} | {r.dispatch_p95_ms:.1f} |"
            for r in results
        )
        + "\n"
    )


__all__ = [
    "BACKENDS",
    "SystemsResult",
    "backends_of",
    "dispatch_gaps",
    "markdown",
    "progress",
    "run_all",
    "run_local",
    "section",
]
