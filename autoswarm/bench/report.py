"""Turn simulated runs into the seed's table and a plot of true best against wall-clock.

The reference is ``greedy`` on one slot (autoresearch's sequential loop). For each
objective and repetition its *final true best* is the target; every other run is
timed to the first moment its best's true value reaches that target:

    speedup          = sequential time-to-target / this run's time-to-target
    GPU-hours ratio  = (slots × this run's time-to-target) / sequential time-to-target

so a speedup ≥ slots with a GPU-hours ratio ≤ 1 means the parallel search is no
less efficient per GPU-hour than the sequential one.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autoswarm.bench.simulate import SimResult


@dataclass(frozen=True)
class Row:
    objective: str
    strategy: str
    slots: int
    reps: int
    experiments: float
    per_hour: float
    busy_fraction: float
    best_measured: float
    best_true: float
    reached: int  # repetitions that reached the target
    time_to_target_h: float | None  # median over repetitions that reached it
    speedup: float | None
    gpu_hours_ratio: float | None


def summarize(results: Sequence[SimResult]) -> list[Row]:
    """One row per (objective, strategy, slots), aggregated over repetitions."""
    seq = {(r.objective, r.rep): r for r in results if r.strategy == "greedy" and r.slots == 1}
    groups: dict[tuple[str, str, int], list[SimResult]] = defaultdict(list)
    for r in results:
        groups[(r.objective, r.strategy, r.slots)].append(r)
    rows = []
    for (obj, strat, slots), rs in sorted(groups.items()):
        times, speedups, ratios = [], [], []
        for r in rs:
            ref = seq.get((obj, r.rep))
            if ref is None:
                continue
            target = ref.best_true
            t_seq = ref.time_to(target)
            t = r.time_to(target)
            if t is None or t_seq is None:
                continue
            times.append(t)
            if t > 0:
                speedups.append(t_seq / t)
                ratios.append(slots * t / t_seq if t_seq > 0 else float("inf"))
        rows.append(
            Row(
                objective=obj,
                strategy=strat,
                slots=slots,
                reps=len(rs),
                experiments=statistics.fmean(r.experiments for r in rs),
                per_hour=statistics.fmean(r.experiments / (r.horizon_s / 3600) for r in rs),
                busy_fraction=statistics.fmean(r.busy_fraction for r in rs),
                best_measured=statistics.fmean(r.best_measured for r in rs),
                best_true=statistics.fmean(r.best_true for r in rs),
                reached=len(times),
                time_to_target_h=statistics.median(times) / 3600 if times else None,
                speedup=statistics.median(speedups) if speedups else None,
                gpu_hours_ratio=statistics.median(ratios) if ratios else None,
            )
        )
    return rows


def _f(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def markdown_table(rows: Sequence[Row]) -> str:
    head = (
        "| objective | strategy | slots | reps | experiments | exp/hour | busy | best (measured) "
        "| best (true) | reached target | time to target (h) | speedup | GPU-h vs sequential |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r.objective} | {r.strategy} | {r.slots} | {r.reps} | {r.experiments:.0f} | {r.per_hour:.0f} "
        f"| {100 * r.busy_fraction:.1f}% | {r.best_measured:.4f} | {r.best_true:.4f} | {r.reached}/{r.reps} "
        f"| {_f(r.time_to_target_h, '.2f')} | {_f(r.speedup, '.1f')}× | {_f(r.gpu_hours_ratio, '.2f')}× |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def plot(results: Sequence[SimResult], path: Path) -> Path:
    """True best against wall-clock, one line per strategy and slot count (median over reps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = sorted({r.objective for r in results})
    fig, axes = plt.subplots(1, len(objectives), figsize=(6 * len(objectives), 4.5), squeeze=False)
    for ax, obj in zip(axes[0], objectives, strict=True):
        groups: dict[tuple[str, int], list[SimResult]] = defaultdict(list)
        for r in results:
            if r.objective == obj:
                groups[(r.strategy, r.slots)].append(r)
        for (strat, slots), rs in sorted(groups.items()):
            horizon = max(r.horizon_s for r in rs)
            grid = [horizon * i / 200 for i in range(201)]
            ys = [statistics.median(_value_at(r, t) for r in rs) for t in grid]
            ax.step([t / 3600 for t in grid], ys, where="post", label=f"{strat} ×{slots}")
        ax.set_title(f"objective: {obj}")
        ax.set_xlabel("wall-clock (hours)")
        ax.set_ylabel("true value of the best (lower is better)")
        ax.set_xscale("symlog", linthresh=0.25)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _value_at(r: SimResult, t: float) -> float:
    v = r.trace[0][1]
    for ts, val in r.trace:
        if ts <= t:
            v = val
        else:
            break
    return v


__all__ = ["Row", "markdown_table", "plot", "summarize"]
