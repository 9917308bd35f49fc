"""Main and interaction effects of knobs, estimated from factorial waves.

A *wave* is a two-level design around one centre (see
:mod:`autoswarm.proposers.factorial`): every run sets each factor to a coded level
-1 (one step down) or +1 (one step up). This module fits, by ordinary least squares
(the pseudo-inverse, computed as statsmodels' OLS computes it)::

    y = Σ_g α_g·[wave = g]  +  Σ_i β_i·x_i  +  Σ_{i<j} β_ij·x_i·x_j  +  ε

with one intercept per wave (each wave has its own centre, so its own level), the
main effects and every estimable two-way interaction. Interaction columns that are
aliased in the data (a resolution III/IV fraction, a partial wave) are dropped by a
rank check, so a rank-deficient design never crashes the fit. With several waves the
intercepts are not columns: each wave's mean is subtracted instead (the same fit, see
``_fit_within``), so a run's thousands of waves cost no more than one.

**Convention.** An effect is the change of the metric when a factor goes from its
-1 level to its +1 level, i.e. ``2·β`` (for an interaction: half the difference
between one factor's effect at the other's +1 and at its -1, again ``2·β_ij``).
Standard errors use the measured seed-to-seed noise σ when it is known
(``cov = σ²·(XᵀX)⁻¹``, normal p-values), else the OLS residuals when there are
degrees of freedom left (t p-values), else they are NaN.

Everything here is a pure function over rows or ledger records; ``autoswarm effects``
and ``autoswarm status --json`` show :func:`effects_from_experiments`::

    table = effects_from_experiments(ledger.experiments(run_id), "val_bpb", sigma=0.002)
    for e in table.terms:
        print(e.term, e.estimate, e.stderr, e.p_value)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

from autoswarm.types import Experiment, Kind, Status

# One observation: coded levels {factor: -1 | +1 (0 = centre)}, the metric, its wave.
Row = tuple[Mapping[str, float], float, Hashable]

# ---------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Effect:
    """One estimated term.

    Attributes:
        term: ``"LR"`` for a main effect, ``"LR:WIDTH"`` for a two-way interaction.
        factors: the factors of the term (one or two).
        estimate: change of the metric from level -1 to +1 (2 × the coded coefficient).
        stderr: standard error of ``estimate`` (NaN when it cannot be estimated).
        z: ``estimate / stderr`` (a z score with known σ, a t score with residual σ).
        p_value: two-sided p-value (normal with known σ, t with residual σ; NaN if unknown).
        n: runs contributing (rows where every factor of the term is non-zero).
    """

    term: str
    factors: tuple[str, ...]
    estimate: float
    stderr: float
    z: float
    p_value: float
    n: int

    @property
    def is_interaction(self) -> bool:
        return len(self.factors) > 1

    def significant(self, alpha: float) -> bool:
        """True when the p-value is known and below ``alpha``."""
        return math.isfinite(self.p_value) and self.p_value < alpha


@dataclass(frozen=True)
class EffectsTable:
    """All estimated terms of one fit.

    Attributes:
        terms: main effects first (in factor order), then interactions.
        factors: the factors the fit was asked about.
        groups: the waves (groups) present in the data, in first-seen order.
        runs: observations used.
        df_resid: residual degrees of freedom of the fit.
        sigma: the noise used for standard errors (None when residuals or nothing were).
        se_source: ``"sigma"``, ``"residual"`` or ``"none"``.
        dropped: terms that were not estimable in the data (aliased or constant).
    """

    terms: tuple[Effect, ...] = ()
    factors: tuple[str, ...] = ()
    groups: tuple[Hashable, ...] = ()
    runs: int = 0
    df_resid: int = 0
    sigma: float | None = None
    se_source: str = "none"
    dropped: tuple[str, ...] = ()

    def get(self, term: str) -> Effect | None:
        """The term named ``term`` (``"A"`` or ``"A:B"``, either order), or None."""
        for e in self.terms:
            if e.term == term or (e.is_interaction and ":".join(reversed(e.factors)) == term):
                return e
        return None

    @property
    def main_effects(self) -> tuple[Effect, ...]:
        return tuple(e for e in self.terms if not e.is_interaction)

    def as_records(self) -> list[dict[str, Any]]:
        """JSON-ready rows (NaN and infinities become None)."""
        return [
            {
                "term": e.term,
                "estimate": _finite(e.estimate),
                "stderr": _finite(e.stderr),
                "z": _finite(e.z),
                "p_value": _finite(e.p_value),
                "n": e.n,
            }
            for e in self.terms
        ]


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# ---------------------------------------------------------------------------
# The fit


def estimate_effects(
    rows: Iterable[Row],
    factors: Sequence[str],
    *,
    sigma: float | None,
    interactions: bool = True,
) -> EffectsTable:
    """Fit per-wave intercepts, main effects and two-way interactions by least squares.

    Args:
        rows: ``(coded levels, value, group)``; levels are -1/+1 (0 for a centre point or
            a factor the row's wave did not vary); missing factors count as 0. Rows with
            a non-finite value are ignored.
        factors: the factors to estimate, in report order.
        sigma: the seed-to-seed noise of one measurement. When it is a positive finite
            number the standard errors are ``σ·sqrt(diag((XᵀX)⁻¹))`` (doubled, like the
            estimates); otherwise they come from the residuals (if any degrees of
            freedom are left) or are NaN.
        interactions: also fit every estimable two-way interaction.

    Returns:
        The table; each estimate is the change from level -1 to +1 (2 × the coefficient).
        Terms that cannot be estimated (aliased with earlier columns, or constant within
        every wave) are listed in ``dropped`` instead.
    """
    data = [(lv, float(v), g) for lv, v, g in rows if math.isfinite(float(v))]
    factors = tuple(factors)
    known_sigma = sigma if sigma is not None and math.isfinite(sigma) and sigma > 0 else None
    if not data:
        return EffectsTable(factors=factors, sigma=known_sigma)
    groups: list[Hashable] = []
    for _, _, g in data:
        if g not in groups:
            groups.append(g)
    y = np.array([v for _, v, _ in data])
    coded = np.array([[float(lv.get(f, 0.0)) for f in factors] for lv, _, _ in data])
    if coded.size == 0:
        coded = np.zeros((len(data), 0))

    if len(groups) > 1:
        names, params, se, df_resid, source, dropped = _fit_within(
            y, coded, [g for _, _, g in data], groups, factors, interactions, known_sigma
        )
    else:
        names, params, se, df_resid, source, dropped = _fit_ols(
            y, coded, factors, interactions, known_sigma
        )

    estimated = [(idx, name) for idx, name in enumerate(names) if name is not None]
    zs = []
    for idx, _ in estimated:
        est, err = 2.0 * params[idx], 2.0 * se[idx]
        zs.append(est / err if err > 0 else math.nan)
    # The p-values in one call (scipy's per-call overhead is most of a one-wave fit).
    finite = [abs(z) for z in zs if math.isfinite(z)]
    if not finite:
        sf = np.zeros(0)
    elif source == "sigma":
        sf = stats.norm.sf(np.array(finite))
    else:
        sf = stats.t.sf(np.array(finite), df_resid)
    tails = iter(sf)
    terms: list[Effect] = []
    for (idx, name), z in zip(estimated, zs, strict=True):
        est, err = 2.0 * params[idx], 2.0 * se[idx]
        p = float(2.0 * next(tails)) if math.isfinite(z) else math.nan
        cols = [factors.index(f) for f in name]
        n = int(np.sum(np.all(coded[:, cols] != 0, axis=1)))
        terms.append(Effect(":".join(name), name, float(est), float(err), float(z), p, n))
    return EffectsTable(
        terms=tuple(terms),
        factors=factors,
        groups=tuple(groups),
        runs=len(data),
        df_resid=df_resid,
        sigma=known_sigma,
        se_source=source,
        dropped=tuple(dropped),
    )


# One fit's result: the column names (None = an intercept), coefficients, their standard
# errors, residual degrees of freedom, the source of the errors, the terms dropped.
_Fit = tuple[list[tuple[str, ...] | None], np.ndarray, np.ndarray, int, str, list[str]]


def _candidates(
    coded: np.ndarray, factors: tuple[str, ...], interactions: bool
) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """Main-effect then interaction columns, in the order they are offered to the fit."""
    columns: list[tuple[tuple[str, ...], np.ndarray]] = [
        ((f,), coded[:, i]) for i, f in enumerate(factors)
    ]
    if interactions:
        for i, j in combinations(range(len(factors)), 2):
            columns.append(((factors[i], factors[j]), coded[:, i] * coded[:, j]))
    return columns


def _fit_ols(
    y: np.ndarray,
    coded: np.ndarray,
    factors: tuple[str, ...],
    interactions: bool,
    known_sigma: float | None,
) -> _Fit:
    """One wave: intercept, main effects, interactions by OLS (the pseudo-inverse)."""
    # Candidate columns in order of importance: the intercept, main effects,
    # interactions. A column is kept only if it adds rank, so the aliased ones go.
    columns: list[tuple[tuple[str, ...] | None, np.ndarray]] = [(None, np.ones(len(y)))]
    columns += _candidates(coded, factors, interactions)
    kept: list[tuple[tuple[str, ...] | None, np.ndarray]] = []
    dropped: list[str] = []
    rank = 0
    for name, col in columns:
        trial = np.column_stack([c for _, c in kept] + [col])
        r = int(np.linalg.matrix_rank(trial))
        if r > rank:
            kept.append((name, col))
            rank = r
        elif name is not None:
            dropped.append(":".join(name))
    X = np.column_stack([c for _, c in kept])
    pinv, singular = _pinv(X)
    params = np.dot(pinv, y)
    normalized_cov = np.dot(pinv, np.transpose(pinv))
    df = float(X.shape[0]) - int(np.linalg.matrix_rank(np.diag(singular)))
    df_resid = round(df)
    if known_sigma is not None:
        cov = known_sigma**2 * normalized_cov
        se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        source = "sigma"
    elif df_resid > 0:
        resid = y - np.dot(X, params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            se = np.sqrt(np.diag(normalized_cov * (np.dot(resid, resid) / df)))
        source = "residual"
    else:
        se = np.full(len(params), math.nan)
        source = "none"
    return [name for name, _ in kept], params, se, df_resid, source, dropped


def _pinv(x: np.ndarray, rcond: float = 1e-15) -> tuple[np.ndarray, np.ndarray]:
    """The pseudo-inverse of ``x`` and its singular values, as statsmodels computes them.

    ``statsmodels.OLS(y, X).fit()`` (method "pinv", which this fit used) is
    ``params = pinv·y``, ``normalized_cov_params = pinv·pinvᵀ``, ``df_resid = n - rank``
    and ``bse = sqrt(diag(normalized_cov_params · residᵀresid / df_resid))`` with this
    pinv (its ``tools.pinv_extended``); the same operations in the same order give the
    same numbers (tests/unit/test_effects.py compares them bit for bit) without its
    model and results objects, which cost more than the fit of one wave (a resumed
    run re-analyses each of its waves) and two seconds of imports.
    """
    u, s, vt = np.linalg.svd(x.conjugate(), False)
    singular = np.copy(s)
    cutoff = rcond * np.maximum.reduce(s)
    for i in range(min(u.shape[0], vt.shape[1])):
        s[i] = 1.0 / s[i] if s[i] > cutoff else 0.0
    return np.dot(np.transpose(vt), np.multiply(s[:, np.newaxis], np.transpose(u))), singular


def _fit_within(
    y: np.ndarray,
    coded: np.ndarray,
    labels: Sequence[Hashable],
    groups: Sequence[Hashable],
    factors: tuple[str, ...],
    interactions: bool,
    known_sigma: float | None,
) -> _Fit:
    """Several waves: the same fit as one intercept column per wave, without the columns.

    By the Frisch-Waugh-Lovell theorem, regressing the wave-demeaned metric on the
    wave-demeaned columns gives the same coefficients, residuals and covariance of the
    effects as the fit with an intercept per wave; a column adds rank to the intercepts
    exactly when its demeaned copy adds rank. So a run with thousands of waves costs a
    fit of a dozen columns, not of thousands: with a column per wave, each rank check was
    an SVD of every row by every column kept so far, and ``autoswarm status`` took 6 s at
    10,000 experiments (200 waves) and did not finish in two minutes at 100,000 (2,000
    waves; docs/benchmarks.md, "The run's state at scale").
    """
    index = {g: i for i, g in enumerate(groups)}
    gi = np.array([index[g] for g in labels])
    counts = np.bincount(gi, minlength=len(groups)).astype(float)

    def within(col: np.ndarray) -> np.ndarray:
        return col - (np.bincount(gi, weights=col, minlength=len(groups)) / counts)[gi]

    kept: list[tuple[tuple[str, ...], np.ndarray]] = []
    dropped: list[str] = []
    rank = 0
    for name, col in _candidates(coded, factors, interactions):
        d = within(col)
        r = int(np.linalg.matrix_rank(np.column_stack([c for _, c in kept] + [d])))
        if r > rank:
            kept.append((name, d))
            rank = r
        else:
            dropped.append(":".join(name))
    df_resid = len(y) - len(groups) - len(kept)
    if not kept:
        return [], np.zeros(0), np.zeros(0), df_resid, "none", dropped
    X = np.column_stack([c for _, c in kept])
    yd = within(y)
    params = np.linalg.pinv(X) @ yd
    normalized_cov = np.linalg.pinv(X.T @ X)
    if known_sigma is not None:
        se = np.sqrt(np.clip(np.diag(known_sigma**2 * normalized_cov), 0.0, None))
        source = "sigma"
    elif df_resid > 0:
        resid = yd - X @ params
        scale = float(resid @ resid) / df_resid
        se = np.sqrt(np.clip(np.diag(scale * normalized_cov), 0.0, None))
        source = "residual"
    else:
        se = np.full(len(params), math.nan)
        source = "none"
    names: list[tuple[str, ...] | None] = [name for name, _ in kept]
    return names, params, se, df_resid, source, dropped


# ---------------------------------------------------------------------------
# From the ledger

_USABLE = (Status.KEEP, Status.DISCARD, Status.PENDING)


def rows_from_experiments(
    experiments: Sequence[Experiment], metric: str, *, wave: int | None = None
) -> tuple[list[Row], tuple[str, ...]]:
    """Design rows of factorial-wave experiments, and the factors they vary.

    A candidate counts when its meta has ``"design"`` ({knob: -1|+1}) and ``"wave"``,
    it finished as keep/discard/pending and ``metric`` is finite. A confirmation run
    (kind CONFIRM, meta ``"confirms"`` = the candidate's id) counts as one more
    replicate of its candidate's design point.
    """
    by_id = {e.id: e for e in experiments}
    rows: list[Row] = []
    factors: list[str] = []
    for e in experiments:
        if e.status not in _USABLE:
            continue
        value = e.value(metric)
        if value is None:
            continue
        src: Experiment | None = e
        if e.kind is Kind.CONFIRM:
            src = by_id.get(e.rerun_of) if e.rerun_of is not None else None
        elif e.kind is not Kind.CANDIDATE:
            continue
        if src is None:
            continue
        design, w = src.meta.get("design"), src.meta.get("wave")
        if not isinstance(design, Mapping) or not isinstance(w, int) or isinstance(w, bool):
            continue
        if wave is not None and w != wave:
            continue
        levels = {str(k): float(v) for k, v in design.items()}
        factors.extend(f for f in levels if f not in factors)
        rows.append((levels, value, w))
    return rows, tuple(factors)


def effects_from_experiments(
    experiments: Sequence[Experiment],
    metric: str,
    sigma: float | None,
    *,
    interactions: bool = True,
    wave: int | None = None,
) -> EffectsTable:
    """Effects of every knob varied by the run's factorial waves (one intercept per wave).

    Args:
        experiments: a run's experiments (e.g. ``ledger.experiments(run_id)``).
        metric: the metric to analyse (e.g. ``"val_bpb"``).
        sigma: the measured seed-to-seed noise (the baseline's σ), or None.
        interactions: also fit two-way interactions.
        wave: only this wave's runs (None: all waves).

    Returns:
        The :class:`EffectsTable`, factors sorted by name.
    """
    rows, factors = rows_from_experiments(experiments, metric, wave=wave)
    return estimate_effects(rows, sorted(factors), sigma=sigma, interactions=interactions)


__all__ = [
    "Effect",
    "EffectsTable",
    "Row",
    "effects_from_experiments",
    "estimate_effects",
    "rows_from_experiments",
]
