"""Knob perturbation around the current best: the first proposer that needs no API key.

From the best accepted files it lists every one-knob move (each knob up and down
by one step: ×/÷1.5 on a log scale, ±1 or ×/÷1.25 for integers, ×/÷2 for powers
of two, a flip for booleans, each alternative for choices), shuffles them with a
seeded RNG, puts learning rates and batch/model sizes first (they matter most in
practice) and hands them out in order, skipping variants already tried or running.
A move that was kept is followed up first: the same knob again, in the same
direction (momentum). When the one-step moves of a best are used up it goes on
with two-step moves, then random moves of one to three knobs by one to three
steps; when even those find nothing new it reports itself exhausted.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace

from autoswarm.knobs import (
    Knob,
    Literal,
    Space,
    apply_values,
    format_literal,
    knob_spaces,
    knobs_of,
)
from autoswarm.proposers.base import Context, fingerprint
from autoswarm.types import Experiment, Proposal, Status


@dataclass(frozen=True)
class Move:
    """Set some knobs to new values."""

    values: tuple[tuple[str, Literal], ...]

    def proposal(
        self, ctx: Context, current: Mapping[str, Knob], files: Mapping[str, str], proposer: str
    ) -> Proposal:
        """This move applied to the best files (``files``) as a proposal relative to the best."""
        return Proposal(
            description=self.describe(current),
            files={p: t for p, t in files.items() if t != ctx.best_files.get(p)},
            parent=ctx.best_commit,
            proposer=proposer,
            meta={"changes": {k: [current[k].value, v] for k, v in self.values}},
        )

    def describe(self, current: Mapping[str, Knob]) -> str:
        return ", ".join(
            f"{name} {format_literal(current[name].value)} -> {format_literal(v)}"
            for name, v in self.values
        )


def step(space: Space, value: Literal, direction: int, size: int = 1) -> Literal | None:
    """``value`` moved ``size`` steps up (+1) or down (-1) within ``space``; None if it cannot move."""
    if space.kind == "bool":
        return None if size > 1 else (not value)
    if space.kind == "choice":
        choices = list(space.choices)
        try:
            i = choices.index(value)
        except ValueError:
            return choices[0] if choices else None
        j = i + direction * size
        return choices[j] if 0 <= j < len(choices) else None
    assert isinstance(value, int | float)
    if space.kind == "pow2":
        new: float = value * (2.0 ** (direction * size))
    elif space.kind == "int":
        new = value + direction * size if value < 8 else value * (1.25 ** (direction * size))
    elif space.log and value > 0:
        new = value * (1.5 ** (direction * size))
    else:
        width = (space.high - space.low) or abs(value) or 1.0
        new = value + direction * size * 0.1 * width
    new = round(new) if space.kind in ("int", "pow2") else float(f"{new:.3g}")
    if space.kind in ("int", "pow2"):
        new = int(min(max(new, space.low), space.high)) if space.high else int(new)
        if new < 1:
            return None
    elif space.high > space.low:
        new = min(max(new, space.low), space.high)
    if new == value or (isinstance(new, float) and not math.isfinite(new)):
        return None
    return new


_IMPORTANT = ("LR", "BATCH", "DIM", "WIDTH", "DEPTH", "EMBD")


def _priority(name: str) -> int:
    return 0 if any(part in name for part in _IMPORTANT) else 1


class KnobProposer:
    """See the module docstring. Deterministic for a given seed and history."""

    name = "knobs"

    def __init__(
        self,
        *,
        exclude: tuple[str, ...] = ("TIME_BUDGET",),
        overrides: Mapping[str, Mapping[str, object]] | None = None,
        seed: int = 0,
    ) -> None:
        self.exclude = exclude
        self.overrides = dict(overrides or {})
        self.rng = random.Random(seed)
        self._best_commit: str | None = None
        self._queue: list[Move] = []
        self._momentum: list[tuple[str, int]] = []  # (knob, direction) kept lately, newest last
        self._level = 1
        self._dry = False

    # -- protocol ------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        """True when the last call found nothing new around the current best."""
        return self._dry

    def close(self) -> None:
        pass

    def observe(self, experiment: Experiment) -> None:
        if experiment.status is not Status.KEEP or experiment.proposer != self.name:
            return
        for name, (old, new) in dict(experiment.meta.get("changes", {})).items():
            if isinstance(old, int | float) and isinstance(new, int | float) and old != new:
                self._momentum.append((name, 1 if new > old else -1))
        self._momentum = self._momentum[-4:]

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        knobs = knobs_of(ctx.best_files, self.exclude)
        spaces = knob_spaces(ctx.best_files, self.exclude, self.overrides)
        if not spaces:
            return []
        if ctx.best_commit != self._best_commit:
            self._best_commit = ctx.best_commit
            self._level = 1
            self._dry = False
            self._queue = self._moves(knobs, spaces, level=1)
        seen = set(ctx.seen)
        out: list[Proposal] = []
        attempts = 0
        while len(out) < n and attempts < 300:
            attempts += 1
            if not self._queue:
                self._level += 1
                self._queue = (
                    self._moves(knobs, spaces, level=self._level)
                    if self._level <= 2
                    else self._random_combos(knobs, spaces)
                )
                if not self._queue:
                    break
            move = self._queue.pop(0)
            try:
                files = apply_values(ctx.best_files, dict(move.values))
            except (KeyError, ValueError):
                continue
            fp = fingerprint(files)
            if fp in seen:
                continue
            seen.add(fp)
            out.append(move.proposal(ctx, knobs, files, self.name))
        # Nothing new in 300 tries: the neighbourhood of this best is used up.
        self._dry = n > 0 and not out
        return out

    # -- move lists ------------------------------------------------------------

    def _moves(
        self, knobs: Mapping[str, Knob], spaces: Mapping[str, Space], level: int
    ) -> list[Move]:
        moves: list[Move] = []
        for name, space in spaces.items():
            for direction in (1, -1):
                new = step(space, knobs[name].value, direction, level)
                if new is not None:
                    moves.append(Move(((name, new),)))
        self.rng.shuffle(moves)
        # Learning rates and batch/model sizes are what usually matters most, so they go
        # first; the shuffle keeps the order among equals random.
        moves.sort(key=lambda m: _priority(m.values[0][0]))
        # Momentum: continue the most recent successful directions first.
        first: list[Move] = []
        for name, direction in reversed(self._momentum):
            if name in spaces:
                new = step(spaces[name], knobs[name].value, direction, level)
                m = Move(((name, new),)) if new is not None else None
                if m is not None and m in moves and m not in first:
                    first.append(m)
        return first + [m for m in moves if m not in first]

    def _random_combos(
        self, knobs: Mapping[str, Knob], spaces: Mapping[str, Space], count: int = 64
    ) -> list[Move]:
        """Moves of one to three random knobs by one to three steps each."""
        names = sorted(spaces)
        moves = []
        for _ in range(count):
            chosen = self.rng.sample(names, self.rng.randint(1, min(3, len(names))))
            values = []
            for name in chosen:
                size = self.rng.randint(1, 3)
                new = step(spaces[name], knobs[name].value, self.rng.choice((1, -1)), size)
                if new is not None:
                    values.append((name, new))
            if values:
                moves.append(Move(tuple(values)))
        return moves


class RandomProposer:
    """Random knob perturbations around the current best (the control for smarter search).

    Each proposal moves one or two random knobs by one or two steps in a random
    direction, skipping variants already tried or running. When that neighbourhood
    is used up (few knobs, many slots) it widens: up to three knobs, up to four steps.
    A call that finds nothing new at all marks it exhausted (until one finds something
    again), so a run whose slots have drained ends instead of idling to its time limit.
    """

    name = "random"

    def __init__(
        self,
        *,
        exclude: tuple[str, ...] = ("TIME_BUDGET",),
        overrides: Mapping[str, Mapping[str, object]] | None = None,
        seed: int = 0,
    ) -> None:
        self.exclude = exclude
        self.overrides = dict(overrides or {})
        self.rng = random.Random(seed)
        self._dry = False

    @property
    def exhausted(self) -> bool:
        return self._dry

    def close(self) -> None:
        pass

    def observe(self, experiment: Experiment) -> None:
        pass

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        knobs = knobs_of(ctx.best_files, self.exclude)
        spaces = knob_spaces(ctx.best_files, self.exclude, self.overrides)
        names = sorted(spaces)
        seen = set(ctx.seen)
        out: list[Proposal] = []
        for attempt in range(50 * max(1, n)):
            if len(out) >= n or not names:
                break
            wide = attempt >= 10 * max(1, n)  # the close neighbourhood is used up
            counts, sizes = ((1, 2, 3), (1, 2, 3, 4)) if wide else ((1, 1, 2), (1, 2))
            chosen = self.rng.sample(names, min(len(names), self.rng.choice(counts)))
            values: list[tuple[str, Literal]] = []
            for name in chosen:
                new = step(
                    spaces[name],
                    knobs[name].value,
                    self.rng.choice((1, -1)),
                    self.rng.choice(sizes),
                )
                if new is not None:
                    values.append((name, new))
            if not values:
                continue
            move = Move(tuple(values))
            files = apply_values(ctx.best_files, dict(move.values))
            fp = fingerprint(files)
            if fp in seen:
                continue
            seen.add(fp)
            out.append(move.proposal(ctx, knobs, files, self.name))
        self._dry = n > 0 and not out
        return out


class SwarmProposer(KnobProposer):
    """Greedy made for many slots: one-knob moves in parallel, good moves carried forward.

    With N slots, N one-knob moves around the same best run at once. The first to be
    kept moves the best; the others finish against a best they were not built on, so
    plain greedy throws away every other improvement of the wave. This proposer
    remembers the value of the best each move was built on (``meta.parent_value``);
    a move that measured better than that by more than ``carry_sigmas`` noise σ is
    *carried*: its knob changes are re-applied on top of the new best and run first.
    So the improvements of one wave are combined one at a time, each still judged by
    the scheduler's keep rule. A kept move is also extended in the same direction
    with a larger step (a line search), before the ordinary one-knob moves.
    """

    name = "swarm"

    def __init__(
        self,
        *,
        exclude: tuple[str, ...] = ("TIME_BUDGET",),
        overrides: Mapping[str, Mapping[str, object]] | None = None,
        seed: int = 0,
        carry_sigmas: float = 1.0,
    ) -> None:
        super().__init__(exclude=exclude, overrides=overrides, seed=seed)
        self.carry_sigmas = carry_sigmas
        # (value of the parent best, mean measured, knob -> new value) of discarded moves
        self._carry: list[tuple[float, float, dict[str, Literal]]] = []

    def observe(self, experiment: Experiment) -> None:
        super().observe(experiment)
        if experiment.proposer != self.name or experiment.status is not Status.DISCARD:
            return
        parent_value = experiment.meta.get("parent_value")
        values = list(experiment.evidence.values) if experiment.evidence else []
        if not isinstance(parent_value, int | float) or not values:
            return
        # Judged when proposing, once the direction and σ are known (a resume replays
        # history before the first call).
        changes = dict(experiment.meta.get("changes", {}))
        mean = sum(values) / len(values)
        self._carry.append((float(parent_value), mean, {k: v[1] for k, v in changes.items()}))

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        out: list[Proposal] = []
        if self._carry and n > 0:
            knobs = knobs_of(ctx.best_files, self.exclude)
            seen = set(ctx.seen)
            margin = max(0.0, self.carry_sigmas * (ctx.noise_sigma or 0.0))
            carry = sorted(
                (c for c in self._carry if ctx.direction.improvement(c[0], c[1]) > margin),
                key=lambda c: ctx.direction.improvement(c[0], c[1]),
            )
            while carry and len(out) < n:
                _, _, values = carry.pop()  # the largest gain first
                move = Move(
                    tuple((k, v) for k, v in values.items() if k in knobs and knobs[k].value != v)
                )
                if not move.values:
                    continue
                try:
                    files = apply_values(ctx.best_files, dict(move.values))
                except (KeyError, ValueError):
                    continue
                fp = fingerprint(files)
                if fp in seen:
                    continue
                seen.add(fp)
                p = move.proposal(ctx, knobs, files, self.name)
                out.append(replace(p, meta={**p.meta, "carried": True}))
            self._carry = carry  # the rest wait for free slots
        if len(out) < n:
            out.extend(super().propose(ctx, n - len(out)))
            if out:
                self._dry = False
        if ctx.best_value is not None:
            out = [replace(p, meta={**p.meta, "parent_value": ctx.best_value}) for p in out]
        return out


__all__ = ["KnobProposer", "Move", "RandomProposer", "SwarmProposer", "step"]
