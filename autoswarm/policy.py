"""The keep rule: when is a variant better than the best, given the measured noise?

A finished candidate with metric ``v`` is **kept** when it beats the current best
``b`` by more than the noise margin::

    improvement = b - v            (for a metric to minimise; v - b to maximise)
    margin      = max(min_delta, keep_sigmas × σ)
    keep  ⇔  improvement > margin

σ is the seed-to-seed standard deviation of the metric over the baseline repeats.
``keep_sigmas`` defaults to 2: a single run must beat the best by two standard
deviations of noise, which a pure-noise variant does with probability ≈ 8% (the
difference of two noisy runs has σ√2, and 2σ = 1.41·σ√2). ``b`` is the baseline's
mean at first, then the metric of the last kept variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autoswarm.analysis.noise import Baseline
from autoswarm.types import Direction, Experiment, Kind, Status


@dataclass(frozen=True)
class Best:
    """The best accepted variant so far."""

    value: float
    commit: str
    experiment_id: int


def margin(sigma: float, *, keep_sigmas: float, min_delta: float) -> float:
    return max(min_delta, keep_sigmas * sigma)


def judge(
    value: float,
    best: float,
    *,
    sigma: float,
    direction: Direction,
    keep_sigmas: float,
    min_delta: float,
) -> Status:
    """KEEP or DISCARD for a finished candidate with a finite metric."""
    gain = direction.improvement(best, value)
    return (
        Status.KEEP
        if gain > margin(sigma, keep_sigmas=keep_sigmas, min_delta=min_delta)
        else Status.DISCARD
    )


def best_of(
    experiments: Sequence[Experiment], metric: str, baseline: Baseline | None
) -> Best | None:
    """The last kept candidate, else the baseline (by its mean); None before any baseline result."""
    kept = [
        e
        for e in experiments
        if e.kind is not Kind.BASELINE and e.status is Status.KEEP and e.value(metric) is not None
    ]
    if kept:
        last = max(kept, key=lambda e: (e.finished_at or 0.0, e.id))
        value = last.meta.get("best_value", last.value(metric))
        return Best(value=float(value), commit=last.commit, experiment_id=last.id)
    if baseline is None or not baseline.values:
        return None
    first = min((e for e in experiments if e.kind is Kind.BASELINE), key=lambda e: e.id)
    return Best(value=baseline.mean, commit=baseline.commit, experiment_id=first.id)


__all__ = ["Best", "best_of", "judge", "margin"]
