"""The sealed test split as the human sees it: val − test gaps and the overfitting warning.

Every decision of a run is made on the validation metric, so a long run can overfit the
validation split by selection alone: the kept variants are the ones whose validation
value was luckiest. The locked evaluation also measures a test split that no decision
and no proposer ever sees (:mod:`autoswarm.evaluation`); here its values are set beside
the validation values, for the human only (``status``, ``results``).

The gap of a commit is how much better its validation value looks than its test value
(``test − val`` when smaller is better), averaged over its runs. The run is warned when
the gap of the best has grown by more than ``WARN_SIGMAS`` standard errors since the
baseline; the standard error comes from the per-run gaps of the commits measured more
than once. Pure functions over plain records, so the rule is tested on numbers.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from autoswarm.ledger import HeldOut
from autoswarm.types import Direction, Status

WARN_SIGMAS = 2.0

# Why test values are hidden while a run is active, and how to see them anyway.
HIDDEN = "hidden while the run is active (an agent may be reading): pass --show-test to see them"


def gaps_by_commit(rows: Iterable[HeldOut], test: str) -> dict[str, list[tuple[float, float]]]:
    """commit -> [(val, test)] of every run that has both (crashes and forgeries left out)."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        t = r.sealed.get(test)
        if r.value is None or t is None or r.status.failed or r.status is Status.REJECTED:
            continue
        if math.isfinite(r.value) and math.isfinite(t):
            out[r.commit].append((r.value, t))
    return dict(out)


def gap(pairs: Sequence[tuple[float, float]], direction: Direction) -> float:
    """Mean of how much better each run's validation value is than its test value."""
    return statistics.fmean(direction.improvement(t, v) for v, t in pairs)


def gap_sigma(
    groups: Iterable[Sequence[tuple[float, float]]], direction: Direction
) -> float | None:
    """Pooled per-run σ of the gap over commits with two runs or more (None without any)."""
    ss, df = 0.0, 0
    for pairs in groups:
        if len(pairs) < 2:
            continue
        gaps = [direction.improvement(t, v) for v, t in pairs]
        m = statistics.fmean(gaps)
        ss += math.fsum((g - m) ** 2 for g in gaps)
        df += len(gaps) - 1
    return math.sqrt(ss / df) if df else None


def heldout_record(
    rows: Sequence[HeldOut],
    *,
    test: str,
    direction: Direction,
    base_commit: str,
    best_commit: str | None,
    keeps: Sequence[tuple[int, str, str]] = (),
) -> dict[str, Any] | None:
    """What ``status`` shows of the test split; None when nothing has a test value.

    ``keeps``: (id, commit, description) of each kept variant, in order.
    """
    groups = gaps_by_commit(rows, test)
    if not groups:
        return None
    sigma = gap_sigma(groups.values(), direction)

    def entry(commit: str | None) -> dict[str, Any] | None:
        pairs = groups.get(commit or "")
        if not pairs:
            return None
        return {
            "commit": commit,
            "runs": len(pairs),
            "val": statistics.fmean(v for v, _ in pairs),
            "test": statistics.fmean(t for _, t in pairs),
            "gap": gap(pairs, direction),
        }

    base, best = entry(base_commit), entry(best_commit)
    growth = se = None
    warning = ""
    if base is not None and best is not None and best_commit != base_commit:
        growth = best["gap"] - base["gap"]
        if sigma is not None:
            se = sigma * math.sqrt(1 / best["runs"] + 1 / base["runs"])
            if se > 0 and growth > WARN_SIGMAS * se:
                warning = (
                    f"the best's validation value looks {growth:.6f} better against its test "
                    f"value than the baseline's did ({growth / se:.1f} standard errors): the "
                    "run may be overfitting the validation split by selection; trust the "
                    "test value, and re-validate on fresh data before adopting the best"
                )
    keep_rows = []
    for exp_id, commit, description in keeps:
        e = entry(commit)
        if e is not None:
            keep_rows.append({"id": exp_id, "description": description, **e})
    return {
        "metric": test,
        "baseline": base,
        "best": best,
        "keeps": keep_rows,
        "gap_sigma": sigma,
        "gap_growth": growth,
        "gap_growth_se": se,
        "warning": warning,
    }


def held_out_values(rows: Iterable[HeldOut]) -> dict[int, Mapping[str, float]]:
    """id -> test values, for ``results`` and ``wait``."""
    return {r.id: r.sealed for r in rows}


__all__ = [
    "HIDDEN",
    "WARN_SIGMAS",
    "gap",
    "gap_sigma",
    "gaps_by_commit",
    "held_out_values",
    "heldout_record",
]
