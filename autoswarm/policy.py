"""The keep rule: when is a variant better than the best, given the measured noise?

σ is the seed-to-seed standard deviation of the metric, measured on the baseline
repeats. A candidate measured ``n`` times (mean ``m``) is compared with the best,
measured ``n_b`` times (mean ``b``)::

    gain = b - m                         (m - b for a metric to maximise)
    se   = σ · sqrt(1/n + 1/n_b)         standard error of that difference
    keep     ⇔ gain > max(min_delta, keep_sigmas · se)
    confirm  ⇔ not keep, gain / se > confirm_sigmas and n < 1 + confirm_runs
    discard  otherwise

A *confirm* re-runs the same commit with the next seed and decides again on the
mean, so a promising gain inside the noise gets more evidence before it is kept,
and a lucky single run is not. With the defaults (keep_sigmas 2, confirm_sigmas 1,
confirm_runs 2, three baseline runs) a single run must beat the baseline mean by
2.31σ; after one confirmation by 1.83σ on the mean of two; after two by 1.63σ on
the mean of three. A variant with no real effect is kept with probability ≈ 2.5%
(one-sided 2 standard errors), however many runs it took.

Every verdict records its evidence (runs, values, mean, σ, z) under the experiment's
``meta["evidence"]``; the best's value is that mean and its ``n_b`` is its number of runs.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from autoswarm.analysis.noise import Baseline
from autoswarm.types import Direction, Experiment, Kind, Status


@dataclass(frozen=True)
class Best:
    """The best accepted variant so far: its mean metric over ``runs`` measurements."""

    value: float
    commit: str
    experiment_id: int
    runs: int = 1


class Decision(enum.Enum):
    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"


@dataclass(frozen=True)
class Evidence:
    """What a decision was based on (recorded with the experiment)."""

    values: tuple[float, ...]
    mean: float
    best: float
    best_runs: int
    sigma: float
    gain: float
    se: float
    z: float

    def as_meta(self) -> dict[str, object]:
        return {
            "runs": len(self.values),
            "values": list(self.values),
            "mean": self.mean,
            "best_before": self.best,
            "best_runs": self.best_runs,
            "sigma": self.sigma,
            "gain": self.gain,
            "se": self.se,
            "z": self.z if math.isfinite(self.z) else None,
        }


@dataclass(frozen=True, kw_only=True)
class KeepRule:
    """Parameters of the rule in the module docstring (from [run] in autoswarm.toml)."""

    direction: Direction = Direction.MINIMIZE
    keep_sigmas: float = 2.0
    min_delta: float = 0.0
    confirm_sigmas: float = 1.0
    confirm_runs: int = 2

    def decide(
        self, values: Sequence[float], best: Best, sigma: float
    ) -> tuple[Decision, Evidence]:
        n = len(values)
        mean = statistics.fmean(values)
        gain = self.direction.improvement(best.value, mean)
        se = sigma * math.sqrt(1.0 / n + 1.0 / max(1, best.runs))
        # With no measurable noise any gain is real, and so is any loss.
        z = gain / se if se > 0 else math.copysign(math.inf, gain) if gain else 0.0
        ev = Evidence(tuple(values), mean, best.value, best.runs, sigma, gain, se, z)
        if gain > max(self.min_delta, self.keep_sigmas * se):
            return Decision.KEEP, ev
        if n < 1 + self.confirm_runs and z > self.confirm_sigmas and gain > self.min_delta:
            return Decision.CONFIRM, ev
        return Decision.DISCARD, ev


def best_of(
    experiments: Sequence[Experiment], metric: str, baseline: Baseline | None
) -> Best | None:
    """The last kept candidate, else the baseline (by its mean); None before any baseline result."""
    kept = [
        e
        for e in experiments
        if e.kind is Kind.CANDIDATE and e.status is Status.KEEP and e.value(metric) is not None
    ]
    if kept:
        last = max(kept, key=lambda e: (float(e.meta.get("kept_at", e.finished_at or 0.0)), e.id))
        evidence = dict(last.meta.get("evidence") or {})
        value = evidence.get("mean") or last.value(metric) or 0.0
        runs = int(evidence.get("runs", 1))
        return Best(value=float(value), commit=last.commit, experiment_id=last.id, runs=runs)
    if baseline is None or not baseline.values:
        return None
    first = min((e for e in experiments if e.kind is Kind.BASELINE), key=lambda e: e.id)
    return Best(
        value=baseline.mean,
        commit=baseline.commit,
        experiment_id=first.id,
        runs=len(baseline.values),
    )


__all__ = ["Best", "Decision", "Evidence", "KeepRule", "best_of"]
