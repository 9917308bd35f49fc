"""Turn simulated runs into the seed's table and a plot of true best against wall-clock.

The reference is ``greedy`` on one slot (autoresearch's sequential loop). For each
objective and repetition its *final true best* is the target; every other run is
timed to the first moment its best's true value reaches that target:

    speedup          = sequential time-to-target / this run's time-to-target
    GPU-hours ratio  = (slots × this run's time-to-target) / sequential time-to-target

so a speedup ≥ slots with a GPU-hours ratio ≤ 1 means the parallel search is no
less efficient per GPU-hour than the sequential one.

The noise table (issue 13, :func:`summarize_noise`) asks whether a result holds up:
what the run reports as its best against that best's true value, how many keeps were
false (not truly better than the best they replaced) per 1000 candidates judged, and
time-to-target on the *end* state: a run reached greedy@1's final true best only if
its branch head is still there when the run ends, and its time is the start of the
last stretch it stayed there (a keep later revoked, or a head that moved on to
something worse, does not count).
"""

from __future__ import annotations

import math
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


def _by_setting(
    results: Sequence[SimResult],
) -> tuple[dict[tuple[str, int], SimResult], dict[tuple[str, str, int], list[SimResult]]]:
    """The sequential reference per (objective, rep), and the runs per (objective, strategy, slots)."""
    seq = {(r.objective, r.rep): r for r in results if r.strategy == "greedy" and r.slots == 1}
    groups: dict[tuple[str, str, int], list[SimResult]] = defaultdict(list)
    for r in results:
        groups[(r.objective, r.strategy, r.slots)].append(r)
    return seq, groups


def summarize(results: Sequence[SimResult]) -> list[Row]:
    """One row per (objective, strategy, slots), aggregated over repetitions."""
    seq, groups = _by_setting(results)
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


@dataclass(frozen=True)
class NoiseRow:
    objective: str
    strategy: str
    slots: int
    reps: int
    candidates: float  # mean over repetitions
    reported_best: float  # mean of what status_record reports
    reported_true: float  # mean true value of the reported best
    gap_sigma: float  # mean |reported - true| in units of the objective's base σ
    gap_se: float  # mean |reported - true| in units of the se reported with the best
    keeps: int  # summed over repetitions
    false_keeps: int  # summed over repetitions
    false_per_1000: float | None  # false keeps per 1000 candidates judged (pooled)
    revoked: int
    reached: int  # repetitions whose head ends at or below the target
    time_to_target_h: float | None  # median over those, end-based
    speedup: float | None
    gpu_hours_ratio: float | None


def _end_times(ref: SimResult, r: SimResult) -> tuple[float, float] | None:
    """(sequential, this run's) end-based time to greedy@1's final true best, or None."""
    target = ref.best_true
    t_seq, t = ref.time_to_end(target), r.time_to_end(target)
    return None if t_seq is None or t is None else (t_seq, t)


def summarize_noise(results: Sequence[SimResult]) -> list[NoiseRow]:
    """One row per (objective, strategy, slots): results against the truth, end-based timing."""
    seq, groups = _by_setting(results)
    rows = []
    for (obj, strat, slots), rs in sorted(groups.items()):
        times, speedups, ratios = [], [], []
        for r in rs:
            ref = seq.get((obj, r.rep))
            pair = _end_times(ref, r) if ref is not None else None
            if pair is None:
                continue
            t_seq, t = pair
            times.append(t)
            if t > 0:
                speedups.append(t_seq / t)
                ratios.append(slots * t / t_seq if t_seq > 0 else float("inf"))
        candidates = sum(r.candidates for r in rs)
        false = sum(r.false_keeps for r in rs)
        gaps = [
            abs(r.best_measured - r.reported_true) / r.noise
            for r in rs
            if r.noise > 0 and math.isfinite(r.best_measured - r.reported_true)
        ]
        gaps_se = [
            abs(r.best_measured - r.reported_true) / r.reported_se
            for r in rs
            if r.reported_se > 0 and math.isfinite(r.best_measured - r.reported_true)
        ]
        rows.append(
            NoiseRow(
                objective=obj,
                strategy=strat,
                slots=slots,
                reps=len(rs),
                candidates=statistics.fmean(r.candidates for r in rs),
                reported_best=statistics.fmean(r.best_measured for r in rs),
                reported_true=statistics.fmean(r.reported_true for r in rs),
                gap_sigma=statistics.fmean(gaps) if gaps else math.nan,
                gap_se=statistics.fmean(gaps_se) if gaps_se else math.nan,
                keeps=sum(r.keeps for r in rs),
                false_keeps=false,
                false_per_1000=1000 * false / candidates if candidates else None,
                revoked=sum(r.revoked for r in rs),
                reached=len(times),
                time_to_target_h=statistics.median(times) / 3600 if times else None,
                speedup=statistics.median(speedups) if speedups else None,
                gpu_hours_ratio=statistics.median(ratios) if ratios else None,
            )
        )
    return rows


def noise_table(rows: Sequence[NoiseRow]) -> str:
    """The issue-13 table: reported against true, false keeps, end-based time-to-target."""
    head = (
        "| objective | strategy | slots | reps | candidates | reported best | true of reported "
        "| \\|gap\\| (σ) | \\|gap\\| (its se) | false keeps / 1000 candidates | reached target (end) "
        "| time to target (h) | speedup | GPU-h vs sequential |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        revoked = f", {r.revoked} revoked" if r.revoked else ""
        false = f"{_f(r.false_per_1000, '.1f')} ({r.false_keeps} of {r.keeps} keeps{revoked})"
        lines.append(
            f"| {r.objective} | {r.strategy} | {r.slots} | {r.reps} | {r.candidates:.0f} "
            f"| {r.reported_best:.4f} | {r.reported_true:.4f} | {r.gap_sigma:.1f} "
            f"| {r.gap_se:.1f} | {false} "
            f"| {r.reached}/{r.reps} | {_f(r.time_to_target_h, '.2f')} | {_f(r.speedup, '.1f')}× "
            f"| {_f(r.gpu_hours_ratio, '.2f')}× |"
        )
    return head + "\n".join(lines) + "\n"


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


__all__ = [
    "NoiseRow",
    "Row",
    "markdown_table",
    "noise_table",
    "plot",
    "summarize",
    "summarize_noise",
]
