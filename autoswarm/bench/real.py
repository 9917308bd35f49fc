"""The real-run comparison: strategies on a real template, same slots, same wall-clock.

Nothing is simulated. For each strategy a fresh workspace is made from a template
(``autoswarm init``), its data prepared, and ``autoswarm run`` trains for a fixed
wall-clock on N slots, one strategy after the other so they never share the CPU.
The figures come from each run's ``status --json`` and ``results --format json``:
experiments, throughput, busy fraction, baseline and best (measured; there is no
noise-free value of a real training run), keeps, and the first time each run's
best reached the final best of the reference strategy.

Every command goes through the CLI in a subprocess, exactly as a user types it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RealResult:
    strategy: str
    workspace: Path
    tag: str
    elapsed_s: float
    experiments: int
    per_hour: float
    busy_fraction: float
    baseline: float | None
    sigma: float | None
    best: float | None
    best_description: str
    keeps: int
    crashes: int
    trace: tuple[tuple[float, float], ...]  # (seconds since the run started, best so far)

    def time_to(self, target: float) -> float | None:
        for t, v in self.trace:
            if v <= target + 1e-12:
                return t
        return None


def _cli(*args: str, capture: bool = False) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "autoswarm", *args],
        check=True,
        text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    return proc.stdout if capture else ""


def run_real(
    strategy: str,
    root: Path,
    *,
    template: str = "cpu",
    workers: int = 2,
    budget_s: float = 60.0,
    time_limit: str = "20m",
) -> RealResult:
    """Make ``root/<strategy>`` from ``template`` and run ``strategy`` on it for ``time_limit``."""
    ws = root / strategy
    if not (ws / "autoswarm.toml").exists():
        _cli("init", str(ws), "--template", template)
    tag = f"real-{strategy}"
    _cli(
        "run",
        "--workspace",
        str(ws),
        "--workers",
        str(workers),
        "--budget",
        f"{budget_s:g}",
        "--time-limit",
        time_limit,
        "--strategy",
        strategy,
        "--tag",
        tag,
    )
    status = json.loads(
        _cli("status", "--workspace", str(ws), "--tag", tag, "--json", capture=True)
    )
    rows = json.loads(
        _cli("results", "--workspace", str(ws), "--tag", tag, "--format", "json", capture=True)
    )
    return summarize_run(strategy, ws, tag, status, rows)


def run_all(
    strategies: Sequence[str],
    root: Path,
    *,
    template: str = "cpu",
    workers: int = 2,
    budget_s: float = 60.0,
    duration_s: float = 1200.0,
    on_result: Callable[[RealResult], None] | None = None,
) -> list[RealResult]:
    """:func:`run_real` for each strategy in turn (they never share the CPU), under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    runs = []
    for strategy in strategies:
        rr = run_real(
            strategy,
            root,
            template=template,
            workers=workers,
            budget_s=budget_s,
            time_limit=f"{duration_s:g}s",
        )
        if on_result is not None:
            on_result(rr)
        runs.append(rr)
    return runs


def progress(r: RealResult) -> str:
    """One line per finished run (the command prints it to stderr)."""
    return f"{r.strategy}: {r.experiments} experiments, best {r.best}"


def summarize_run(
    strategy: str, ws: Path, tag: str, status: dict[str, Any], rows: list[dict[str, Any]]
) -> RealResult:
    """A :class:`RealResult` from a run's status record and result rows."""
    metric = str(status["metric"])
    start = min((r["started_at"] for r in rows if r.get("started_at") is not None), default=0.0)
    baseline = status["baseline"].get(metric)
    trace: list[tuple[float, float]] = []
    base_end = max(
        (r["finished_at"] or start for r in rows if r["kind"] == "baseline"), default=start
    )
    if baseline is not None:
        trace.append((base_end - start, float(baseline)))
    kept = sorted(
        (r for r in rows if r["kind"] == "candidate" and r["status"] == "keep"),
        key=lambda r: float(r["meta"].get("kept_at", r["finished_at"] or 0.0)),
    )
    for r in kept:
        ev = r["meta"].get("evidence") or {}
        value = ev.get("mean", r["metrics"].get(metric))
        if value is not None:
            t = float(r["meta"].get("kept_at", r["finished_at"] or start)) - start
            trace.append((t, min(float(value), trace[-1][1]) if trace else float(value)))
    counts = status["experiments"]
    return RealResult(
        strategy=strategy,
        workspace=ws,
        tag=tag,
        elapsed_s=float(status["elapsed_s"]),
        experiments=int(counts["total"]),
        per_hour=float(status["experiments_per_hour"] or 0.0),
        busy_fraction=float(status["busy_fraction"] or 0.0),
        baseline=baseline,
        sigma=status.get("noise_sigma"),
        best=status["best"].get(metric),
        best_description=str(status["best"].get("description") or ""),
        keeps=len(kept),
        crashes=int(counts["crash"]),
        trace=tuple(trace),
    )


def markdown(results: list[RealResult], reference: str = "greedy") -> str:
    """The comparison table; time-to-target is against ``reference``'s final best."""
    ref = next((r for r in results if r.strategy == reference), None)
    target = ref.best if ref is not None else None
    head = (
        "| strategy | minutes | experiments | exp/hour | busy | baseline | noise σ | best "
        f"| improvement | keeps | crashes | time to {reference}'s best (min) | best change |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in results:
        imp = (
            f"{100 * (r.baseline - r.best) / r.baseline:.2f}%"
            if r.baseline and r.best is not None
            else "—"
        )
        t = r.time_to(target) if target is not None else None
        lines.append(
            f"| {r.strategy} | {r.elapsed_s / 60:.1f} | {r.experiments} | {r.per_hour:.0f} "
            f"| {100 * r.busy_fraction:.1f}% | {_f(r.baseline)} | {_f(r.sigma)} | {_f(r.best)} "
            f"| {imp} | {r.keeps} | {r.crashes} | {'—' if t is None else f'{t / 60:.1f}'} "
            f"| {r.best_description or '(baseline)'} |"
        )
    return head + "\n".join(lines) + "\n"


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


__all__ = ["RealResult", "markdown", "progress", "run_all", "run_real", "summarize_run"]
