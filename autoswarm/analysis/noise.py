"""Noise of the metric, measured on repeated runs of the same files.

The baseline is run ``baseline_repeats`` times with different seeds; the sample
standard deviation of its metric is the seed-to-seed noise σ that the keep rule
(see :mod:`autoswarm.policy`) uses as its yardstick.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
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


__all__ = ["Baseline", "baseline_of"]
