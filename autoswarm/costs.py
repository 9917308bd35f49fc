"""Cost accounting: dollars and GPU-hours of experiments, per tier and per run.

Pure functions over ledger rows and the pool's tiers. An experiment costs what its
slot costs while it runs::

    cost_usd  = price_per_hour(tier) × duration_s / 3600
    gpu_hours = gpus_per_slot(tier)  × duration_s / 3600

where ``duration_s`` is the measured ``finished_at - started_at`` (up to ``now`` for an
experiment still running). Every run that held a slot counts, crashes included: the
GPU was paid for. An attempt that was interrupted and re-queued by ``--resume`` loses
its timing in the ledger and is not counted. A pool without tiers is free and has no
accelerators, so its runs cost 0 (declare a tier to account for local GPUs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from autoswarm.config import PoolConfig
from autoswarm.tiers import IMPLICIT, tier_key
from autoswarm.types import Experiment, Status


@dataclass(frozen=True)
class Price:
    """What one slot of a tier costs per hour, in dollars and in accelerators."""

    usd_per_hour: float = 0.0
    gpus: float = 0.0


@dataclass(frozen=True)
class Cost:
    """Seconds of slot time, dollars and GPU-hours of some experiments."""

    experiments: int = 0
    seconds: float = 0.0
    usd: float = 0.0
    gpu_hours: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.experiments + other.experiments,
            self.seconds + other.seconds,
            self.usd + other.usd,
            self.gpu_hours + other.gpu_hours,
        )

    def as_record(self) -> dict[str, float | int]:
        return {
            "experiments": self.experiments,
            "seconds": self.seconds,
            "cost_usd": self.usd,
            "gpu_hours": self.gpu_hours,
        }


def prices_of(pool: PoolConfig) -> dict[str, Price]:
    """Tier key → price; a pool without tiers has one free implicit tier."""
    if not pool.tiers:
        return {IMPLICIT: Price()}
    return {t.name: Price(t.price_per_hour, t.gpus_per_slot) for t in pool.tiers}


def slot_cost(price: Price, seconds: float, experiments: int = 1) -> Cost:
    """The cost of holding slots of a tier for ``seconds`` in all (``experiments`` runs)."""
    s = max(0.0, seconds)
    return Cost(experiments, s, price.usd_per_hour * s / 3600.0, price.gpus * s / 3600.0)


def experiment_cost(
    e: Experiment, pool: PoolConfig, prices: Mapping[str, Price], now: float | None = None
) -> Cost:
    """What ``e`` cost so far (``now`` counts a running experiment up to that moment)."""
    if e.started_at is None:
        return Cost()
    if e.finished_at is not None:
        end = e.finished_at
    elif e.status is Status.RUNNING and now is not None:
        end = now
    else:
        return Cost()
    price = prices.get(_tier_of(e, pool), Price())
    return slot_cost(price, end - e.started_at)


def _tier_of(e: Experiment, pool: PoolConfig) -> str:
    return tier_of(pool, e.tier, e.pinned_tier)


def tier_of(pool: PoolConfig, tier: str, pinned_tier: str | None) -> str:
    """The tier key costs are counted under (without tiers, the implicit one)."""
    return tier_key(pool, tier, pinned_tier) if pool.tiers else IMPLICIT


def cost_by_tier(
    experiments: Iterable[Experiment], pool: PoolConfig, now: float | None = None
) -> dict[str, Cost]:
    """Tier key → the cost of the experiments that ran on it (tiers without runs included)."""
    prices = prices_of(pool)
    out: dict[str, Cost] = {k: Cost() for k in prices}
    for e in experiments:
        c = experiment_cost(e, pool, prices, now)
        if c.experiments:
            key = _tier_of(e, pool)
            out[key] = out.get(key, Cost()) + c
    return out


def total_cost(by_tier: Mapping[str, Cost]) -> Cost:
    total = Cost()
    for c in by_tier.values():
        total = total + c
    return total


__all__ = [
    "Cost",
    "Price",
    "cost_by_tier",
    "experiment_cost",
    "prices_of",
    "slot_cost",
    "tier_of",
    "total_cost",
]
