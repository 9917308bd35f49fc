"""Noise of the metric, measured on repeated runs of the same files.

The baseline is run ``baseline_repeats`` times with different seeds; the sample
standard deviation of its metric is the seed-to-seed noise σ that the keep rule
(see :mod:`autoswarm.policy`) uses as its yardstick.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autoswarm.types import Experiment, Kind, Status


@dataclass(frozen=True)
class Baseline:
    """The unmodified files' metric over its repeats."""

    commit: str
    values: tuple[float, ...]
    expected: int  # how many repeats the run asked for

    @property
    def complete(self) -> bool:
        return len(self.values) >= self.expected

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sigma(self) -> float:
        """Sample standard deviation (ddof=1); 0.0 with a single run."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def baseline_of(experiments: Sequence[Experiment], metric: str, expected: int) -> Baseline | None:
    """The baseline so far, or None if no baseline experiment exists yet."""
    rows = [e for e in experiments if e.kind is Kind.BASELINE]
    if not rows:
        return None
    values = tuple(
        v for e in rows if e.status is Status.KEEP and (v := e.value(metric)) is not None
    )
    return Baseline(commit=rows[0].commit, values=values, expected=expected)


# Statuses whose value is a measurement of its commit (the noise model's input).
MEASURED = (Status.KEEP, Status.DISCARD, Status.PENDING, Status.REVOKED)


def measured(kind: Kind, status: Status) -> bool:
    """Whether a finished row with a value is a measurement of its commit (noise input):
    any run in :data:`MEASURED`, except a baseline repeat left out as slowed by load."""
    return status in MEASURED and (kind is not Kind.BASELINE or status is Status.KEEP)


def groups_of(
    experiments: Sequence[Experiment], metric: str, base_commit: str
) -> list[list[float]]:
    """Every commit's measured values, the baseline's first (its repeats that count).

    The input of :func:`autoswarm.judge.noise_model`: a baseline repeat left out as
    slowed by other load (DISCARD) does not count; a candidate's screen, confirmations
    and re-measurements do (all are measurements of the same files).
    """
    return group_values(
        (
            (e.id, e.commit, v)
            for e in experiments
            if e.commit and measured(e.kind, e.status) and (v := e.value(metric)) is not None
        ),
        base_commit,
    )


def group_values(values: Iterable[tuple[int, str, float]], base_commit: str) -> list[list[float]]:
    """(id, commit, value) triples grouped by commit in id order, the baseline's first."""
    groups: dict[str, list[float]] = {base_commit: []}
    for _, commit, v in sorted(values):
        groups.setdefault(commit, []).append(v)
    return [groups.pop(base_commit), *groups.values()]


__all__ = ["MEASURED", "Baseline", "baseline_of", "group_values", "groups_of", "measured"]
