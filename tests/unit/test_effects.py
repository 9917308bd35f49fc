"""Effect estimation from factorial waves: recovery of a known linear model, SEs, rank deficiency."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyDOE3 import ff2n, fracfact

from autoswarm.analysis.effects import Row, effects_from_experiments, estimate_effects
from autoswarm.types import Experiment, Kind, Status

SIGMA = 0.002
# y = 1 + 0.03·A − 0.02·B + 0·C + 0.015·A·B (+ 0·D) in coded units; an *effect* is the
# change from level −1 to +1, i.e. twice the coefficient.
TRUE = {"A": 0.06, "B": -0.04, "C": 0.0, "D": 0.0, "A:B": 0.03}


def model(x: dict[str, float]) -> float:
    a, b = x.get("A", 0.0), x.get("B", 0.0)
    return 1.0 + 0.03 * a - 0.02 * b + 0.015 * a * b


def rows_of(design: np.ndarray, factors: list[str], reps: int, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    for _ in range(reps):
        for run in design:
            x = {f: float(v) for f, v in zip(factors, run, strict=True)}
            rows.append((x, model(x) + rng.normal(0.0, SIGMA), 1))
    return rows


def test_full_factorial_recovers_the_model() -> None:
    factors = ["A", "B", "C"]
    table = estimate_effects(rows_of(ff2n(3), factors, 2, seed=1), factors, sigma=SIGMA)
    assert table.runs == 16 and table.se_source == "sigma" and not table.dropped
    assert [e.term for e in table.terms] == ["A", "B", "C", "A:B", "A:C", "B:C"]
    for e in table.terms:
        truth = TRUE.get(e.term, 0.0)
        assert abs(e.estimate - truth) < 3 * e.stderr, e
        assert e.n == 16
    assert table.get("A") is not None and table.get("A").significant(0.05)  # type: ignore[union-attr]
    assert table.get("B").estimate < 0 and table.get("B").p_value < 1e-6  # type: ignore[union-attr]
    c = table.get("C")
    assert c is not None and not c.significant(0.01)
    ab = table.get("B:A")  # either order
    assert ab is not None and ab.term == "A:B" and ab.significant(0.05)


def test_fractional_factorial_recovers_main_effects_and_drops_aliases() -> None:
    factors = ["A", "B", "C", "D"]
    design = fracfact("a b c abc")  # 2^(4-1), resolution IV: D = ABC
    table = estimate_effects(rows_of(design, factors, 2, seed=2), factors, sigma=SIGMA)
    # Two-way interactions are aliased in pairs (AB = CD, AC = BD, AD = BC): one of each stays.
    assert {"C:D", "B:D", "B:C"} == set(table.dropped)
    for f in factors:
        e = table.get(f)
        assert e is not None and abs(e.estimate - TRUE[f]) < 3 * e.stderr
    assert not table.get("C").significant(0.01)  # type: ignore[union-attr]
    assert not table.get("D").significant(0.01)  # type: ignore[union-attr]
    ab = table.get("A:B")
    assert ab is not None and abs(ab.estimate - 0.03) < 3 * ab.stderr


def test_known_sigma_gives_the_textbook_standard_error() -> None:
    factors = ["A", "B", "C"]
    table = estimate_effects(rows_of(ff2n(3), factors, 2, seed=3), factors, sigma=SIGMA)
    # Orthogonal ±1 design with N runs: se(β) = σ/√N, se(effect) = 2σ/√N.
    for e in table.terms:
        assert e.stderr == pytest.approx(2 * SIGMA / math.sqrt(16))
        assert e.z == pytest.approx(e.estimate / e.stderr)


def test_residual_errors_without_sigma_and_nan_when_saturated() -> None:
    factors = ["A", "B"]
    table = estimate_effects(rows_of(ff2n(2), factors, 3, seed=4), factors, sigma=None)
    assert table.se_source == "residual" and table.df_resid == 12 - 4
    assert all(math.isfinite(e.stderr) and e.stderr > 0 for e in table.terms)
    saturated = estimate_effects(rows_of(ff2n(2), factors, 1, seed=5), factors, sigma=None)
    assert saturated.se_source == "none" and saturated.df_resid == 0
    assert all(math.isnan(e.stderr) and math.isnan(e.p_value) for e in saturated.terms)
    assert all(r["stderr"] is None for r in saturated.as_records())


def test_rank_deficient_designs_do_not_crash() -> None:
    # B is a copy of A; C never varies; one lonely row in a second group.
    rows: list[Row] = [
        ({"A": 1, "B": 1, "C": 0}, 1.1, 1),
        ({"A": -1, "B": -1, "C": 0}, 0.9, 1),
        ({"A": 1, "B": 1, "C": 0}, 1.12, 1),
        ({"A": -1, "B": 1, "C": 0}, 1.0, 2),
    ]
    table = estimate_effects(rows, ["A", "B", "C"], sigma=SIGMA)
    assert [e.term for e in table.terms] == ["A"]
    assert set(table.dropped) >= {"B", "C"}
    assert estimate_effects([], ["A"], sigma=SIGMA).terms == ()
    assert estimate_effects([({"A": 1}, math.nan, 1)], ["A"], sigma=None).runs == 0


def test_wave_intercepts_absorb_a_shifted_centre() -> None:
    factors = ["A", "B"]
    rows = rows_of(ff2n(2), factors, 2, seed=6)
    shifted = [(x, v - 0.5, 2) for x, v, _ in rows_of(ff2n(2), factors, 2, seed=7)]
    table = estimate_effects(rows + shifted, factors, sigma=SIGMA)
    assert table.groups == (1, 2)
    a = table.get("A")
    assert a is not None and abs(a.estimate - 0.06) < 3 * a.stderr


def _exp(i: int, value: float | None, **kw: object) -> Experiment:
    base: dict[str, object] = dict(
        id=i,
        run_id=1,
        kind=Kind.CANDIDATE,
        status=Status.DISCARD,
        parent="p",
        commit=f"c{i}",
        description="x",
        proposer="factorial",
        metrics={"val_bpb": value} if value is not None else {},
    )
    base.update(kw)
    return Experiment(**base)  # type: ignore[arg-type]


def test_effects_from_experiments_uses_designs_and_confirmations() -> None:
    exps = []
    rng = np.random.default_rng(8)
    for i, run in enumerate(ff2n(2), start=1):
        design = {"LR": int(run[0]), "WIDTH": int(run[1])}
        y = 1.0 - 0.01 * run[0] + 0.02 * run[1] + rng.normal(0, SIGMA)
        exps.append(_exp(i, y, meta={"wave": 1, "design": design}))
    exps.append(_exp(10, 0.8, kind=Kind.BASELINE, status=Status.KEEP))  # no design: ignored
    exps.append(_exp(11, None, status=Status.CRASH, meta={"wave": 1, "design": {"LR": 1}}))
    exps.append(_exp(12, 0.99, status=Status.KEEP, meta={"combine": 1}))  # not a design point
    # A confirmation of design point 1 counts as a replicate of it.
    exps.append(_exp(13, exps[0].value("val_bpb"), kind=Kind.CONFIRM, rerun_of=1))
    table = effects_from_experiments(exps, "val_bpb", sigma=SIGMA)
    assert table.runs == 5 and table.factors == ("LR", "WIDTH")
    lr, width = table.get("LR"), table.get("WIDTH")
    assert lr is not None and width is not None
    assert lr.estimate < 0 < width.estimate and lr.n == 5
    assert effects_from_experiments(exps, "val_bpb", SIGMA, wave=2).terms == ()
    records = table.as_records()
    assert {r["term"] for r in records} >= {"LR", "WIDTH"}


def _dummy_ols(
    rows: list[Row], factors: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The fit with one intercept column per wave (statsmodels), main effects only:
    coefficients, residual standard errors, diag((XᵀX)⁻¹) and residual df of the effects."""
    from statsmodels.regression.linear_model import OLS

    groups = sorted({g for _, _, g in rows})
    cols = [[1.0 if g == grp else 0.0 for _, _, g in rows] for grp in groups]
    cols += [[float(x.get(f, 0.0)) for x, _, _ in rows] for f in factors]
    fit = OLS(np.array([v for _, v, _ in rows]), np.array(cols).T).fit()
    k = len(groups)
    cov = np.diag(np.asarray(fit.normalized_cov_params))[k:]
    return np.asarray(fit.params)[k:], np.asarray(fit.bse)[k:], cov, float(fit.df_resid)


def _waves(count: int, seed: int) -> list[Row]:
    """``count`` waves with shifted centres; every third a half fraction (C = AB)."""
    factors = ["A", "B", "C"]
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    for w in range(1, count + 1):
        design = ff2n(3) if w % 3 else fracfact("a b ab")
        for run in design:
            x = {f: float(v) for f, v in zip(factors, run, strict=True)}
            rows.append((x, model(x) + 0.1 * w + rng.normal(0.0, SIGMA), w))
    return rows


def test_many_waves_give_the_fit_with_an_intercept_per_wave() -> None:
    # Absorbing the wave intercepts by demeaning within each wave (what estimate_effects
    # does with several waves) gives the fit with a dummy column per wave, to rounding.
    factors = ["A", "B", "C"]
    rows = _waves(40, seed=9)
    params, bse, cov, df = _dummy_ols(rows, factors)
    for sigma in (SIGMA, None):
        table = estimate_effects(rows, factors, sigma=sigma, interactions=False)
        assert table.groups == tuple(range(1, 41)) and table.runs == len(rows)
        assert table.df_resid == round(df) and not table.dropped
        assert table.se_source == ("sigma" if sigma else "residual")
        assert [e.term for e in table.terms] == factors
        for i, e in enumerate(table.terms):
            assert e.estimate == pytest.approx(2 * params[i], rel=1e-9, abs=1e-12)
            se = 2 * SIGMA * math.sqrt(cov[i]) if sigma else 2 * bse[i]
            assert e.stderr == pytest.approx(se, rel=1e-9)
    # The fractions alias C with A:B; the full waves separate them, so nothing is dropped.
    table = estimate_effects(rows, factors, sigma=SIGMA)
    assert not table.dropped and len(table.terms) == 6
    # Only fractions: A:B is C (dropped), as with dummy columns.
    fractions = [r for r in rows if r[2] % 3 == 0]
    assert "A:B" in estimate_effects(fractions, factors, sigma=SIGMA).dropped


def test_thousands_of_waves_fit_in_a_moment() -> None:
    # A run of 100,000 experiments has a few thousand waves: with a dummy column per
    # wave, the rank checks and the fit took hours; within waves, a fraction of a second.
    import time

    rows = _waves(3000, seed=10)
    t0 = time.process_time()
    table = estimate_effects(rows, ["A", "B", "C"], sigma=SIGMA)
    assert time.process_time() - t0 < 10.0
    a = table.get("A")
    assert a is not None and abs(a.estimate - TRUE["A"]) < 4 * a.stderr
    assert table.df_resid == len(rows) - 3000 - 6


@pytest.mark.parametrize("sigma", [SIGMA, None])
def test_one_wave_fit_is_statsmodels_ols_bit_for_bit(sigma: float | None) -> None:
    # One wave is fitted by the pseudo-inverse as statsmodels' OLS(...).fit() does it
    # (without its objects): the same numbers to the last bit, so the factorial
    # proposer's decisions are what they were.
    import warnings

    from statsmodels.regression.linear_model import OLS

    from autoswarm.analysis.effects import _candidates, _fit_ols

    rng = np.random.default_rng(11)
    designs = [ff2n(2), ff2n(3), fracfact("a b ab"), fracfact("a b c abc"), ff2n(4)]
    for i in range(60):
        design = designs[i % len(designs)]
        factors = tuple("ABCD"[: design.shape[1]])
        reps = 1 + i % 3
        coded = np.tile(design, (reps, 1))[: len(design) * reps - (i % 2)]
        y = 1.0 + coded @ rng.normal(0, 0.02, coded.shape[1]) + rng.normal(0, SIGMA, len(coded))
        names, params, se, df_resid, source, _ = _fit_ols(y, coded, factors, i % 4 != 0, sigma)
        cols = {n: c for n, c in _candidates(coded, factors, i % 4 != 0)}
        X = np.column_stack([np.ones(len(y)) if n is None else cols[n] for n in names])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = OLS(y, X).fit()
            bse = np.asarray(fit.bse)
        assert np.array_equal(params, np.asarray(fit.params))
        assert df_resid == round(float(fit.df_resid))
        if sigma is not None:
            ref = np.sqrt(np.clip(np.diag(sigma**2 * fit.normalized_cov_params), 0.0, None))
            assert source == "sigma" and np.array_equal(se, ref)
        elif df_resid > 0:
            assert source == "residual" and np.array_equal(se, bse)
        else:
            assert source == "none" and np.isnan(se).all()
