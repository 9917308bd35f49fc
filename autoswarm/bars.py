"""The bars: what a result is compared with.

Each tier has its own baseline (its repeats and their σ), the run has one best (the
deciding tier's bar: the mean of the fresh runs of the last keep that stands, else the
baseline), and a result on a tier is judged against the best *as measured on that tier*
(:meth:`Bars.best_on`). The scheduler moves the bars as verdicts come in; this object
keeps them and answers from the run's rows (``rows``, the run state's).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from autoswarm.analysis.noise import Baseline, baseline_of
from autoswarm.config import Config
from autoswarm.policy import Best, best_of
from autoswarm.tiers import TierPlan
from autoswarm.types import Experiment, Kind, Status


class Bars:
    """Each tier's baseline, the best, and the best as measured on each tier (cached)."""

    def __init__(
        self,
        cfg: Config,
        tiers: TierPlan,
        tier_of: Callable[[Experiment], str],
        rows: Callable[[], Sequence[Experiment]],
    ) -> None:
        self.cfg = cfg
        self.metric = cfg.metric.name
        self.tiers = tiers
        self.tier_of = tier_of
        self.rows = rows
        self.baseline: Baseline | None = None  # the deciding tier's
        self.best: Best | None = None
        self.baselines: dict[str, Baseline | None] = {}
        # best_on per tier, valid while (version, best, baseline) hold; the version is
        # bumped on every keep, revocation and load (stale()).
        self._cache: dict[str, tuple[tuple[Any, ...], Best]] = {}
        self._version = 0

    def stale(self) -> None:
        """A keep was made or withdrawn: the bars per tier must be found again."""
        self._version += 1

    def refresh_baselines(self) -> None:
        """Each tier's own baseline; ``baseline`` is the deciding tier's."""
        rows: dict[str, list[Experiment]] = {t: [] for t in self.tiers.used}
        for e in self.rows():
            if e.kind is Kind.BASELINE:
                rows.setdefault(self.tier_of(e), []).append(e)
        n = self.cfg.run.baseline_repeats
        self.baselines = {t: baseline_of(r, self.metric, n) for t, r in rows.items()}
        self.baseline = self.baselines.get(self.tiers.deciding)

    def refresh_best(self, rows: Sequence[Experiment] | None = None) -> Best | None:
        """The best again from ``rows`` (default: all of the run's), as policy.best_of says."""
        self.stale()
        self.best = best_of(list(self.rows() if rows is None else rows), self.metric, self.baseline)
        return self.best

    def best_on(self, tier: str, *, without: frozenset[int] = frozenset()) -> Best:
        """The best as measured on ``tier``: the current best's runs there, else the last kept
        commit that ran there (a lagging reference: results then only screen), else the
        tier's baseline. ``without``: keeps (and their runs) that do not count."""
        base = self.baselines[tier]
        assert base is not None and base.values
        if without:
            return self._scan(tier, base, without)
        key = (self._version, self.best, base)
        cached = self._cache.get(tier)
        if cached is not None and cached[0] == key:
            return cached[1]
        found = self._scan(tier, base)
        self._cache[tier] = (key, found)
        return found

    def _scan(self, tier: str, base: Baseline, without: frozenset[int] = frozenset()) -> Best:
        # A bar is the mean of fresh runs (re-runs after the selection) where there are any.
        values: dict[str, list[float]] = {}
        fresh: dict[str, list[float]] = {}
        kept: list[Experiment] = []
        exps = list(self.rows())
        if without:
            exps = [e for e in exps if e.id not in without and (e.rerun_of or 0) not in without]
        for e in exps:
            if e.kind is Kind.CANDIDATE and e.status is Status.KEEP:
                kept.append(e)
            if (
                e.kind is not Kind.BASELINE
                and e.status is Status.KEEP
                and self.tier_of(e) == tier
                and (v := e.value(self.metric)) is not None
            ):
                values.setdefault(e.commit, []).append(v)
                if e.kind is Kind.CONFIRM:
                    fresh.setdefault(e.commit, []).append(v)
        kept.sort(key=lambda e: (kept_at(e), e.id))
        order = [self.best] if self.best else []
        for k in reversed(kept):
            order.append(Best(value=0.0, commit=k.commit, experiment_id=k.id))
        for b in order:
            if b.commit in values:
                vs = fresh.get(b.commit) or values[b.commit]
                return Best(
                    statistics.fmean(vs), b.commit, b.experiment_id, runs=len(vs), values=tuple(vs)
                )
        first = min(
            (e for e in exps if e.kind is Kind.BASELINE and self.tier_of(e) == tier),
            key=lambda e: e.id,
        )
        return Best(base.mean, base.commit, first.id, runs=len(base.values), values=base.values)

    def promotion_tier(self, current: str) -> str | None:
        """Where a promoted candidate is re-run: the validation tier, else a tier on which
        the current best was measured (cheapest first)."""
        if self.tiers.validation is not None:
            return self.tiers.validation
        for t in self.tiers.screening:
            base = self.baselines.get(t)
            if base and base.complete and self.best_on(t).commit == current:
                return t
        return None


def kept_at(e: Experiment) -> float:
    """When a keep was made (its finishing time for rows from before kept_at was recorded)."""
    return e.kept_at if e.kept_at is not None else (e.finished_at or 0.0)


__all__ = ["Bars", "kept_at"]
