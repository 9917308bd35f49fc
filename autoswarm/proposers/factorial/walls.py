"""Crash walls: the value of one knob past which runs crash, so designs stop short of it.

Out of memory above some width, divergence above some learning rate: crashes gather
past a value of one knob. :class:`CrashWalls` counts runs and crashes per value of
every numeric knob (every finished candidate of the run, whoever proposed it) and
draws a wall where the rule of :meth:`CrashWalls.walls` says crashes gather. The
factorial proposer's design levels, path points and one-step moves stay short of
a wall (:func:`walled`); the swarm half of ``auto`` still moves single knobs there,
so a wall drawn from crashes that were another knob's doing comes down as those
runs succeed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from autoswarm.knobs import Knob, Literal
from autoswarm.types import Experiment

# (low, high): values at or below low, or at or above high, are past the wall.
Wall = tuple[float, float]


class CrashWalls:
    """Runs and crashes per value of each numeric knob, and the walls they draw."""

    def __init__(self) -> None:
        # knob -> value -> [runs, crashes]
        self._runs: dict[str, dict[float, list[int]]] = {}
        self._cache: tuple[int, dict[str, Wall]] | None = None

    def count(self, e: Experiment) -> None:
        """Count a finished candidate (keep, discard or crash) at each of its knob values."""
        for name, v in dict(e.knobs or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                runs = self._runs.setdefault(str(name), {}).setdefault(float(v), [0, 0])
                runs[0] += 1
                runs[1] += e.status.failed
        self._cache = None

    def walls(self, knobs: Mapping[str, Knob]) -> dict[str, Wall]:
        """Per knob, the values below/above the best's at or past which runs crash.

        The wall up (down) is the nearest value past the best's where, counting every
        finished candidate of the run at or past it, at least three crashed, at least
        half did (and at least half at that value itself), they are at least half of
        the run's crashes, and the rate on the near side is at most a third of that.
        """
        key = hash(tuple(sorted((n, repr(k.value)) for n, k in knobs.items())))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        walls: dict[str, Wall] = {}
        for name, k in knobs.items():
            stats = self._runs.get(name)
            value = k.value
            if not stats or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            total = [sum(r[0] for r in stats.values()), sum(r[1] for r in stats.values())]
            lo, hi = -math.inf, math.inf
            for sign in (1, -1):
                past = [v for v in stats if sign * (v - value) > 0]
                runs = crashes = 0
                # From the far end inwards, so each candidate value sees the runs past it.
                candidates: list[tuple[float, int, int]] = []
                for v in sorted(past, key=lambda x: -sign * x):
                    runs += stats[v][0]
                    crashes += stats[v][1]
                    candidates.append((v, runs, crashes))
                for v, runs, crashes in reversed(candidates):  # nearest first
                    near_runs, near_crashes = total[0] - runs, total[1] - crashes
                    rate = crashes / runs
                    near = near_crashes / near_runs if near_runs else 0.0
                    own_runs, own_crashes = stats[v]
                    if (
                        crashes >= 3
                        and rate >= 0.5
                        and 2 * own_crashes >= own_runs
                        and near <= rate / 3
                        and 2 * crashes >= total[1]
                    ):
                        if sign > 0:
                            hi = v
                        else:
                            lo = v
                        break
            if lo > -math.inf or hi < math.inf:
                walls[name] = (lo, hi)
        self._cache = (key, walls)
        return walls


def walled(wall: Wall | None, value: Literal | None) -> bool:
    """True if ``value`` is at or past either side of ``wall`` (low, high)."""
    if wall is None or isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value <= wall[0] or value >= wall[1]


__all__ = ["CrashWalls", "Wall", "walled"]
