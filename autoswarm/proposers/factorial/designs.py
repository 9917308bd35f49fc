"""Designs and paths: where a factorial wave puts its points, and where a path goes next.

Pure functions over knob spaces, no state:

* :func:`two_level_design`: a 2^k or 2^(k-p) design (pyDOE3) sized to the runs of a
  wave, of the highest resolution found, and its other fractions for a second wave;
* :func:`factor_levels`: each knob's value at level -1 and +1 (one-sided at the edge of its
  range, never at or past a crash wall);
* :func:`path_steps` / :func:`path_values`: points further along the path of steepest
  descent of a wave's fitted effects, as whole steps of each winner and as knob values;
  :func:`path_space` is how far such a point may travel.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import string
from collections.abc import Mapping, Sequence

import numpy as np
from pyDOE3 import ff2n, fracfact

from autoswarm.analysis.effects import Effect
from autoswarm.knobs import Knob, Literal, Space
from autoswarm.proposers.factorial.walls import Wall, walled
from autoswarm.proposers.knobs import step
from autoswarm.types import Direction

# ---------------------------------------------------------------------------
# Designs


def two_level_design(k: int, runs: int, variant: int = 0) -> tuple[np.ndarray, int]:
    """A 2-level design for ``k`` factors in at most ``runs`` runs, and its resolution.

    A full factorial (``ff2n``) when ``2**k <= runs``; otherwise a regular fraction
    ``2**(k-p)`` with ``2**(k-p) = runs`` built by ``pyDOE3.fracfact`` from generators
    of the highest resolution found (V, IV, else III). ``variant`` picks one of the
    other fractions of the same family (generator signs flipped), so a second wave
    over the same factors and centre tries new points.

    Args:
        k: number of factors (1 ≤ k < runs).
        runs: a power of two.
        variant: which fraction (its bits flip the generators' signs).

    Returns:
        ``(design, resolution)``: an (n, k) array of ±1, and the resolution (the length
        of the shortest word of the defining relation; ``k + 1`` for a full factorial).
    """
    if k < 1:
        raise ValueError("a design needs at least one factor")
    if 2**k <= runs:
        return ff2n(k), k + 1
    base = max(1, runs.bit_length() - 1)
    if k >= 2**base:
        raise ValueError(f"{k} factors do not fit in {2**base} runs")
    letters = string.ascii_lowercase[:base]
    best: tuple[list[str], int] | None = None
    for want in (5, 4, 3):
        words = [
            "".join(c)
            for r in range(max(2, want - 1), base + 1)
            for c in itertools.combinations(letters, r)
        ][: k - base]
        if len(words) < k - base:
            continue
        res = _resolution(words)
        if best is None or res > best[1]:
            best = (words, res)
        if res >= want:
            break
    assert best is not None  # words of length >= 2 always suffice when k < 2**base
    words, res = best
    signs = ["-" if variant >> i & 1 else "" for i in range(len(words))]
    gen = " ".join([*letters, *(s + w for s, w in zip(signs, words, strict=True))])
    return fracfact(gen), res


def _resolution(words: Sequence[str]) -> int:
    """Length of the shortest word in the defining relation of generators ``words``."""
    defining = [frozenset(w) | {f"x{i}"} for i, w in enumerate(words)]
    shortest = math.inf
    for r in range(1, len(defining) + 1):
        for subset in itertools.combinations(defining, r):
            word: frozenset[str] = frozenset()
            for d in subset:
                word = word ^ d
            shortest = min(shortest, len(word))
    return int(shortest)


def factor_levels(
    spaces: Mapping[str, Space],
    knobs: Mapping[str, Knob],
    size: int,
    walls: Mapping[str, Wall] | None = None,
) -> dict[str, tuple[Literal, Literal]]:
    """(level -1, level +1) of every knob that can move by ``size`` steps (one way at least).

    A level at or past a crash wall (see :mod:`autoswarm.proposers.factorial.walls`) is
    not used.
    """
    walls = walls or {}
    out: dict[str, tuple[Literal, Literal]] = {}
    for name, space in spaces.items():
        if name not in knobs:
            continue
        if space.kind == "bool":
            if size == 1:
                out[name] = (False, True)
            continue
        value = knobs[name].value
        lo, hi = step(space, value, -1, size), step(space, value, 1, size)
        lo = None if walled(walls.get(name), lo) else lo
        hi = None if walled(walls.get(name), hi) else hi
        # A knob at the edge of its range (a ratio at 0.0, one head) is varied one-sided:
        # its current value and one step inwards.
        lo = value if lo is None else lo
        hi = value if hi is None else hi
        if lo != hi:
            out[name] = (lo, hi)
    return out


# ---------------------------------------------------------------------------
# The path of steepest descent

# Multiples of the steepest factor's step tried along the path of steepest descent,
# in the order they are added as the wave size allows (see path_steps).
PATH = (2, 4, 8, 3, 6, 12)


def path_steps(
    winners: Sequence[Effect],
    *,
    origin: Mapping[str, Literal],
    wave_levels: Mapping[str, Sequence[Literal | None]],
    best: Mapping[str, Knob],
    direction: Direction,
    count: int,
) -> list[dict[str, int]]:
    """Up to ``count`` points further along the path of steepest descent, as steps per factor.

    The fitted first-order model says which way each winner should move and how
    steeply the metric falls per step; far from the optimum the best point on that
    line is several steps away. So beside the one-step combination the wave also
    tries the line at 2, 4, 8, 3, 6, 12 steps of the steepest factor (each other
    winner moves in proportion to its slope, rounded to whole steps): a line search
    done in parallel.

    Args:
        winners: the wave's significant main effects.
        origin: the knob values of the wave's centre.
        wave_levels: the wave's factor -> [value at -1, value at +1].
        best: the knobs of the current best.
        direction: whether the metric is minimised or maximised.
        count: how many points (at most ``len(PATH)``).
    """
    for name, k in best.items():
        allowed = [origin.get(name), *wave_levels.get(name, ())]
        if k.value not in allowed:
            return []  # the best moved away since: this wave's slopes are stale there
    slopes: dict[str, float] = {}
    for e in winners:
        if isinstance(origin.get(e.term), bool):
            continue  # a flag has no further to go
        low, high = wave_levels.get(e.term, [None, None])
        span = 1.0 if origin.get(e.term) in (low, high) else 2.0
        slopes[e.term] = direction.improvement(0.0, e.estimate) / span
    steepest = max((abs(v) for v in slopes.values()), default=0.0)
    if steepest <= 0:
        return []
    out = []
    for m in PATH[:count]:
        steps = {f: round(m * v / steepest) for f, v in slopes.items()}
        steps = {f: n for f, n in steps.items() if n != 0}
        if steps:
            out.append(steps)
    return out


def path_values(
    knobs: Mapping[str, Knob],
    spaces: Mapping[str, Space],
    steps: Mapping[str, int],
    *,
    step_size: int,
    walls: Mapping[str, Wall],
    overrides: Mapping[str, Mapping[str, object]],
) -> dict[str, Literal]:
    """The knobs a path point changes: each factor ``steps[f]`` steps (of ``step_size``) from the best."""
    values: dict[str, Literal] = {}
    for f, n in steps.items():
        if f in spaces and f in knobs and spaces[f].kind != "bool":
            space = path_space(spaces[f], overrides)
            # As far as asked, but short of a crash wall (the last step before it).
            for m in range(abs(n), 0, -1):
                nxt = step(space, knobs[f].value, 1 if n > 0 else -1, m * step_size)
                if not walled(walls.get(f), nxt):
                    break
            else:
                continue
            if nxt is not None and nxt != knobs[f].value:
                values[f] = nxt
    return values


def path_space(space: Space, overrides: Mapping[str, Mapping[str, object]]) -> Space:
    """Where a path point may go: 4× beyond the inferred range, never past set bounds.

    An inferred range (a quarter to four times the current value) only says where
    the next small step may land; steepest descent is meant to travel until the
    metric stops falling. Bounds set in ``[knobs.NAME]`` (``overrides``) hold, and so
    do the natural ones of fractions and choices.
    """
    ov = overrides.get(space.name, {})
    if space.kind not in ("float", "int", "pow2") or not space.log or space.high <= 0:
        return space
    low = space.low if "low" in ov else space.low / 4  # the space holds set bounds
    high = space.high if "high" in ov else space.high * 4
    if space.kind in ("int", "pow2"):
        low = max(1.0, low)
    return dataclasses.replace(space, low=low, high=high)


__all__ = ["PATH", "factor_levels", "path_space", "path_steps", "path_values", "two_level_design"]
