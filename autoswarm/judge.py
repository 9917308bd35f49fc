"""Decisions on numbers: is a variant better than the best, given noise we only estimate?

Pure functions over plain values (no ledger, no git, no clock), so that every rule
below is tested on numbers (tests/unit/test_judge.py) and the scheduler only applies
the answer.

The problem, in the words of issue 13: a run compares hundreds or thousands of
candidates with a few bests; some variants widen the metric's seed-to-seed spread
(an unstable learning rate, a smaller evaluation); σ is estimated from a handful of
runs; and the run that selected a variant is biased by the selection. The rule:

1. **Noise model** (:func:`noise_model`). σ̂² is the pooled variance of every commit
   measured more than once (baseline repeats, confirmations, re-measurements), with
   ``df = Σ (n_i − 1)`` degrees of freedom; commits whose own spread is significantly
   wider are left out of the pool (they are *unstable*, see 3). How much single
   variants differ in spread is estimated from the same groups (the empirical-Bayes
   prior degrees of freedom ``d0`` of limma: Smyth 2004), and caps how far a variant's
   own few runs are pulled toward σ̂.
2. **Screen** (:func:`screen`). A first run is compared with the bar in σ̂: a gain of
   more than ``screen_sigmas`` standard errors earns ``confirm_runs`` runs with fresh
   seeds; anything else is discarded. No variant is kept on one run.
3. **Judge** (:func:`judge`). With its fresh runs in, the variant's own spread counts:
   its variance is moderated toward σ̂ (``(d0·σ̂² + (n−1)·s²) / (d0 + n − 1)``); when it
   is significantly wider than σ̂ (an F test at ``unstable_alpha``) it is *unstable* and
   judged with its own variance alone. Candidate and bar are compared by Welch's t
   test (unequal variances, Satterthwaite degrees of freedom, so an uncertain σ̂ costs
   what it should). Keep iff the one-sided p-value is below ``false_keep_rate / looks``
   (and the gain clears ``min_delta`` and ``keep_sigmas`` standard errors); short of that
   but promising (p < ``extend_p``), it gets ``confirm_runs`` more fresh runs and is
   judged again, at most ``looks`` (2) times in all.
4. **False keeps per run, not per candidate.** Each look tests all of a variant's runs
   at level ``false_keep_rate / looks`` whatever the screen did, so (union bound) a
   candidate with no effect is kept with probability at most ``false_keep_rate``: with the default 0.001, 1000
   candidates that change nothing keep at most 1 in expectation, at any slot count
   (this bounds the expected number of false keeps, E[V] ≤ m·α).
5. **Selection apart from estimation.** The bar a keep sets is the mean of its fresh
   runs only; the screening run that selected it is not averaged in (it is biased by
   the selection: the winner's curse). Both are recorded.
6. **Review** (:func:`review`). When a kept variant's fresh runs grow (re-measurements,
   the end-of-run validation, ``autoswarm reproduce``) and their mean is no longer
   better than the bar it replaced, the keep is *revoked*. So is a keep whose runs, now
   more of them, show it to be unstable, unless its fresh runs still beat the bar in a
   test with its own spread (one-sided, at ``review_p``): a noisy variant kept on three
   runs that happened to agree is caught by the end-of-run validation.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from autoswarm.types import Direction, Evidence

# A variant's spread is pulled toward σ̂ by at most this many degrees of freedom before
# the run has measured how much variants' spreads differ (fewer than MIN_GROUPS groups).
DEFAULT_PRIOR_DF = 4.0
MIN_GROUPS = 4

# ---------------------------------------------------------------------------
# Records


class Action(enum.Enum):
    """What the scheduler should do with a variant."""

    KEEP = "keep"
    DISCARD = "discard"
    CONFIRM = "confirm"  # run it again with fresh seeds before deciding
    STAND = "stand"  # a kept variant's evidence still holds
    REVOKE = "revoke"  # a kept variant's evidence no longer holds


@dataclass(frozen=True)
class Noise:
    """The run's noise model at one moment.

    Attributes:
        sigma: pooled seed-to-seed standard deviation σ̂ of the metric.
        df: its degrees of freedom (Σ (n_i − 1) over the pooled commits).
        prior_df: how many degrees of freedom σ̂ counts for when a variant's own spread
            is estimated from its few runs (``d0``, at most ``df``; ``inf`` when the run
            has seen no difference in spread between variants).
        groups: commits measured more than once.
        unstable: commits left out of the pool because their spread is wider.
    """

    sigma: float
    df: float
    prior_df: float
    groups: int = 1
    unstable: int = 0

    @property
    def known(self) -> bool:
        """True once σ̂ rests on at least one degree of freedom."""
        return self.df >= 1 and self.sigma > 0


@dataclass(frozen=True, kw_only=True)
class Rule:
    """Parameters of the rule (from [run] in autoswarm.toml)."""

    direction: Direction = Direction.MINIMIZE
    false_keep_rate: float = 0.001
    screen_sigmas: float = 1.0
    confirm_runs: int = 2
    keep_sigmas: float = 2.0
    min_delta: float = 0.0
    unstable_alpha: float = 0.01
    looks: int = 2  # judge a promising variant at most this many times (more runs each)
    extend_p: float = 0.05  # ... when its p-value is below this but not below the keep level
    review_p: float = 0.05  # an unstable keep's fresh runs must still beat its bar at this level


@dataclass(frozen=True)
class Verdict:
    """The answer: an action, the evidence, and (for CONFIRM) how many more runs."""

    action: Action
    evidence: Evidence
    runs: int = 0
    reason: str = ""
    extra: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# The noise model


def _var(values: Sequence[float]) -> float:
    return _variance(tuple(values))


@functools.lru_cache(maxsize=1 << 16)
def _variance(values: tuple[float, ...]) -> float:
    # Two passes of exactly rounded sums (math.fsum): within a few units in the last place
    # of the exact variance, at a twentieth of statistics.variance's rational arithmetic.
    # A run of 100,000 experiments has some 25,000 repeated commits, and the noise model
    # (per result, and in `status`) reads each one's variance three times; between two
    # results only one commit's runs change, so the others' come from here.
    n = len(values)
    if n < 2:
        return 0.0
    mean = math.fsum(values) / n
    return math.fsum((x - mean) ** 2 for x in values) / (n - 1)


def _f_sf(ratio: float, df1: float, df2: float) -> float:
    """P(F(df1, df2) > ratio): the chance equal spreads look this different."""
    from scipy import special

    if not math.isfinite(df2):
        return float(special.chdtrc(df1, ratio * df1))
    return float(special.fdtrc(df1, df2, ratio))


def _prior_df(groups: Sequence[Sequence[float]]) -> float:
    """Empirical-Bayes prior degrees of freedom of the group variances (limma's fitFDist).

    Small when groups differ in spread more than sampling explains (so a variant's own
    runs count for more), infinite when they do not.
    """
    import numpy as np
    from scipy import special

    rows = [(len(g) - 1, _var(g)) for g in groups if len(g) > 1 and _var(g) > 0]
    if len(rows) < MIN_GROUPS:
        return DEFAULT_PRIOR_DF
    half = np.array([d / 2 for d, _ in rows], dtype=float)
    e = np.log(np.array([s2 for _, s2 in rows], dtype=float)) - special.digamma(half)
    e += np.log(half)
    evar = float(np.var(e, ddof=1)) - float(np.mean(special.polygamma(1, half)))
    if evar <= 0:
        return math.inf
    return float(2.0 * _trigamma_inverse(float(evar)))


def _trigamma_inverse(y: float) -> float:
    """x with trigamma(x) = y (Newton's method, as limma's trigammaInverse)."""
    from scipy import special

    if y > 1e7:
        return 1.0 / math.sqrt(y)
    if y < 1e-6:
        return 1.0 / y
    x = 0.5 + 1.0 / y
    for _ in range(50):
        tri = float(special.polygamma(1, x))
        step = tri * (1 - tri / y) / float(special.polygamma(2, x))
        x += step
        if -step / x < 1e-8:
            break
    return x


def noise_model(groups: Sequence[Sequence[float]]) -> Noise:
    """σ̂ pooled over the commits measured more than once (the first group: the baseline).

    A group whose spread is significantly wider than the pool of the others (F test at
    1%) is *unstable* and left out, so one lottery-like variant does not blind the rule
    to every real gain after it. The baseline group always counts.
    """
    import numpy as np
    from scipy import special

    multi = [tuple(g) for g in groups if len(g) > 1]
    if not multi:
        return Noise(sigma=0.0, df=0.0, prior_df=0.0, groups=0)
    dfs = np.array([len(g) - 1 for g in multi], dtype=float)
    var = np.array([_var(g) for g in multi], dtype=float)
    df_all, ss_all = dfs.sum(), (dfs * var).sum()
    df_o = df_all - dfs  # the pool of the others, group by group
    with np.errstate(divide="ignore", invalid="ignore"):
        s2_o = np.where(df_o > 0, (ss_all - dfs * var) / np.where(df_o > 0, df_o, 1), 0.0)
        ratio = np.where(s2_o > 0, var / np.where(s2_o > 0, s2_o, 1), 0.0)
    p = special.fdtrc(dfs, np.maximum(df_o, 1), ratio)
    wide = (s2_o > 0) & (df_o > 0) & (p < 0.01)
    wide[0] = False  # the baseline always counts
    keep = ~wide
    df = float(dfs[keep].sum())
    sigma = math.sqrt(float((dfs[keep] * var[keep]).sum()) / df) if df else 0.0
    prior = float(min(_prior_df(multi), df))
    return Noise(sigma=sigma, df=df, prior_df=prior, groups=len(multi), unstable=int(wide.sum()))


def _side(values: Sequence[float], noise: Noise, *, own: bool) -> tuple[float, float]:
    """Variance of one run and its degrees of freedom for one side of the comparison.

    ``own``: the variant's own spread alone (an unstable variant); otherwise its runs'
    variance moderated toward σ̂ with the prior's degrees of freedom.
    """
    n = len(values)
    s2 = _var(values)
    if own and n > 1:
        return s2, float(n - 1)
    d0 = noise.prior_df
    if not math.isfinite(d0):
        return noise.sigma**2, noise.df
    moderated = (d0 * noise.sigma**2 + (n - 1) * s2) / (d0 + n - 1) if d0 + n - 1 > 0 else s2
    if moderated <= noise.sigma**2:
        # Never narrower than the pool (a few runs that happen to agree prove little);
        # then the variance is σ̂², as certain as σ̂ is.
        return noise.sigma**2, noise.df
    return moderated, d0 + n - 1


def _is_unstable(values: Sequence[float], noise: Noise, rule: Rule) -> bool:
    if len(values) < 2 or not noise.known:
        return False
    return _f_sf(_var(values) / noise.sigma**2, len(values) - 1, noise.df) < rule.unstable_alpha


def _welch(
    rule: Rule, values: Sequence[float], bar: Sequence[float], noise: Noise, *, unstable: bool
) -> tuple[float, float, float, float, float]:
    """gain, se, t, df, one-sided p of ``values`` being better than ``bar``."""
    from scipy import special

    gain = rule.direction.improvement(statistics.fmean(bar), statistics.fmean(values))
    v_c, df_c = _side(values, noise, own=unstable)
    v_b, df_b = _side(bar, noise, own=False)
    a, b = v_c / len(values), v_b / len(bar)
    se = math.sqrt(a + b)
    if se <= 0:
        return (
            gain,
            0.0,
            (math.copysign(math.inf, gain) if gain else 0.0),
            math.inf,
            (0.0 if gain > 0 else 1.0),
        )
    t = gain / se
    if df_c <= 0 or df_b <= 0:
        return gain, se, t, 0.0, 1.0  # a side without a degree of freedom: nothing concluded
    parts = sum(x * x / d for x, d in ((a, df_c), (b, df_b)) if math.isfinite(d))
    df = (a + b) ** 2 / parts if parts > 0 else math.inf
    # Both sides lean on the same σ̂ (the bar's runs are in its pool): Satterthwaite would
    # count its degrees of freedom twice, so no more than either side's own are used.
    df = min(df, df_c, df_b)
    p = float(special.stdtr(df, -t)) if math.isfinite(df) else float(special.ndtr(-t))
    return gain, se, t, df, p


def _evidence(
    rule: Rule,
    values: Sequence[float],
    selected: int,
    bar: Sequence[float],
    bar_id: int,
    noise: Noise,
    *,
    unstable: bool,
) -> Evidence:
    gain, se, t, df, p = _welch(rule, values, bar, noise, unstable=unstable)
    return Evidence(
        values=tuple(values),
        selected=tuple(values[:selected]),
        fresh=tuple(values[selected:]),
        bar=tuple(bar),
        bar_id=bar_id,
        sigma=noise.sigma,
        sigma_df=noise.df,
        own_sigma=math.sqrt(_var(values)),
        gain=gain,
        se=se,
        t=t,
        df=df,
        p=p,
        alpha=rule.false_keep_rate,
        unstable=unstable,
    )


# ---------------------------------------------------------------------------
# Decisions


def screen(
    rule: Rule, first: float, bar: Sequence[float], bar_id: int, noise: Noise, *, room: bool
) -> Verdict:
    """A first run: CONFIRM (with ``rule.confirm_runs`` fresh seeds) or DISCARD.

    ``room``: whether the run's limits leave room for more runs; without it a promising
    variant is judged on its single run (and almost never kept).
    """
    ev = _evidence(rule, [first], 1, bar, bar_id, noise, unstable=False)
    se1 = noise.sigma * math.sqrt(1 + 1 / len(bar))
    z = ev.gain / se1 if se1 > 0 else (math.inf if ev.gain > 0 else 0.0)
    promising = ev.gain > rule.min_delta and z > rule.screen_sigmas
    if promising and rule.confirm_runs > 0 and room:
        return Verdict(Action.CONFIRM, ev, runs=rule.confirm_runs)
    if promising:
        return judge(rule, [first], 1, bar, bar_id, noise)
    return Verdict(Action.DISCARD, ev)


def judge(
    rule: Rule,
    values: Sequence[float],
    selected: int,
    bar: Sequence[float],
    bar_id: int,
    noise: Noise,
    *,
    look: int = 1,
    room: bool = False,
) -> Verdict:
    """KEEP, DISCARD or CONFIRM (more fresh runs) on all of a variant's runs.

    ``values[:selected]`` selected it; ``look`` counts the batches of fresh runs judged so
    far (1 after the first confirmations). The test is made at most ``rule.looks`` times,
    each at ``false_keep_rate / looks`` (so the chance of a false keep over all looks
    stays below ``false_keep_rate``: the union bound); a variant short of that but
    promising (p < ``extend_p``) gets another ``confirm_runs`` fresh runs when ``room``.
    """
    unstable = _is_unstable(values, noise, rule)
    ev = _evidence(rule, values, selected, bar, bar_id, noise, unstable=unstable)
    looks = max(1, rule.looks) if rule.confirm_runs > 0 else 1
    ev = dataclasses.replace(ev, alpha=rule.false_keep_rate / looks)
    why = ""
    if unstable:
        why = (
            f"unstable: its spread (σ {ev.own_sigma:.4g} over {len(values)} runs) is wider "
            f"than the noise (σ {noise.sigma:.4g}); judged with its own σ"
        )
    wins = ev.gain > rule.min_delta and ev.t >= rule.keep_sigmas
    keep = wins and ev.p < ev.alpha and (len(values) > selected or rule.confirm_runs == 0)
    if keep:
        return Verdict(Action.KEEP, ev, reason=why)
    more = room and look < looks and not unstable
    if more and ev.gain > rule.min_delta and ev.p < rule.extend_p:
        return Verdict(Action.CONFIRM, ev, runs=rule.confirm_runs, reason=why)
    return Verdict(Action.DISCARD, ev, reason=why)


def review(
    rule: Rule,
    fresh: Sequence[float],
    bar: Sequence[float],
    noise: Noise,
    *,
    values: Sequence[float] = (),
    kept_with: int = 0,
) -> tuple[Action, str]:
    """STAND or REVOKE a keep, from its fresh runs against the bar it replaced; and why.

    Revoked when the mean of the runs measured after the selection is no better than
    that bar (by more than ``min_delta``): the selection was luck. ``values`` are all of
    the variant's runs (the selecting ones too); when they show the variant to be
    *unstable* (its spread significantly wider than σ̂, which a few runs may not have
    shown when it was kept), the runs made after the keep (``values[kept_with:]``, the
    only ones no decision has selected; the fresh runs while there are none) must also
    beat the bar in a test with the variant's own spread, at the lenient level
    ``review_p``. A noisy variant whose confirmation runs were lucky too is caught this
    way once more runs show its spread.
    """
    if not fresh or not bar:
        return Action.STAND, "nothing to review"
    gain = rule.direction.improvement(statistics.fmean(bar), statistics.fmean(fresh))
    if gain <= rule.min_delta:
        return Action.REVOKE, "no better than the bar it replaced"
    every = list(values) or list(fresh)
    if len(every) < 3 or not _is_unstable(every, noise, rule):
        return Action.STAND, "better than the bar it replaced"
    from scipy import special

    after = list(values[kept_with:]) if 0 < kept_with < len(values) else list(fresh)
    gain = rule.direction.improvement(statistics.fmean(bar), statistics.fmean(after))
    v_c, df_c = _var(every), float(len(every) - 1)
    v_b, df_b = _side(bar, noise, own=False)
    a, b = v_c / len(after), v_b / len(bar)
    parts = sum(x * x / d for x, d in ((a, df_c), (b, df_b)) if math.isfinite(d) and d > 0)
    df = min((a + b) ** 2 / parts if parts > 0 else math.inf, df_c)
    p = float(special.stdtr(df, -gain / math.sqrt(a + b)))
    spread = (
        f"unstable (σ {math.sqrt(v_c):.4g} over {len(every)} runs, noise σ {noise.sigma:.4g}); "
        f"with its own spread, p={p:.3g} against the bar it replaced"
    )
    return (Action.STAND if p < rule.review_p else Action.REVOKE), spread


def standard_error(rule: Rule, values: Sequence[float], noise: Noise) -> float | None:
    """The standard error of the mean of ``values``, as the rule would judge them.

    With σ̂ moderated by the variant's own spread, or its own spread alone when that is
    significantly wider (an unstable variant): what a reported best's ± should be.
    None without a noise model or runs.
    """
    if not values or not (noise.known or len(values) > 1):
        return None
    if not noise.known:
        return math.sqrt(_var(values) / len(values))
    unstable = len(values) > 2 and _is_unstable(values, noise, rule)
    v, _ = _side(values, noise, own=unstable)
    return math.sqrt(v / len(values))


def claim(
    rule: Rule, recorded: float, runs: Sequence[float], noise: Noise
) -> tuple[bool, float, float]:
    """Whether fresh ``runs`` support a ``recorded`` value: (holds, mean, se).

    It holds when the recorded value lies inside the two-sided 95% interval of the new
    mean (with σ̂'s own uncertainty, t quantiles), or the new mean is better.
    """
    from scipy import special

    mean = statistics.fmean(runs)
    v, df = _side(runs, noise, own=len(runs) > 2 and _is_unstable(runs, noise, rule))
    se = math.sqrt(v / len(runs)) if v > 0 else 0.0
    worse = rule.direction.improvement(mean, recorded)  # > 0: recorded better than now
    if se == 0:
        return worse <= 0, mean, se
    q = float(special.stdtrit(df, 0.975)) if math.isfinite(df) and df > 0 else 1.96
    return worse <= q * se, mean, se


def slowed(steps: Sequence[float | None], *, ratio: float = 0.9) -> list[int]:
    """Indexes of repeats that ran far fewer steps than the others (other load on the machine).

    A repeat of the same files with the same budget that made fewer than ``ratio`` × the
    median number of steps of the others was slowed by something else on the machine;
    its value says more about that load than about the noise. Needs three repeats with
    steps at least.
    """
    known = [(i, s) for i, s in enumerate(steps) if s is not None and s > 0]
    if len(known) < 3:
        return []
    out = []
    for i, s in known:
        others = statistics.median(x for j, x in known if j != i)
        if s < ratio * others:
            out.append(i)
    return out if len(out) < len(known) / 2 else []


__all__ = [
    "Action",
    "Evidence",
    "Noise",
    "Rule",
    "Verdict",
    "claim",
    "judge",
    "noise_model",
    "review",
    "screen",
    "slowed",
    "standard_error",
]
