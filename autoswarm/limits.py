"""The run's stopping criteria: time, experiments, money and GPU-hours, as small objects.

Each limit answers one question, :meth:`Limit.reason`: should the run stop dispatching
now, and why (the reason the run ends with)? A limit stops *before* it would be overrun:
the time limit once the next experiment could not finish in time, the cost limits once
what runs plus one more first run could exceed them (like Syne Tune's stopping criteria).
``--max-experiments`` is a count, checked apart (:meth:`Limits.count_reached`): it ends
the run only once the queue is empty, so queued re-runs still decide their candidates.

The limits read the run through :class:`Usage` (the scheduler's run state implements it),
so they are tested on plain numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from autoswarm.config import Config
from autoswarm.costs import Cost, Price, slot_cost, total_cost


class Usage(Protocol):
    """What the limits read of a run."""

    def elapsed(self, now: float) -> float:
        """Seconds the run has taken, over all its sessions."""
        ...

    def expected_duration(self) -> float:
        """How long the next experiment is expected to take."""
        ...

    def spent(self, now: float) -> Mapping[str, Cost]:
        """Tier key -> what the run cost so far (running experiments up to ``now``)."""
        ...

    def running_since(self) -> Iterable[tuple[str, float]]:
        """(tier key, start time) of each running experiment."""
        ...

    def count(self) -> int:
        """How many experiments the run has recorded."""
        ...


class Limit(Protocol):
    def reason(self, usage: Usage, now: float) -> str | None:
        """Why the run must stop dispatching now, or None."""
        ...


@dataclass(frozen=True)
class TimeLimit:
    """``--time-limit``: stop once it is reached, or once the next experiment would overrun it."""

    seconds: float

    def reason(self, usage: Usage, now: float) -> str | None:
        elapsed = usage.elapsed(now)
        if elapsed >= self.seconds:
            return "time limit"
        if elapsed + usage.expected_duration() > self.seconds:
            return "time limit (no time for another experiment)"
        return None


@dataclass(frozen=True)
class CostLimit:
    """``--max-cost`` and ``--max-gpu-hours``: like the time limit, for tier price × duration.

    What the running experiments will have cost when they end, plus one more first run on
    the cheapest screening tier, must fit.
    """

    max_usd: float
    max_gpu_hours: float
    prices: Mapping[str, Price]
    next_price: Price  # the price of the tier a next first run goes to

    def reason(self, usage: Usage, now: float) -> str | None:
        spent = total_cost(usage.spent(now))
        expected = usage.expected_duration()
        committed = spent
        for tier, started in usage.running_since():
            ran = max(0.0, now - started)
            price = self.prices.get(tier)
            if price is not None:
                committed = committed + slot_cost(price, max(0.0, expected - ran))
        nxt = slot_cost(self.next_price, expected)
        if self.max_usd and spent.usd >= self.max_usd:
            return "cost limit"
        if self.max_gpu_hours and spent.gpu_hours >= self.max_gpu_hours:
            return "gpu-hour limit"
        if self.max_usd and (committed + nxt).usd > self.max_usd:
            return "cost limit (no budget for another experiment)"
        if self.max_gpu_hours and (committed + nxt).gpu_hours > self.max_gpu_hours:
            return "gpu-hour limit (no budget for another experiment)"
        return None


@dataclass(frozen=True)
class Limits:
    """The run's limits, first reason first; ``max_experiments`` (0 = none) is the count."""

    limits: Sequence[Limit]
    max_experiments: int = 0

    @classmethod
    def from_config(cls, cfg: Config, prices: Mapping[str, Price], screening: str) -> Limits:
        r = cfg.run
        limits: list[Limit] = []
        if r.time_limit:
            limits.append(TimeLimit(r.time_limit))
        if r.max_cost or r.max_gpu_hours:
            limits.append(CostLimit(r.max_cost, r.max_gpu_hours, prices, prices[screening]))
        return cls(tuple(limits), r.max_experiments)

    def reason(self, usage: Usage, now: float) -> str | None:
        """Why dispatching must stop now (a time, cost or GPU-hour limit), or None."""
        for limit in self.limits:
            why = limit.reason(usage, now)
            if why is not None:
                return why
        return None

    def count_reached(self, usage: Usage) -> bool:
        """True once the run has recorded ``max_experiments`` experiments."""
        return bool(self.max_experiments) and usage.count() >= self.max_experiments

    def left(self, usage: Usage) -> int | None:
        """How many more experiments ``max_experiments`` allows (None: no such limit)."""
        return self.max_experiments - usage.count() if self.max_experiments else None

    def room(self, usage: Usage, now: float, need: int = 1) -> bool:
        """Whether the limits leave room for ``need`` more runs."""
        left = self.left(usage)
        if left is not None and need > left:
            return False
        return self.reason(usage, now) is None


__all__ = ["CostLimit", "Limit", "Limits", "TimeLimit", "Usage"]
