"""The factorial proposer: two-level designs around the current best, then combine the winners.

SkyPilot's agent, given 16 GPUs, ran factorial grids of 10-13 experiments per wave,
which exposed which knobs matter and how they interact. This proposer makes that a
strategy (``--strategy factorial``)::

    wave w, centred on the best:  k knobs ("factors"), each at level -1 (one step
        down) or +1 (one step up), in a 2^k or 2^(k-p) design from pyDOE3 sized to
        the free slots; every knob up to three quarters of the runs (resolution IV
        or V with few knobs, a resolution III screen of all of them with many)
    its results arrive:  fit effects (autoswarm.analysis.effects) with the measured σ
    next proposal:       "combine wave w" = every significantly beneficial factor set
                         to its better level at once, on the current best
    and beside it:       "path wave w ×m" = the winners moved further along the path of
                         steepest descent (m steps of the steepest, the others in
                         proportion to their slopes), one point per four runs of the
                         wave: a line search done in parallel, since far from the
                         optimum the best point on that line is several steps away
    the keep rule (with confirmation) decides; a new best recentres the next wave,
    which after a path is centred *ahead*, on the path's ×4 point (by the time it
    reports, the best is likely there, and its slopes are measured where they matter)

No slot waits for a wave's stragglers: when every point of the current wave is out
and its results are not in yet, the proposer hands out an interim combination (the
best-looking levels so far, once per wave) or starts the next wave on other factors.
A knob at the edge of its range (a ratio at 0.0, one head) is a factor too, varied
one-sided (its value and one step inwards). Factors are ranked by evidence: knobs with
a significant effect in their last wave first, then knobs never tested, then the rest
(least tested first, so they rotate);
ties go to learning rates and sizes (``proposers.knobs._priority``), then to a seeded
random order. When a design's points were all tried already (same centre, same
factors), the other fractions of the design come next, then wider steps, then
random multi-knob moves, so it never runs dry. Where crashes gather past a value of
one knob (out of memory above a width), that value is a wall: no level, path point
or step goes there (see walls.py). The designs, levels and path arithmetic are pure
functions in designs.py; this module keeps the waves' state and decides what comes next.

All state lives in memory keyed by wave id and is rebuilt from ``observe`` replays on
``--resume``: an experiment of an unknown wave is re-adopted from its meta (wave,
design, settings).

Meta of a design point: ``{"wave": w, "design": {knob: ±1}, "settings": {knob: value},
"step": s}``; of a combination: ``{"combine": w, "settings": {knob: value}}`` (a path
point adds ``"path": m``). The
keep rule's evidence (every measurement of the point, confirmations included) is read
from ``Experiment.evidence.values``, which the scheduler writes when it concludes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoswarm.analysis.effects import Effect, EffectsTable, Row, estimate_effects
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
from autoswarm.proposers.factorial.designs import (
    PATH,
    factor_levels,
    path_steps,
    path_values,
    two_level_design,
)
from autoswarm.proposers.factorial.walls import CrashWalls, Wall, walled
from autoswarm.proposers.knobs import _priority, step
from autoswarm.types import Direction, Experiment, Kind, Proposal, Status

# ---------------------------------------------------------------------------
# State kept per wave


@dataclass
class _Wave:
    id: int
    centre: str  # commit the wave is centred on
    factors: tuple[str, ...]
    levels: dict[str, list[Literal | None]]  # factor -> [value at -1, value at +1]
    step: int = 1
    origin: dict[str, Literal] = field(default_factory=dict)  # the centre's knob values
    queue: list[dict[str, int]] = field(default_factory=list)  # design points not handed out
    handed: int = 0
    results: dict[int, Experiment] = field(default_factory=dict)  # final experiments
    table: EffectsTable | None = None
    dirty: bool = False
    combined: bool = False  # a combination of significant winners was proposed
    interim: bool = False  # an interim combination was proposed


# ---------------------------------------------------------------------------
# The proposer


class FactorialProposer:
    """See the module docstring. Deterministic for a given seed and history."""

    name = "factorial"

    def __init__(
        self,
        *,
        exclude: tuple[str, ...] = ("TIME_BUDGET",),
        overrides: Mapping[str, Mapping[str, object]] | None = None,
        seed: int = 0,
        max_factors: int = 16,
        alpha: float = 0.05,
        random_fill: bool = True,
    ) -> None:
        self.exclude = exclude
        self.overrides = dict(overrides or {})
        self.rng = random.Random(seed)
        self.max_factors = max(1, max_factors)
        self.alpha = alpha
        # Random multi-knob moves when no design point is left (False: leave the slot to
        # the caller, e.g. ``auto``'s swarm fallback).
        self.random_fill = random_fill
        self.waves: dict[int, _Wave] = {}
        self._next_id = 1
        self._width = 0  # the largest n asked for: the wave size follows the free slots
        self._centre: str | None = None
        self._ctx: Context | None = None
        self._combos: list[tuple[int, dict[str, int], str]] = []  # (wave, {factor: sign}, kind)
        self._issued: set[str] = set()
        self._ahead: dict[str, Literal] = {}  # centre of the next wave, if not the best
        self._dry = False
        # Runs and crashes per value of each numeric knob (every candidate of the run,
        # whoever proposed it): where crashes gather, a wall (see walls.py).
        self._crash_walls = CrashWalls()

    # -- protocol ------------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        """True when the last call found nothing new around the current best."""
        return self._dry

    def close(self) -> None:
        pass

    def observe(self, experiment: Experiment) -> None:
        e = experiment
        if e.kind is Kind.CANDIDATE and (
            e.status.failed or e.status in (Status.KEEP, Status.DISCARD)
        ):
            self._crash_walls.count(e)
        if e.proposer != self.name or e.kind is not Kind.CANDIDATE:
            return  # confirmation runs are read from the candidate's evidence
        meta = e.meta
        combine = meta.get("combine")
        if isinstance(combine, int) and not isinstance(combine, bool):
            self._next_id = max(self._next_id, combine + 1)
            if combine in self.waves:
                if meta.get("interim"):
                    self.waves[combine].interim = True
                elif not meta.get("single"):
                    self.waves[combine].combined = True
            return
        w, design = meta.get("wave"), meta.get("design")
        if not isinstance(w, int) or isinstance(w, bool) or not isinstance(design, Mapping):
            return
        wave = self.waves.get(w) or self._adopt(w, e)
        wave.results[e.id] = e
        wave.handed = max(wave.handed, len(wave.results))
        wave.dirty = True
        settings = meta.get("settings")
        if isinstance(settings, Mapping):  # fill in levels of an adopted wave
            for f, sign in design.items():
                if f in wave.levels and f in settings and sign in (-1, 1):
                    slot = 0 if sign < 0 else 1
                    if wave.levels[f][slot] is None:
                        wave.levels[f][slot] = settings[f]
        if self._ctx is not None and self._ctx.noise_sigma:
            # With the last context's σ; otherwise the next propose() analyses it.
            self._analyse(self._ctx)

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        if n <= 0:
            return []
        self._ctx = ctx
        knobs = knobs_of(ctx.best_files, self.exclude)
        spaces = knob_spaces(ctx.best_files, self.exclude, self.overrides)
        if not spaces:
            return []
        self._width = max(self._width, n)
        self._sync_ids(ctx)
        if ctx.best_commit != self._centre:
            # A new best: what is left of waves around the old one is moot.
            self._centre = ctx.best_commit
            for wave in self.waves.values():
                wave.queue.clear()
        self._analyse(ctx)
        seen = set(ctx.seen) | self._issued
        out: list[Proposal] = []
        for _ in range(8 * n + 16):
            if len(out) >= n:
                break
            p = self._next(ctx, knobs, spaces, seen)
            if p is not None:
                out.append(p)
        while len(out) < n:  # never leave a slot idle while there are knobs
            p = self._random_move(ctx, knobs, spaces, seen)
            if p is None:
                break
            out.append(p)
        self._dry = n > 0 and not out
        return out

    # -- public conveniences ---------------------------------------------------

    def effects(self, wave: int) -> EffectsTable | None:
        """The latest effects table of ``wave`` (None before it has been analysed)."""
        w = self.waves.get(wave)
        return w.table if w else None

    # -- choosing the next proposal ---------------------------------------------

    def _next(
        self,
        ctx: Context,
        knobs: Mapping[str, Knob],
        spaces: Mapping[str, Space],
        seen: set[str],
    ) -> Proposal | None:
        """One proposal, or None when this attempt hit a duplicate (the caller tries again)."""
        if self._combos:
            w, signs, kind = self._combos.pop(0)
            return self._combination(ctx, knobs, spaces, seen, w, signs, kind)
        current = self._current()
        if current is not None and current.queue:
            return self._point(ctx, knobs, seen, current, current.queue.pop(0))
        # The current wave is all out. If it is centred here and its results are not
        # in yet, try its best-looking levels once before moving on to a new wave.
        if (
            current is not None
            and current.centre == ctx.best_commit
            and not self._analysable(current)
            and not current.interim
        ):
            current.interim = True
            signs = self._interim_signs(ctx, current)
            if signs:
                self._combos.append((current.id, signs, "interim"))
                return None
        if not self._new_wave(ctx, knobs, spaces, seen):
            return self._random_move(ctx, knobs, spaces, seen)
        return None

    def _current(self) -> _Wave | None:
        return self.waves[max(self.waves)] if self.waves else None

    def _point(
        self,
        ctx: Context,
        knobs: Mapping[str, Knob],
        seen: set[str],
        wave: _Wave,
        design: dict[str, int],
    ) -> Proposal | None:
        settings = {f: wave.levels[f][0 if s < 0 else 1] for f, s in design.items()}
        if any(v is None for v in settings.values()):
            return None
        values: dict[str, Literal] = {f: v for f, v in settings.items() if v is not None}
        files = self._files(ctx, values, seen)
        if files is None:
            return None
        wave.handed += 1
        signs = " ".join("+" if s > 0 else "-" for s in design.values())
        return self._proposal(
            ctx,
            files,
            f"wave {wave.id} [{signs}]: {_describe(knobs, values)}",
            {"wave": wave.id, "design": dict(design), "settings": values, "step": wave.step},
        )

    def _combination(
        self,
        ctx: Context,
        knobs: Mapping[str, Knob],
        spaces: Mapping[str, Space],
        seen: set[str],
        w: int,
        signs: Mapping[str, int],
        kind: str,
    ) -> Proposal | None:
        """The winners of wave ``w`` at their better levels, on the current best.

        If that is the current best already (a design point was kept) or was tried,
        each winner moves one more step the same way from the current best instead.
        """
        wave = self.waves.get(w)
        if wave is None or not signs:
            return None
        label = {"full": "combine", "single": "winner", "path": "path"}.get(
            kind, "combine (interim)"
        )
        values: dict[str, Literal] = {}
        if kind == "path":
            values = self._path_values(knobs, spaces, wave, signs)
            files = self._files(ctx, values, seen) if values else None
            if files is None:
                return None
            steps = max(abs(n) for n in signs.values())
            meta: dict[str, Any] = {"combine": w, "settings": values, "path": steps}
            return self._proposal(
                ctx, files, f"path wave {w} ×{steps}: {_describe(knobs, values)}", meta
            )
        if wave.centre == ctx.best_commit:
            # The winners' levels as measured; a wave around an older best moves each
            # winner one step from the current best instead (its levels would undo
            # whatever moved the best since).
            for f, s in signs.items():
                v = wave.levels.get(f, [None, None])[0 if s < 0 else 1]
                if v is not None and f in knobs:
                    values[f] = v
        files = self._files(ctx, values, seen) if values else None
        if files is None:
            values = {}
            walls = self._walls(knobs)
            for f, s in signs.items():
                if f not in spaces or f not in knobs:
                    continue
                space, current = spaces[f], knobs[f].value
                if space.kind == "bool":
                    better = wave.levels.get(f, [None, None])[0 if s < 0 else 1]
                    if better is not None and better != current:
                        values[f] = better
                    continue
                nxt = step(space, current, s, wave.step)
                if nxt is not None and not walled(walls.get(f), nxt):
                    values[f] = nxt
            files = self._files(ctx, values, seen) if values else None
            label += " (+1 step)"
            if files is None:
                return None
        meta = {"combine": w, "settings": values}
        if kind != "full":
            meta[kind] = True
        return self._proposal(ctx, files, f"{label} wave {w}: {_describe(knobs, values)}", meta)

    def _files(
        self, ctx: Context, values: Mapping[str, Literal], seen: set[str]
    ) -> dict[str, str] | None:
        """The best files with ``values`` set, or None if that changes nothing or was tried."""
        try:
            files = apply_values(ctx.best_files, values)
        except (KeyError, ValueError):
            return None
        if files == dict(ctx.best_files):
            return None
        fp = fingerprint(files)
        if fp in seen:
            return None
        seen.add(fp)
        self._issued.add(fp)
        return files

    def _proposal(
        self, ctx: Context, files: Mapping[str, str], description: str, meta: dict[str, Any]
    ) -> Proposal:
        return Proposal(
            description=description,
            files={p: t for p, t in files.items() if t != ctx.best_files.get(p)},
            parent=ctx.best_commit,
            proposer=self.name,
            meta=meta,
        )

    def _random_move(
        self,
        ctx: Context,
        knobs: Mapping[str, Knob],
        spaces: Mapping[str, Space],
        seen: set[str],
    ) -> Proposal | None:
        """A random move of one to three knobs (the last resort, so no slot idles)."""
        if not self.random_fill:
            return None
        names = sorted(spaces)
        for _ in range(64):
            chosen = self.rng.sample(names, self.rng.randint(1, min(3, len(names))))
            values: dict[str, Literal] = {}
            for f in chosen:
                v = step(
                    spaces[f], knobs[f].value, self.rng.choice((1, -1)), self.rng.randint(1, 2)
                )
                if v is not None:
                    values[f] = v
            files = self._files(ctx, values, seen) if values else None
            if files is not None:
                return self._proposal(
                    ctx, files, f"random: {_describe(knobs, values)}", {"random": True}
                )
        return None

    # -- waves ------------------------------------------------------------------

    def _wave_size(self) -> int:
        """A power of two near the widest request seen (at least 4, at most 64)."""
        target = max(4, self._width)
        return int(min(64, 2 ** round(math.log2(target))))

    def _factor_count(self, runs: int, available: int) -> int:
        """How many factors a wave of ``runs`` points varies.

        Every knob there is, up to three quarters of the runs (a quarter of the points
        may crash or straggle and the main effects stay estimable). With few knobs that
        is a resolution IV or V design (main effects clear of two-way interactions);
        with many it is a resolution III screen, as a Plackett-Burman design is used
        far from an optimum: every knob's slope from one wave, so the path of steepest
        descent moves them all. Four runs screen three factors.
        """
        cap = runs - 1 if runs < 8 else 3 * runs // 4 - 1
        return max(0, min(self.max_factors, available, cap))

    def _new_wave(
        self,
        ctx: Context,
        knobs: Mapping[str, Knob],
        spaces: Mapping[str, Space],
        seen: set[str],
    ) -> bool:
        """Start the next wave around the current best; False if no design has new points.

        After a path was handed out, the wave goes around the path point in
        ``self._ahead`` instead (its moved knobs are factors, so every design point
        carries them); if that has no fresh design, around the best as usual.
        """
        ahead, self._ahead = self._ahead, {}
        if ahead:
            try:
                files = apply_values(ctx.best_files, ahead)
            except (KeyError, ValueError):
                files = None
            if files is not None and self._new_wave_at(
                ctx,
                knobs_of(files, self.exclude),
                knob_spaces(files, self.exclude, self.overrides),
                seen,
                first=tuple(ahead),
            ):
                return True
        return self._new_wave_at(ctx, knobs, spaces, seen)

    def _new_wave_at(
        self,
        ctx: Context,
        knobs: Mapping[str, Knob],
        spaces: Mapping[str, Space],
        seen: set[str],
        first: tuple[str, ...] = (),
    ) -> bool:
        """A wave centred on ``knobs`` (factors in ``first`` before the ranked ones)."""
        runs = self._wave_size()
        # Factors varied by waves here whose results are not in yet go last ("other factors").
        busy = {
            f
            for w in self.waves.values()
            if w.centre == ctx.best_commit and not self._analysable(w)
            for f in w.factors
        }
        walls = self._walls(knobs)
        for size in (1, 2, 3):
            levels = factor_levels(spaces, knobs, size, walls)
            ranked = self._rank(list(levels))
            ranked = [f for f in ranked if f not in busy] + [f for f in ranked if f in busy]
            ranked = [f for f in first if f in levels] + [f for f in ranked if f not in first]
            k = self._factor_count(runs, len(ranked))
            if k == 0:
                continue
            factors = tuple(ranked[:k])
            for variant in range(4):
                design, _ = two_level_design(k, runs, variant)
                if variant and 2**k <= runs:
                    break  # a full factorial has no other fraction
                points = [{f: int(s) for f, s in zip(factors, row, strict=True)} for row in design]
                fresh = [p for p in points if self._fresh(ctx, levels, p, seen)]
                if len(fresh) >= max(1, len(points) // 2):
                    self.rng.shuffle(fresh)  # randomised run order, as in any experiment
                    wave = _Wave(
                        id=self._next_id,
                        centre=ctx.best_commit,
                        factors=factors,
                        levels={f: list(levels[f]) for f in factors},
                        step=size,
                        origin={name: k.value for name, k in knobs.items()},
                        queue=fresh,
                    )
                    self.waves[wave.id] = wave
                    self._next_id += 1
                    return True
        return False

    def _fresh(
        self,
        ctx: Context,
        levels: Mapping[str, tuple[Literal, Literal]],
        point: Mapping[str, int],
        seen: set[str],
    ) -> bool:
        values = {f: levels[f][0 if s < 0 else 1] for f, s in point.items()}
        try:
            files = apply_values(ctx.best_files, values)
        except (KeyError, ValueError):
            return False
        return files != dict(ctx.best_files) and fingerprint(files) not in seen

    def _rank(self, names: list[str]) -> list[str]:
        """Knobs by evidence: significant last time, never tested, least tested; then priority."""
        last_p: dict[str, float] = {}
        tested: dict[str, int] = {}
        for w in sorted(self.waves):
            table = self.waves[w].table
            if table is None:
                continue
            for e in table.main_effects:
                tested[e.term] = tested.get(e.term, 0) + 1
                last_p[e.term] = e.p_value if math.isfinite(e.p_value) else 1.0
        noise = {name: self.rng.random() for name in sorted(names)}

        def key(name: str) -> tuple[int, float, int, float]:
            if name in last_p and last_p[name] < self.alpha:
                group, order = 0, last_p[name]
            elif name not in tested:
                group, order = 1, 0.0
            else:
                group, order = 2, float(tested[name])
            return (group, order, _priority(name), noise[name])

        return sorted(names, key=key)

    # -- analysis ------------------------------------------------------------------

    def _rows(self, ctx: Context, wave: _Wave) -> list[Row]:
        rows: list[Row] = []
        for e in wave.results.values():
            design = {str(f): float(s) for f, s in dict(e.meta.get("design", {})).items()}
            for v in _replicates(e, ctx.metric):
                rows.append((design, v, wave.id))
        return rows

    def _analysable(self, wave: _Wave) -> bool:
        """All points handed out and at least 3/4 of them (and k+1 values) back."""
        if wave.queue or not wave.results:
            return False
        valued = sum(
            1
            for e in wave.results.values()
            if e.metrics and e.status in (Status.KEEP, Status.DISCARD, Status.PENDING)
        )
        return (
            len(wave.results) >= math.ceil(0.75 * wave.handed) and valued >= len(wave.factors) + 1
        )

    def _analyse(self, ctx: Context) -> None:
        for wave in sorted(self.waves.values(), key=lambda w: w.id):
            if not wave.dirty or not self._analysable(wave):
                continue
            table = estimate_effects(
                self._rows(ctx, wave), wave.factors, sigma=ctx.noise_sigma, interactions=True
            )
            if table.se_source == "none":
                continue  # no noise estimate yet: look again when the baseline is in
            wave.dirty = False
            wave.table = table
            winners = sorted(
                (e for e in table.main_effects if e.significant(self.alpha)),
                key=lambda e: -abs(e.z),
            )
            signs = {e.term: _better_level(ctx.direction, e.estimate) for e in winners}
            if signs and not wave.combined:
                wave.combined = True
                self._combos.append((wave.id, signs, "full"))
                path = self._path(ctx, wave, winners)
                self._combos.extend((wave.id, steps, "path") for steps in path)
                if path:
                    # The next wave goes around a point of the path (the ×4 one, else the
                    # furthest) instead of the best of now: by the time it reports, the
                    # best is likely on the path, and its slopes are measured there.
                    steps = path[1] if len(path) > 1 else path[0]
                    knobs = knobs_of(ctx.best_files, self.exclude)
                    spaces = knob_spaces(ctx.best_files, self.exclude, self.overrides)
                    self._ahead = self._path_values(knobs, spaces, wave, steps)
                # Each winner alone too, strongest first: a main effect measured one step
                # away cannot see curvature, so a factor already at its optimum can look
                # like a winner (through an interaction) and spoil the combination. With
                # a path (a wide wave) the line search covers that, in fewer slots.
                if len(signs) > 1 and not path:
                    self._combos.extend((wave.id, {f: s}, "single") for f, s in signs.items())

    def _path(self, ctx: Context, wave: _Wave, winners: Sequence[Effect]) -> list[dict[str, int]]:
        """Points further along the path of steepest descent, one per four runs of the wave.

        As many points as a quarter of the wave size (see
        :func:`~autoswarm.proposers.factorial.designs.path_steps`). The keep rule picks
        among them; the next wave is centred on whichever won.
        """
        count = min(len(PATH), self._wave_size() // 4)
        if count < 1 or not winners or not wave.origin:
            return []  # a wave adopted on --resume does not know its centre
        return path_steps(
            winners,
            origin=wave.origin,
            wave_levels=wave.levels,
            best=knobs_of(ctx.best_files, self.exclude),
            direction=ctx.direction,
            count=count,
        )

    def _path_values(
        self,
        knobs: Mapping[str, Knob],
        spaces: Mapping[str, Space],
        wave: _Wave,
        steps: Mapping[str, int],
    ) -> dict[str, Literal]:
        """The knobs a path point changes: each factor ``steps[f]`` steps from the best."""
        return path_values(
            knobs,
            spaces,
            steps,
            step_size=wave.step,
            walls=self._walls(knobs),
            overrides=self.overrides,
        )

    def _interim_signs(self, ctx: Context, wave: _Wave) -> dict[str, int]:
        """The better level of each factor on the partial data (sign only, no significance)."""
        rows = self._rows(ctx, wave)
        if len(rows) < 2:
            return {}
        table = estimate_effects(rows, wave.factors, sigma=ctx.noise_sigma, interactions=False)
        return {
            e.term: _better_level(ctx.direction, e.estimate)
            for e in table.main_effects
            if math.isfinite(e.estimate) and e.estimate != 0
        }

    # -- crash walls ---------------------------------------------------------------

    def _walls(self, knobs: Mapping[str, Knob]) -> dict[str, Wall]:
        """Per knob, the values below/above the best's at or past which runs crash.

        Designs, paths and one-step moves stop short of them (see walls.py for the rule).
        """
        return self._crash_walls.walls(knobs)

    # -- resume -------------------------------------------------------------------

    def _adopt(self, w: int, e: Experiment) -> _Wave:
        """A wave from a previous process, rebuilt from one of its experiments."""
        design = dict(e.meta.get("design", {}))
        step_size = e.meta.get("step", 1)
        wave = _Wave(
            id=w,
            centre=e.parent,
            factors=tuple(str(f) for f in design),
            levels={str(f): [None, None] for f in design},
            step=step_size if isinstance(step_size, int) else 1,
        )
        self.waves[w] = wave
        self._next_id = max(self._next_id, w + 1)
        return wave

    def _sync_ids(self, ctx: Context) -> None:
        """New wave ids stay above any a previous process used (running or finished)."""
        for e in (*ctx.running, *ctx.history):
            if e.proposer != self.name:
                continue
            for key in ("wave", "combine"):
                v = e.meta.get(key)
                if isinstance(v, int) and not isinstance(v, bool):
                    self._next_id = max(self._next_id, v + 1)


# ---------------------------------------------------------------------------
# Small helpers


def _replicates(e: Experiment, metric: str) -> list[float]:
    """The experiment's measurements: the keep rule's evidence (with confirmations) if any."""
    if e.status not in (Status.KEEP, Status.DISCARD, Status.PENDING):
        return []
    evidence = list(e.evidence.values) if e.evidence else []
    if evidence:
        vals = [
            float(v) for v in evidence if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if len(vals) == len(evidence) and all(math.isfinite(v) for v in vals):
            return vals
    v = e.value(metric)
    return [] if v is None else [v]


def _better_level(direction: Direction, estimate: float) -> int:
    """+1 if going from level -1 to +1 improves the metric by ``estimate``, else -1."""
    return 1 if direction.improvement(0.0, estimate) > 0 else -1


def _describe(knobs: Mapping[str, Knob], values: Mapping[str, Literal]) -> str:
    """``"LR 0.01 -> 0.015, ..."`` for the knobs that change (a one-sided factor may not)."""
    return ", ".join(
        f"{f} {format_literal(knobs[f].value) if f in knobs else '?'} -> {format_literal(v)}"
        for f, v in values.items()
        if f not in knobs or knobs[f].value != v
    )


__all__ = ["FactorialProposer"]
