"""The keep rule's arithmetic (see autoswarm.policy)."""

from __future__ import annotations

import math

import pytest

from autoswarm.policy import Best, Decision, KeepRule
from autoswarm.types import Direction

BASE = Best(value=1.0, commit="c", experiment_id=1, runs=3)
SIGMA = 0.01
SE1 = SIGMA * math.sqrt(1 + 1 / 3)  # one run against three


@pytest.mark.parametrize(
    ("values", "decision"),
    [
        ([1.0 - 2.4 * SE1], Decision.KEEP),  # beyond 2 standard errors at once
        ([1.0 - 1.5 * SE1], Decision.CONFIRM),  # promising: more evidence first
        ([1.0 - 0.5 * SE1], Decision.DISCARD),  # inside the noise
        ([1.01], Decision.DISCARD),  # worse
        ([0.982, 0.982, 0.982], Decision.KEEP),  # 3 runs: se = 0.00816, gain 0.018 > 2 se
        ([0.99, 0.99, 0.99], Decision.DISCARD),  # 3 runs, gain 0.01 < 2 se: no fourth run
    ],
)
def test_decisions(values: list[float], decision: Decision) -> None:
    got, ev = KeepRule().decide(values, BASE, SIGMA)
    assert got is decision
    assert ev.mean == pytest.approx(sum(values) / len(values))
    assert ev.se == pytest.approx(SIGMA * math.sqrt(1 / len(values) + 1 / 3))


def test_maximize_flips_the_sign() -> None:
    rule = KeepRule(direction=Direction.MAXIMIZE)
    assert rule.decide([1.05], BASE, SIGMA)[0] is Decision.KEEP
    assert rule.decide([0.95], BASE, SIGMA)[0] is Decision.DISCARD


def test_min_delta_is_a_floor_and_zero_noise_is_handled() -> None:
    rule = KeepRule(min_delta=0.05)
    assert rule.decide([0.96], BASE, SIGMA)[0] is Decision.DISCARD
    assert rule.decide([0.94], BASE, SIGMA)[0] is Decision.KEEP
    got, ev = KeepRule().decide([0.999], BASE, 0.0)
    assert got is Decision.KEEP and ev.z == math.inf
    assert KeepRule().decide([1.0], BASE, 0.0)[0] is Decision.DISCARD


def test_no_confirmation_when_disabled() -> None:
    assert KeepRule(confirm_runs=0).decide([1.0 - 1.5 * SE1], BASE, SIGMA)[0] is Decision.DISCARD


def test_false_keep_rate_of_a_null_variant_is_small() -> None:
    """Simulate variants with no effect: the full keep/confirm procedure keeps few of them."""
    import random

    rng = random.Random(0)
    rule = KeepRule()
    kept = 0
    trials = 4000
    for _ in range(trials):
        baseline = [rng.gauss(1.0, SIGMA) for _ in range(3)]
        best = Best(value=sum(baseline) / 3, commit="c", experiment_id=1, runs=3)
        values = [rng.gauss(1.0, SIGMA)]
        while True:
            d, _ = rule.decide(values, best, SIGMA)
            if d is Decision.CONFIRM:
                values.append(rng.gauss(1.0, SIGMA))
                continue
            kept += d is Decision.KEEP
            break
    assert kept / trials < 0.04
