"""The best variant of a run, as the ledger records it.

The keep rule itself is :mod:`autoswarm.judge` (pure decisions on numbers). This
module answers one question from ledger rows alone, for the scheduler on start and
resume and for ``status``: what is the bar a candidate must beat now?

The bar is the last kept candidate whose keep still stands (a revoked keep is
``Status.REVOKED``, not ``KEEP``), valued at the mean of its *fresh* runs — those
measured with seeds chosen after it was selected, see ``evidence["fresh"]`` — never
the screening run that selected it (biased by the selection). Before any keep it is
the baseline, at the mean of its repeats.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from autoswarm.analysis.noise import Baseline
from autoswarm.types import Experiment, Kind, Status


@dataclass(frozen=True)
class Best:
    """The bar: the best standing variant, its value and the runs that value is the mean of."""

    value: float
    commit: str
    experiment_id: int
    runs: int = 1
    values: tuple[float, ...] = ()

    @property
    def samples(self) -> tuple[float, ...]:
        """Its runs (``(value,) * runs`` for a record that kept only the mean)."""
        return self.values or (self.value,) * max(1, self.runs)


def bar_values(e: Experiment, metric: str) -> tuple[float, ...]:
    """A kept candidate's runs that make its bar: its fresh runs, else all of them."""
    if e.evidence is not None:
        for vs in (e.evidence.fresh, e.evidence.values):
            if vs:
                return vs
    v = e.value(metric)
    return (v,) if v is not None else ()


def kept_chain(experiments: Sequence[Experiment], metric: str) -> list[Experiment]:
    """Kept candidates whose keep stands, in the order they were kept."""
    kept = [
        e
        for e in experiments
        if e.kind is Kind.CANDIDATE and e.status is Status.KEEP and bar_values(e, metric)
    ]
    return sorted(
        kept, key=lambda e: (e.kept_at if e.kept_at is not None else e.finished_at or 0.0, e.id)
    )


def best_of(
    experiments: Sequence[Experiment], metric: str, baseline: Baseline | None
) -> Best | None:
    """The last standing keep, else the baseline (by its mean); None before any baseline result."""
    chain = kept_chain(experiments, metric)
    if chain:
        last = chain[-1]
        vs = bar_values(last, metric)
        return Best(
            value=statistics.fmean(vs),
            commit=last.commit,
            experiment_id=last.id,
            runs=len(vs),
            values=vs,
        )
    if baseline is None or not baseline.values:
        return None
    first = min((e for e in experiments if e.kind is Kind.BASELINE), key=lambda e: e.id)
    return Best(
        value=baseline.mean,
        commit=baseline.commit,
        experiment_id=first.id,
        runs=len(baseline.values),
        values=baseline.values,
    )


__all__ = ["Best", "bar_values", "best_of", "kept_chain"]
