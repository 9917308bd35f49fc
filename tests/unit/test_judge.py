"""The keep rule on plain numbers: no ledger, no git, no clock (autoswarm.judge)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from autoswarm.judge import (
    Action,
    Noise,
    Rule,
    claim,
    judge,
    noise_model,
    review,
    screen,
    slowed,
    standard_error,
)
from autoswarm.types import Direction

RULE = Rule()
BASE = [1.000, 1.010, 0.990]  # σ = 0.01
WELL_KNOWN = Noise(sigma=0.01, df=60.0, prior_df=20.0, groups=30)


def _two_stage(rule: Rule, noise: Noise, bar: list[float], draw, rng: random.Random) -> Action:
    """Screen one run, then (if promising) judge it on its fresh runs too."""
    first = draw(rng)
    v = screen(rule, first, bar, 1, noise, room=True)
    if v.action is not Action.CONFIRM:
        return v.action
    values = [first] + [draw(rng) for _ in range(v.runs)]
    look = 1
    while True:  # as the scheduler does: at most rule.looks looks, more fresh runs each
        got = judge(rule, values, 1, bar, 1, noise, look=look, room=True)
        if got.action is not Action.CONFIRM:
            return got.action
        values += [draw(rng) for _ in range(got.runs)]
        look += 1


# ---------------------------------------------------------------------------
# The noise model


def test_noise_is_pooled_over_every_repeated_commit() -> None:
    noise = noise_model([[1.0, 1.02], [2.0, 2.02], [3.0, 3.02, 3.04]])
    assert noise.df == 4
    assert noise.sigma == pytest.approx(math.sqrt((0.0002 + 0.0002 + 0.0008) / 4))
    assert noise.groups == 3 and noise.unstable == 0


def test_a_group_with_a_much_wider_spread_is_left_out_of_the_pool() -> None:
    rng = random.Random(3)
    groups = [[rng.gauss(0, 0.01) for _ in range(3)] for _ in range(20)]
    lottery = [0.0, 0.5, -0.5]
    noise = noise_model([*groups, lottery])
    assert noise.unstable == 1
    assert noise.sigma < 0.02  # the lottery would make σ̂ ≈ 0.08


def test_the_prior_weight_shrinks_when_variants_differ_in_spread() -> None:
    rng = random.Random(4)
    same = [[rng.gauss(0, 1) for _ in range(3)] for _ in range(40)]
    mixed = [[rng.gauss(0, rng.choice((0.3, 1, 3))) for _ in range(3)] for _ in range(40)]
    assert noise_model(mixed).prior_df < noise_model(same).prior_df


def test_no_repeated_commit_means_no_noise_known() -> None:
    assert not noise_model([[1.0]]).known
    assert not noise_model([]).known


# ---------------------------------------------------------------------------
# Decisions


def test_no_keep_on_a_single_run_however_good() -> None:
    noise = noise_model([BASE])
    v = screen(RULE, 0.5, BASE, 1, noise, room=True)
    assert v.action is Action.CONFIRM and v.runs == 2
    # Without room for more runs, a single run is not enough.
    assert screen(RULE, 0.5, BASE, 1, noise, room=False).action is Action.DISCARD


def test_a_run_inside_the_noise_is_discarded_at_the_screen() -> None:
    v = screen(RULE, 0.995, BASE, 1, noise_model([BASE]), room=True)
    assert v.action is Action.DISCARD


def test_a_real_gain_with_equal_noise_is_kept() -> None:
    # 5σ better, three runs with the baseline's spread, noise well measured.
    v = judge(RULE, [0.950, 0.955, 0.945], 1, BASE, 1, WELL_KNOWN)
    assert v.action is Action.KEEP
    assert v.evidence.p < RULE.false_keep_rate
    assert not v.evidence.unstable
    # Selection apart from estimation: the bar it sets is the mean of its fresh runs.
    assert v.evidence.selected == (0.950,)
    assert v.evidence.fresh == (0.955, 0.945)
    assert v.evidence.replicated == pytest.approx(0.950)


def test_a_high_spread_variant_with_one_lucky_run_is_not_kept() -> None:
    # One run 10σ better, the fresh runs scattered: its own spread is 15× the baseline's.
    values = [0.900, 1.200, 0.930]
    v = judge(RULE, values, 1, BASE, 1, WELL_KNOWN)
    assert v.action is Action.DISCARD
    assert v.evidence.unstable and "unstable" in v.reason
    # Its mean is worse than the baseline anyway; even a mean that wins is judged with its σ.
    v = judge(RULE, [0.80, 1.05, 0.84], 1, BASE, 1, WELL_KNOWN)
    assert v.evidence.gain > 0.09 and v.evidence.unstable and v.action is Action.DISCARD


def test_an_unstable_variant_that_wins_by_far_is_still_kept() -> None:
    v = judge(RULE, [0.50, 0.55, 0.45, 0.52, 0.48], 1, BASE, 1, WELL_KNOWN)
    assert v.evidence.unstable and v.action is Action.KEEP


def test_sigma_from_two_runs_is_treated_as_uncertain() -> None:
    two = [1.000, 1.010]  # σ̂ = 0.0071 on one degree of freedom
    values = [0.975, 0.978, 0.972]  # ~3.5σ̂ better: a keep if σ̂ were known ...
    known = Noise(sigma=0.00707, df=math.inf, prior_df=math.inf)
    assert judge(RULE, values, 1, two, 1, known).action is Action.KEEP
    # ... not when σ̂ rests on two runs (t quantiles on one degree of freedom).
    v = judge(RULE, values, 1, two, 1, noise_model([two]))
    assert v.action is Action.DISCARD and v.evidence.df <= 2


def test_more_runs_of_the_noise_make_the_same_gain_significant() -> None:
    values = [0.975, 0.978, 0.972]
    few = judge(RULE, values, 1, BASE, 1, noise_model([BASE]))
    rng = random.Random(5)
    many = noise_model([BASE] + [[rng.gauss(0, 0.01) for _ in range(3)] for _ in range(30)])
    more = judge(RULE, values, 1, BASE, 1, many)
    assert more.evidence.p < few.evidence.p


def test_maximize_and_min_delta() -> None:
    up = Rule(direction=Direction.MAXIMIZE)
    assert judge(up, [1.05, 1.052, 1.048], 1, BASE, 1, WELL_KNOWN).action is Action.KEEP
    assert judge(up, [0.95, 0.952, 0.948], 1, BASE, 1, WELL_KNOWN).action is Action.DISCARD
    floor = Rule(min_delta=0.1)
    assert judge(floor, [0.95, 0.955, 0.945], 1, BASE, 1, WELL_KNOWN).action is Action.DISCARD


def test_a_promising_gain_short_of_the_keep_level_gets_one_more_look() -> None:
    values = [0.975, 0.98, 0.97]  # p ≈ 0.01: short of 0.001 / 2, below extend_p
    v = judge(RULE, values, 1, BASE, 1, noise_model([BASE, values]), look=1, room=True)
    assert v.action is Action.CONFIRM and v.runs == RULE.confirm_runs
    assert v.evidence.alpha == RULE.false_keep_rate / RULE.looks
    # Not without room, and not past the last look.
    assert judge(RULE, values, 1, BASE, 1, noise_model([BASE, values])).action is Action.DISCARD
    v = judge(RULE, values, 1, BASE, 1, noise_model([BASE, values]), look=2, room=True)
    assert v.action is Action.DISCARD


def test_confirm_runs_zero_decides_on_one_run() -> None:
    rule = Rule(confirm_runs=0)
    assert screen(rule, 0.90, BASE, 1, WELL_KNOWN, room=True).action is Action.KEEP
    assert screen(rule, 0.995, BASE, 1, WELL_KNOWN, room=True).action is Action.DISCARD


# ---------------------------------------------------------------------------
# Review: revocation


def test_a_keep_contradicted_by_replication_is_revoked() -> None:
    # Kept on a lucky screen; its fresh runs say it is no better than the bar it replaced.
    assert review(RULE, [1.004, 0.998, 1.006], BASE, WELL_KNOWN)[0] is Action.REVOKE
    assert review(RULE, [0.950, 0.955, 0.960], BASE, WELL_KNOWN)[0] is Action.STAND


def test_a_noisy_keep_whose_fresh_runs_were_lucky_too_is_revoked_once_its_spread_shows() -> None:
    # Kept on three runs that happened to agree; the end-of-run validation adds three
    # more, and the six together are eight times wider than the noise. Their mean is
    # still below the bar, but with the variant's own spread that is not shown.
    selected, confirms, final = [0.975], [0.978, 0.981], [0.90, 1.06, 0.95]
    fresh, values = confirms + final, selected + confirms + final
    assert statistics.fmean(fresh) < statistics.fmean(BASE)
    action, why = review(RULE, fresh, BASE, WELL_KNOWN, values=values)
    assert action is Action.REVOKE and "unstable" in why
    # Without the wide runs it stands; a wide variant far better than the bar stands too.
    assert review(RULE, confirms, BASE, WELL_KNOWN, values=selected + confirms)[0] is Action.STAND
    far = [v - 0.3 for v in values]
    assert review(RULE, far[1:], BASE, WELL_KNOWN, values=far)[0] is Action.STAND


def test_null_keeps_of_noisy_variants_are_mostly_revoked_by_the_validation() -> None:
    # Many 8x-noise variants with no effect, kept whenever their three runs agree by
    # chance and beat the bar (the failure of the first rule); three validation runs
    # then revoke almost all of them.
    rng = random.Random(11)
    kept = revoked = 0
    for _ in range(40_000):
        values = [rng.gauss(1.0, 0.08) for _ in range(3)]
        if judge(RULE, values, 1, BASE, 1, WELL_KNOWN).action is not Action.KEEP:
            continue
        kept += 1
        values += [rng.gauss(1.0, 0.08) for _ in range(3)]
        action, _ = review(RULE, values[1:], BASE, WELL_KNOWN, values=values, kept_with=3)
        revoked += action is Action.REVOKE
    assert kept >= 5  # the hostile case occurs
    assert revoked >= 0.8 * kept


def test_the_standard_error_of_a_best_uses_its_own_spread_when_it_is_wider() -> None:
    assert standard_error(RULE, [0.95, 0.951, 0.949], WELL_KNOWN) == pytest.approx(
        0.01 / math.sqrt(3)
    )
    wide = [0.9, 1.1, 0.95, 1.05]
    assert standard_error(RULE, wide, WELL_KNOWN) == pytest.approx(statistics.stdev(wide) / 2)
    assert standard_error(RULE, [], WELL_KNOWN) is None


def test_claim_holds_within_the_new_interval() -> None:
    holds, mean, se = claim(RULE, 0.950, [0.951, 0.949, 0.953], WELL_KNOWN)
    assert holds and mean == pytest.approx(0.951) and se > 0
    holds, _, _ = claim(RULE, 0.900, [0.951, 0.949, 0.953], WELL_KNOWN)
    assert not holds


# ---------------------------------------------------------------------------
# Many candidates: the false-keep bound


@pytest.mark.parametrize("spreads", [(1.0,), (1.0, 1.0, 3.0), (1.0, 1.0, 1.0, 3.0, 10.0)])
def test_many_null_candidates_keep_within_the_bound(spreads: tuple[float, ...]) -> None:
    """20,000 candidates that change nothing: at most ~1 per 1000 kept, whatever their spread.

    Some only widen the spread (3×, 10× the baseline's). The noise model is fitted, as in
    a run, on earlier candidates' repeated runs from the same population, so it has seen
    how much spreads differ. The bound holds per candidate, hence at any number of
    candidates and slots.
    """
    rng = random.Random(7)
    base = [rng.gauss(1.0, 0.01) for _ in range(3)]
    earlier = [[rng.gauss(1.0, 0.01 * rng.choice(spreads)) for _ in range(3)] for _ in range(15)]
    noise = noise_model([base, *earlier])
    n = 20_000
    kept = sum(
        _two_stage(RULE, noise, base, lambda r: r.gauss(1.0, 0.01 * r.choice(spreads)), rng)
        is Action.KEEP
        for _ in range(n)
    )
    # Expected at most 20 (α = 0.001); 35 leaves room for Monte Carlo error (p < 0.001).
    assert kept <= 35, f"{kept} false keeps of {n} (spreads {spreads})"


def test_real_gains_are_still_found() -> None:
    rng = random.Random(8)
    noise = Noise(sigma=0.01, df=40.0, prior_df=20.0)
    kept = sum(
        _two_stage(RULE, noise, BASE, lambda r: r.gauss(0.96, 0.01), rng) is Action.KEEP
        for _ in range(500)
    )
    assert kept > 250  # a 4σ gain is kept more often than not


# ---------------------------------------------------------------------------
# Repeats slowed by other load


def test_a_repeat_that_made_far_fewer_steps_is_slowed() -> None:
    assert slowed([953, 950, 610]) == [2]
    assert slowed([151, 145, 126]) == [2]  # seen on a loaded run: 2.63, 2.73, 2.91 bpb
    assert slowed([953, 950, 920]) == []  # ordinary jitter
    assert slowed([953, None, 610]) == []  # too few repeats with steps to tell
    assert slowed([None, None, None]) == []


def test_the_rule_s_distribution_functions_are_scipy_stats_own() -> None:
    """judge takes its p-values from scipy.special (a fifth of scipy.stats' import time),
    the very functions scipy.stats calls for these distributions: equal everywhere."""
    from scipy import special, stats

    for df in (1.0, 2.0, 3.5, 17.0, 400.0, 1e6):
        for t in (-40.0, -3.0, -0.5, 0.0, 0.25, 1.7, 6.0, 40.0):
            assert special.stdtr(df, -t) == stats.t.sf(t, df)
        for q in (0.5, 0.975, 0.999):
            assert special.stdtrit(df, q) == stats.t.ppf(q, df)
        for df2 in (1.0, 4.0, 250.0):
            for ratio in (0.0, 0.3, 1.0, 2.5, 80.0):
                assert special.fdtrc(df, df2, ratio) == stats.f.sf(ratio, df, df2)
        for x in (0.0, 0.5, 10.0, 1e3):
            assert special.chdtrc(df, x) == stats.chi2.sf(x, df)
    for t in (-8.0, 0.0, 1.0, 8.0):
        assert special.ndtr(-t) == stats.norm.sf(t)


def test_the_fast_variance_agrees_with_the_exact_one() -> None:
    from autoswarm.judge import _variance

    rng = random.Random(5)
    for n in (2, 3, 5, 40):
        for scale in (1e-9, 1e-3, 1.0, 1e6):
            xs = tuple(1.0 + scale * rng.gauss(0, 1) for _ in range(n))
            exact = statistics.variance(xs)
            assert _variance(xs) == pytest.approx(exact, rel=1e-9, abs=0.0)
    assert _variance((0.9, 0.9, 0.9)) == 0.0 and _variance((1.0,)) == 0.0
