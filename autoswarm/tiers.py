"""Hardware tiers of a pool as the scheduler sees them: which slot is on which tier, in what order.

Pure functions over :class:`~autoswarm.config.PoolConfig` (read-only views such as
``autoswarm status`` pass the pool of the run's record, ``Config.from_record(run.config).pool``,
so they agree with the scheduler). The policy itself (screening → promotion) lives in :mod:`autoswarm.scheduler`;
see docs/pools.md for the rules.

A pool without ``[[pool.tiers]]`` has one implicit tier whose key is ``""``: every slot is
on it, it is free, and runs behave as they did before tiers existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from autoswarm.config import PoolConfig, TierConfig, TierRole
from autoswarm.errors import ConfigError

IMPLICIT = ""  # the key of the implicit tier of a pool without [[pool.tiers]]


@dataclass(frozen=True)
class TierPlan:
    """The tier of every slot, and the order in which tiers are used.

    Attributes:
        slot_tiers: tier key of slot ``i`` (``""`` everywhere for a pool without tiers).
        tiers: tier key → its configuration (the implicit tier is free and has no accelerator).
        screening: keys of tiers that take first runs (role screen or any), cheapest first.
        validation: key of the validation tier, or None when candidates are decided where
            they were screened.
    """

    slot_tiers: tuple[str, ...]
    tiers: Mapping[str, TierConfig]
    screening: tuple[str, ...]
    validation: str | None

    @property
    def used(self) -> tuple[str, ...]:
        """Tier keys that own at least one slot, in slot order."""
        return tuple(dict.fromkeys(self.slot_tiers))

    @property
    def deciding(self) -> str:
        """The tier whose results advance the branch (validation, else the cheapest screening)."""
        if self.validation is not None:
            return self.validation
        return self.screening[0] if self.screening else IMPLICIT

    def screens(self, slot: int) -> bool:
        return self.slot_tiers[slot] in self.screening


def plan_tiers(pool: PoolConfig, capacity: int) -> TierPlan:
    """Map ``capacity`` backend slots onto ``pool``'s tiers.

    Slots are numbered tier by tier, in file order: ``slots`` each, or ``max_slots`` each
    when the backend reports the autoscaling maximum.

    Raises:
        ConfigError: the backend's slot count matches neither, or there are several
            validation tiers.
    """
    if not pool.tiers:
        implicit = TierConfig(name="local", slots=max(1, capacity))
        return TierPlan((IMPLICIT,) * capacity, {IMPLICIT: implicit}, (IMPLICIT,), None)
    fixed = tuple(t for t in pool.tiers for _ in range(t.slots))
    grown = tuple(t for t in pool.tiers for _ in range(max(t.slots, t.max_slots)))
    if capacity == len(fixed):
        chosen = fixed
    elif capacity == len(grown):
        chosen = grown
    else:
        raise ConfigError(
            f"the {pool.backend} backend reports {capacity} slot(s) but [[pool.tiers]] declare "
            f"{len(fixed)} (slots) or {len(grown)} (max_slots): make the tiers' slot counts match "
            "the hardware, or leave out --workers"
        )
    validation = [t.name for t in pool.tiers if t.role is TierRole.VALIDATE]
    if len(validation) > 1:
        raise ConfigError(
            f"[[pool.tiers]] has {len(validation)} tiers with role 'validate' "
            f"({', '.join(validation)}): give exactly one tier role 'validate' and the others "
            "'screen' or 'any'"
        )
    used = {t.name for t in chosen}
    order = sorted(
        (i, t)
        for i, t in enumerate(pool.tiers)
        if t.role is not TierRole.VALIDATE and t.name in used
    )
    screening = tuple(
        t.name for _, t in sorted(order, key=lambda it: (it[1].price_per_hour, it[0]))
    )
    if not screening:
        raise ConfigError(
            "no slot of the pool can take first runs: give a tier with slots role 'screen' or 'any'"
        )
    if validation and validation[0] not in used:
        validation = []
    return TierPlan(
        slot_tiers=tuple(t.name for t in chosen),
        tiers={t.name: t for t in pool.tiers},
        screening=screening,
        validation=validation[0] if validation else None,
    )


def deciding_tier(pool: PoolConfig) -> str:
    """The tier whose baseline and best a run reports: the validation tier, else the cheapest
    screening tier, else the implicit tier (same choice as :attr:`TierPlan.deciding`)."""
    if not pool.tiers:
        return IMPLICIT
    for t in pool.tiers:
        if t.role is TierRole.VALIDATE:
            return t.name
    first = min(
        (it for it in enumerate(pool.tiers) if it[1].role is not TierRole.VALIDATE),
        key=lambda it: (it[1].price_per_hour, it[0]),
    )
    return first[1].name


def tier_key(pool: PoolConfig, recorded: str, pinned: object = None) -> str:
    """The tier an experiment belongs to: where it ran, else where it is pinned ("" without tiers)."""
    if not pool.tiers:
        return IMPLICIT
    return recorded or (str(pinned) if pinned else IMPLICIT)


__all__ = ["IMPLICIT", "TierPlan", "deciding_tier", "plan_tiers", "tier_key"]
