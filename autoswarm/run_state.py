"""The run's state in memory: a mirror of its ledger rows, kept by one object.

The ledger is the truth; :class:`RunState` is the scheduler's copy of it, so that a
decision never has to query SQLite. It is filled in one place, :meth:`RunState.load`
(on start and on ``--resume`` alike), and every row the scheduler writes afterwards
passes through :meth:`RunState.record`, which keeps the indexes (the queue, the running
jobs, each experiment's re-runs, recent durations) and tells the observers
(``results.tsv``, the live view: :class:`Observer`) that something changed.

The noise model's input (:class:`NoiseGroups`: each commit's measured values, per
tier) is part of it: re-estimated whenever a commit gets another run.
"""

from __future__ import annotations

import collections
import statistics
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from autoswarm import judge
from autoswarm.analysis.noise import measured
from autoswarm.config import Config
from autoswarm.costs import Cost, cost_by_tier
from autoswarm.judge import Noise
from autoswarm.types import Experiment, Kind, Status


class Observer(Protocol):
    """A view of the run told about every recorded change (results.tsv, the live view)."""

    def changed(self) -> None: ...


class RunState:
    """The run's rows and their indexes (see the module docstring).

    Attributes:
        all: id -> the latest copy of every row of the run.
        queue: ids of QUEUED rows in dispatch order (baselines, then re-runs, first).
        running: id -> (slot, row) of the jobs a backend runs now.
    """

    def __init__(self, cfg: Config, tier_of: Callable[[Experiment], str]) -> None:
        self.cfg = cfg
        self.metric = cfg.metric.name
        self.tier_of = tier_of
        # The live view reads from another thread; re-entrant, as an observer may read too.
        self.lock = threading.RLock()
        self.all: dict[int, Experiment] = {}
        self.queue: collections.deque[int] = collections.deque()
        self.running: dict[int, tuple[int, Experiment]] = {}
        self._reruns: dict[int, list[int]] = collections.defaultdict(list)
        self._durations: collections.deque[float] = collections.deque(maxlen=50)
        self.noise = NoiseGroups(self.metric, tier_of)
        self.observers: list[Observer] = []
        self.prior_seconds = 0.0  # the earlier sessions of a resumed run
        self.session_start = 0.0

    # -- loading (start and resume) ------------------------------------------------

    def load(self, rows: Iterable[Experiment], reattached: Mapping[int, int]) -> None:
        """Mirror the ledger's rows; ``reattached``: id -> slot of jobs adopted on resume."""
        self.all = {e.id: e for e in rows}
        self._reruns.clear()
        exps = sorted(self.all.values(), key=lambda e: e.id)
        for e in exps:
            if e.rerun_of is not None:
                self._reruns[e.rerun_of].append(e.id)
        self.running = {i: (slot, self.all[i]) for i, slot in reattached.items()}
        queued = [e for e in exps if e.status is Status.QUEUED]
        queued.sort(key=lambda e: (e.kind is not Kind.BASELINE, e.id))
        self.queue = collections.deque(e.id for e in queued)
        self._durations.extend(
            d
            for e in sorted(exps, key=lambda e: e.finished_at or 0.0)
            if e.status in (Status.KEEP, Status.DISCARD, Status.PENDING)
            and (d := e.duration_s) is not None
        )
        self.noise.clear()
        for e in exps:
            self.noise.measure(e)

    # -- recording -------------------------------------------------------------------

    def record(self, e: Experiment) -> Experiment:
        """The row as the ledger now has it: mirrored, indexed, and the observers told."""
        with self.lock:
            new = e.id not in self.all
            self.all[e.id] = e
            if new and e.rerun_of is not None:
                self._reruns[e.rerun_of].append(e.id)
            if e.id in self.running:
                self.running[e.id] = (self.running[e.id][0], e)
        self.changed()
        return e

    def changed(self) -> None:
        for o in self.observers:
            o.changed()

    def start(self, e: Experiment, slot: int) -> None:
        with self.lock:
            self.running[e.id] = (slot, e)
        self.record(e)

    def stop(self, exp_id: int) -> Experiment | None:
        """The running job's row, no longer running (None if it was not)."""
        with self.lock:
            entry = self.running.pop(exp_id, None)
        return None if entry is None else entry[1]

    def took(self, seconds: float) -> None:
        """A run that went to the end took ``seconds`` (the next one is expected to as well)."""
        self._durations.append(seconds)

    # -- reading -----------------------------------------------------------------------

    def rerun_parent(self, e: Experiment) -> Experiment:
        """The experiment a re-run belongs to."""
        assert e.rerun_of is not None, f"#{e.id} is not a re-run"
        return self.all[e.rerun_of]

    def reruns(self, cand: Experiment) -> list[Experiment]:
        """``cand``'s re-runs (confirmation, validation, re-measurement), oldest first."""
        return [self.all[i] for i in self._reruns.get(cand.id, ())]

    def rows(self) -> list[Experiment]:
        with self.lock:
            return list(self.all.values())

    def finished(self) -> Iterator[Experiment]:
        return (e for e in self.rows() if e.status.is_finished())

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = collections.Counter(e.status.value for e in self.rows())
        return {s.value: c.get(s.value, 0) for s in Status} | {"total": len(self.all)}

    # -- what the limits read (autoswarm.limits.Usage) ---------------------------------

    def elapsed(self, now: float) -> float:
        return self.prior_seconds + max(0.0, now - self.session_start)

    def expected_duration(self) -> float:
        """Median duration of the last experiments that ran to the end (budget until one has)."""
        return statistics.median(self._durations) if self._durations else self.cfg.run.budget

    def spent(self, now: float) -> dict[str, Cost]:
        return cost_by_tier(self.rows(), self.cfg.pool, now)

    def running_since(self) -> Iterator[tuple[str, float]]:
        for _, exp in list(self.running.values()):
            yield self.tier_of(exp), exp.started_at if exp.started_at is not None else 0.0

    def count(self) -> int:
        return len(self.all)


class NoiseGroups:
    """Each commit's measured values per tier, and the noise model over them (cached)."""

    def __init__(self, metric: str, tier_of: Callable[[Experiment], str]) -> None:
        self.metric = metric
        self.tier_of = tier_of
        self._groups: dict[str, dict[str, list[float]]] = collections.defaultdict(dict)
        self._cache: dict[str, tuple[int, Noise]] = {}
        self._measured = 0  # bumped whenever a group of two or more changes

    def clear(self) -> None:
        self._groups.clear()

    def measure(self, e: Experiment) -> None:
        """Add ``e``'s value to its commit's group (the noise model's input)."""
        v = e.value(self.metric)
        if v is None or not e.commit or not measured(e.kind, e.status):
            return  # no value, or not a measurement (a repeat slowed by other load)
        group = self._groups[self.tier_of(e)].setdefault(e.commit, [])
        group.append(v)
        if len(group) > 1:
            self._measured += 1

    def unmeasure(self, e: Experiment) -> None:
        v = e.metrics.get(self.metric)
        group = self._groups[self.tier_of(e)].get(e.commit, [])
        if v in group:
            group.remove(v)
            self._measured += 1

    def model(self, tier: str, baseline_commit: str | None) -> Noise:
        """The noise model of ``tier`` now (:func:`autoswarm.judge.noise_model`), cached."""
        cached = self._cache.get(tier)
        if cached is not None and cached[0] == self._measured:
            return cached[1]
        groups = self._groups.get(tier, {})
        first = groups.get(baseline_commit, []) if baseline_commit else []
        others = [
            g
            for c, g in groups.items()
            if len(g) > 1 and (baseline_commit is None or c != baseline_commit)
        ]
        noise = judge.noise_model([first, *others])
        self._cache[tier] = (self._measured, noise)
        return noise


__all__ = ["NoiseGroups", "Observer", "RunState"]
