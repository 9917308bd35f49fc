"""The keep rule on its own: how often it keeps a variant, by true gain and by noise.

Monte Carlo over :mod:`autoswarm.judge` exactly as the scheduler drives it (screen, the
fresh-seed confirmations, the second look), in units of the baseline's σ: a candidate
whose true value is ``gain`` σ better than the baseline, with ``spread`` × its noise,
compared with five baseline runs (``baseline_repeats``), the noise model fitted on the baseline and
``earlier`` repeated commits of three runs each (how much the run has measured so far)
plus the candidate's own runs. A kept candidate is then re-measured as a run does it:
re-measurements until its bar rests on as many fresh runs as the baseline has
(``best_runs`` = 0, five baseline runs), then the three end-of-run
validation runs (``final_runs`` with several slots), each reviewed as it comes in
(:func:`autoswarm.judge.review`); the table gives what still stands after each. Run
with ``autoswarm bench rule``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from autoswarm.judge import Action, Rule, judge, noise_model, review, screen

FINAL_RUNS = 3  # the end-of-run validation with several slots (final_runs = -1)
BASELINE_RUNS = 5  # baseline_repeats


@dataclass(frozen=True)
class RuleRow:
    earlier: int
    gain: float
    spread: float
    trials: int
    kept: float  # fraction kept
    runs: float  # runs per candidate (until the verdict)
    standing: float = 0.0  # fraction kept and not revoked by the re-measurements
    validated: float = 0.0  # ... nor by the end-of-run validation


def _candidate(
    rule: Rule, gain: float, spread: float, groups: list[list[float]], rng: random.Random
) -> tuple[int, int]:
    """How far a candidate got (0 discarded, 1 kept, 2 standing re-measured, 3 validated)
    and the runs its verdict took."""
    base = groups[0]

    def draw() -> float:
        return rng.gauss(-gain, spread)

    first = draw()
    v = screen(rule, first, base, 1, noise_model(groups), room=True)
    if v.action is not Action.CONFIRM:
        return int(v.action is Action.KEEP), 1
    values = [first] + [draw() for _ in range(v.runs)]
    look = 1
    while True:
        j = judge(rule, values, 1, base, 1, noise_model([*groups, values]), look=look, room=True)
        if j.action is not Action.CONFIRM:
            break
        values += [draw() for _ in range(j.runs)]
        look += 1
    if j.action is not Action.KEEP:
        return 0, len(values)
    runs, decided, reached = len(values), len(values), 1
    remeasure = max(0, len(base) - (decided - 1))  # best_runs = baseline_repeats
    for stage, more in ((2, remeasure), (3, FINAL_RUNS)):
        for _ in range(more):
            values.append(draw())
            noise = noise_model([*groups, values])
            action, _ = review(rule, values[1:], base, noise, values=values, kept_with=decided)
            if action is Action.REVOKE:
                return reached, runs
        reached = stage
    return reached, runs


def keep_rates(
    *,
    earlier: tuple[int, ...] = (0, 15),
    gains: tuple[float, ...] = (0.0, 2.0, 3.0, 4.0, 6.0),
    spreads: tuple[float, ...] = (1.0, 3.0, 8.0),
    null_trials: int = 20_000,
    trials: int = 3_000,
    seed: int = 21,
) -> list[RuleRow]:
    """Keep rates of the default rule (spreads other than 1 only for the null)."""
    rule = Rule()
    rng = random.Random(seed)
    rows = []
    for n in earlier:
        for gain in gains:
            for spread in spreads if gain == 0 else (1.0,):
                count = null_trials if gain == 0 else trials
                reached = [0, 0, 0, 0]
                runs = 0
                for _ in range(count):
                    groups = [[rng.gauss(0, 1) for _ in range(BASELINE_RUNS)]]
                    groups += [[rng.gauss(0, 1) for _ in range(3)] for _ in range(n)]
                    got, r = _candidate(rule, gain, spread, groups, rng)
                    reached[got] += 1
                    runs += r
                at_least = [sum(reached[i:]) / count for i in range(4)]
                rows.append(
                    RuleRow(
                        n, gain, spread, count, at_least[1], runs / count, at_least[2], at_least[3]
                    )
                )
    return rows


def markdown(rows: list[RuleRow]) -> str:
    head = (
        "| repeated commits measured before | true gain (σ) | spread | candidates | kept "
        "| standing after re-measurement | after validation | runs per candidate |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    return (
        head
        + "\n".join(
            f"| {r.earlier} | {r.gain:g} | {r.spread:g}× | {r.trials} | {100 * r.kept:.2f}% "
            f"| {100 * r.standing:.2f}% | {100 * r.validated:.2f}% | {r.runs:.2f} |"
            for r in rows
        )
        + "\n"
    )


__all__ = ["RuleRow", "keep_rates", "markdown"]
