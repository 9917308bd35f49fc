"""The scale benchmark: a run's state at 1,000 to 100,000 experiments.

How long do ``autoswarm status``, ``autoswarm results --since`` and the start-up of
``autoswarm run --resume`` take, and how much memory do they use, once a run's ledger
holds N experiments? Run it as::

    python -m autoswarm.bench.scale --experiments 1000,10000,100000 --out scale.md

For each N it builds a workspace (:func:`autoswarm.testing.synthetic.make_workspace`)
and a ledger of exactly N experiments written through the product's own APIs, in the
order the scheduler writes them: the run record (its config as ``run`` records it),
sessions, the baseline repeats, candidates of the ``auto`` strategy's two halves
(swarm moves with ``changes``/``parent_value``, factorial waves with
``wave``/``design``/``settings`` and their combinations) that are screened and
discarded, confirmed with fresh seeds and kept or discarded, that crash (NaN, out of
memory, timeout, syntax error) or are rejected (duplicates, no change); keeps move the
branch, and the end-of-session validation of the best re-runs it and sometimes
revokes the keep (with its re-runs). Every candidate is a real git commit
(:meth:`Workspace.commit_files`, pinned like the scheduler pins it) with its real diff;
every metrics dict has the keys the templates' train.py prints. The last session
died with half the slots running (orphans), as after a crash of the machine, so
``--resume`` has work to recover. See :class:`_History` for the mix.

Then it measures, each command in a fresh process (as a user runs it), wall time,
CPU time (user + system, from ``os.wait4``: less sensitive to other load than wall
time) and peak RSS (``ru_maxrss`` of that process alone):

* ``autoswarm status`` and ``autoswarm status --json``;
* ``autoswarm results --since ID`` (the last 50 experiments) and its ``--format json``;
* ``autoswarm run --resume`` up to the moment the first experiment is handed to a
  backend, and up to the moment every slot is busy: a probe process
  (``--probe-resume``) does what ``autoswarm run --resume`` does (config recorded for
  the run, workspace, the strategy's proposer, ledger, :class:`Scheduler`) with a
  backend that runs nothing and notes when each job is submitted; once every slot has
  a job it asks the scheduler to stop. Everything of a real resume before the first
  dispatch is in it (recovering orphans, rebuilding the state from the ledger,
  replaying the history to the proposer, reconciling the branch, the first
  results.tsv, the proposer's first proposals); only ``prepare.py`` and the live view
  are left out. The ledger is restored from a copy before each probe, so every
  repetition starts from the same state.

Each figure is the median over ``--repeat`` runs. ``--workdir`` keeps the built
workspaces, so a second invocation (after a change of the code) measures the same
ledgers without building them again; ``--profile DIR`` writes a cProfile file per
command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoswarm.config import Config, load_config, with_overrides
from autoswarm.dedup import dedup_key
from autoswarm.judge import Evidence
from autoswarm.knobs import format_literal
from autoswarm.ledger import Ledger, RunRecord
from autoswarm.proposers.base import fingerprint
from autoswarm.testing.synthetic import TRAIN_PY, make_workspace, true_value
from autoswarm.types import Experiment, Job, Kind, Purpose, RunResult, Status
from autoswarm.workspace import Workspace

TAG = "scale"
WORKERS = 16  # slots of the run; the resume probe fills all of them
BUDGET = 300.0
GOALS = {"status": 1.0, "resume": 10.0}  # seconds (issue 14)

# ---------------------------------------------------------------------------
# The synthetic history

# The knobs of the synthetic train.py and the grids the moves step on (a real
# strategy steps on the knob spaces too, so values repeat and duplicates happen).
_GRID: dict[str, tuple[Any, ...]] = {
    "LR": tuple(round(0.04 * 2 ** (k / 8), 6) for k in range(-48, 17)),
    "WIDTH": (16, 32, 64, 128, 256, 512, 1024),
    "DEPTH": tuple(range(1, 17)),
    "WARMUP_RATIO": tuple(round(0.01 * k, 2) for k in range(51)),
    "USE_BIAS": (False, True),
}
_START: dict[str, Any] = {
    "LR": 0.01,
    "WIDTH": 64,
    "DEPTH": 4,
    "WARMUP_RATIO": 0.1,
    "USE_BIAS": False,
}
_LINES = {
    "LR": "LR = 0.01\n",
    "WIDTH": "WIDTH = 64\n",
    "DEPTH": "DEPTH = 4\n",
    "WARMUP_RATIO": "WARMUP_RATIO = 0.1\n",
    "USE_BIAS": "USE_BIAS = False  # no effect at all\n",
}
SIGMA = 0.002  # seed-to-seed noise of the metric

# What happens to a candidate (shares of all candidates; the rest is screened and
# discarded). Roughly what long runs of the search benchmark show, with more of the
# rare paths (crashes, rejections, revocations) so that every one is exercised.
_CRASH = 0.06  # ran and crashed: NaN, out of memory, timeout, exit code
_SYNTAX = 0.005  # a syntax error: recorded as a crash, never ran
_DUPLICATE = 0.03  # rejected: the same files as an earlier variant
_PROMISING = 0.12  # a screen good enough for two confirmation runs ...
_KEEP = 0.25  # ... of which this share is kept
_SECOND_LOOK = 0.15  # ... and this share needs two more runs first
_FACTORIAL = 0.35  # share of candidates from the factorial half of `auto`
_REVOKE = 0.3  # an end-of-session validation of the best revokes it this often

_CRASHES = (
    ("NaN: FAIL: loss is NaN/inf (nan) at step 212; stopping", 40.0),
    ("out of memory: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 25.0),
    ("timeout: killed after 960s (hard limit)", 960.0),
    (
        "exit code 1: RuntimeError: mat1 and mat2 shapes cannot be multiplied (64x256 and 512x64)",
        15.0,
    ),
)


def train_py(values: Mapping[str, Any]) -> str:
    """The synthetic train.py with these knob values (as the knob editors write them)."""
    text = TRAIN_PY
    for name, line in _LINES.items():
        new = line.replace(repr(_START[name]), format_literal(values[name]), 1)
        text = text.replace(line, new, 1)
    return text


@dataclass
class _Best:
    exp_id: int
    commit: str
    values: dict[str, Any]
    bar: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.bar)


@dataclass
class _Slots:
    """When each slot is free: a run takes the first free slot (the scheduler's clock)."""

    free: list[float]

    def take(self, earliest: float, duration: float) -> tuple[int, float, float]:
        slot = min(range(len(self.free)), key=lambda s: self.free[s])
        start = max(self.free[slot], earliest) + 1.5  # dispatch overhead
        self.free[slot] = start + duration
        return slot, start, start + duration


@dataclass
class _Wave:
    id: int
    factors: tuple[str, ...]
    points: list[dict[str, int]] = field(default_factory=list)
    levels: dict[str, tuple[Any, Any]] = field(default_factory=dict)


class _History:
    """Writes a run of exactly ``n`` experiments through the ledger and workspace APIs.

    Each candidate's rows are written in the order the scheduler writes them
    (added, running, finished as pending, confirmations added and run, the verdict);
    times come from a model of ``workers`` slots, each run taking the first free one.
    Values are drawn around the current bar, not from a model of the knobs: what is
    measured here is the size and shape of the ledger, not the search.
    """

    def __init__(self, ws: Workspace, ledger: Ledger, cfg: Config, n: int, seed: int) -> None:
        self.ws, self.ledger, self.cfg, self.n = ws, ledger, cfg, n
        self.rng = random.Random(seed)
        self.workers = cfg.run.workers
        sessions = max(2, min(40, n // 2500))
        self.bounds = [round(n * (k + 1) / sessions) for k in range(sessions)]
        # The history ends about ten minutes before now (so `status` shows a stale run).
        per_run = (BUDGET + 30.0) / self.workers
        self.t = time.time() - n * per_run - sessions * 900.0 - 600.0
        self.run: RunRecord
        self.count = 0
        self.session = 0
        self.slots = _Slots([self.t] * self.workers)
        self.best: _Best
        self.standing: list[_Best] = []  # kept candidates whose keep stands, oldest first
        self.seen: dict[str, int] = {}  # fingerprint -> experiment
        self.variants: list[tuple[dict[str, Any], int, str]] = []  # recent: values, id, diff
        self.wave: _Wave | None = None
        self.wave_id = 0
        self.seeds = 0
        self.reruns: dict[int, list[int]] = {}  # candidate -> its CONFIRM rows
        self.validated: set[int] = set()

    # -- the run and its sessions ----------------------------------------------------

    def write(self) -> RunRecord:
        base = self.ws.head()
        branch = f"autoswarm/{TAG}"
        self.ws.ensure_branch(branch, base)
        self.run = self.ledger.create_run(
            tag=TAG, branch=branch, base_commit=base, config=config_record(self.cfg), now=self.t
        )
        self.best = _Best(0, base, dict(_START), ())
        self._start_session()
        self._baseline(base)
        for bound in self.bounds[:-1]:
            while self.count + 8 < bound:
                self._candidate()
            self._end_session(validate=self.rng.random() < 0.5)
        tail = max(1, min(self.workers // 2, self.n // 20))
        while self.count + 8 + tail < self.n:
            self._candidate()
        while self.count + tail < self.n:
            self._candidate(simple=True)
        self._orphans(self.n - self.count)
        assert self.count == self.n, (self.count, self.n)
        return self.run

    def _start_session(self) -> None:
        start = max(self.slots.free) + 900.0 if self.session else self.t
        self.slots = _Slots([start] * self.workers)
        self.session = self.ledger.start_session(
            self.run.id, pid=40000 + self.count % 20000, workers=self.workers, now=start
        )
        self.session_start = start

    def _end_session(self, *, validate: bool) -> None:
        reason = "interrupted"
        if validate and self.standing and self.best.exp_id not in self.validated:
            self._validate_best()
            reason = "time limit (no time for another experiment)"
        end = max(self.slots.free)
        self.ledger.heartbeat(self.session, end)
        self.ledger.end_session(self.session, now=end, reason=reason)
        self._start_session()

    # -- rows -------------------------------------------------------------------

    def _add(self, **kw: Any) -> Experiment:
        self.count += 1
        return self.ledger.add_experiment(run_id=self.run.id, **kw)

    def _run(self, e: Experiment, created: float, duration: float) -> tuple[float, float]:
        """Mark ``e`` running on the first free slot; returns (started, finished)."""
        slot, start, end = self.slots.take(created, duration)
        self.ledger.mark_running(
            e.id, slot=slot, started_at=start, log_path=str(self.ws.log_path(e.id)), tier=""
        )
        handle = {"pid": 50000 + e.id % 40000, "pgid": 50000 + e.id % 40000, "start": start}
        self.ledger.set_handle(e.id, json.dumps(handle))
        return start, end

    def _metrics(
        self, value: float, values: Mapping[str, Any], duration: float
    ) -> dict[str, float]:
        width, depth = int(values["WIDTH"]), int(values["DEPTH"])
        steps = int(900 * 64 / width)
        return {
            "val_bpb": value,
            "training_seconds": BUDGET,
            "total_seconds": duration,
            "peak_vram_mb": width * depth * 4.0,
            "mfu_percent": round(self.rng.uniform(20, 45), 2),
            "total_tokens_M": round(steps * 0.5, 1),
            "num_steps": float(steps),
            "num_params_M": round(width * width * depth * 12 / 1e6, 1),
            "depth": float(depth),
        }

    def _measure(self, offset: float) -> float:
        """A measurement ``offset`` worse than the bar (negative: better), with seed noise."""
        return self.best_value() + offset + self.rng.gauss(0.0, SIGMA)

    def best_value(self) -> float:
        return self.best.mean if self.best.bar else true_value(_START)

    # -- the baseline --------------------------------------------------------------

    def _baseline(self, base: str) -> None:
        files = {"train.py": TRAIN_PY}
        facts: dict[str, Any] = {
            "fingerprint": fingerprint(files),
            "dedup": dedup_key(files),
            "knobs": dict(_START),
        }
        values: list[float] = []
        ids: list[int] = []
        for i in range(self.cfg.run.baseline_repeats):
            seed = self.cfg.run.seed + i
            desc = "baseline" if i == 0 else f"baseline (repeat {i + 1}, seed {seed})"
            e = self._add(
                kind=Kind.BASELINE,
                status=Status.QUEUED,
                parent=base,
                commit=base,
                description=desc,
                proposer="baseline",
                seed=seed,
                now=self.t,
                facts=facts,
            )
            v = true_value(_START) + self.rng.gauss(0.0, SIGMA)
            start, end = self._run(e, self.t, BUDGET + 30.0)
            self.ledger.finish(
                e.id,
                status=Status.KEEP,
                metrics=self._metrics(v, _START, end - start),
                metric=v,
                finished_at=end,
                started_at=start,
            )
            values.append(v)
            ids.append(e.id)
        self.seen[facts["fingerprint"]] = ids[0]
        self.best = _Best(ids[0], base, dict(_START), tuple(values))

    # -- candidates ------------------------------------------------------------------

    def _propose(self, wide: int = 0) -> tuple[dict[str, Any], str, str, dict[str, Any]]:
        """The next variant: (knob values, description, proposer, proposer meta).

        ``wide``: how many proposals were already turned down as tried before; the
        moves widen with it (as the swarm's do when the close neighbourhood is used up),
        so a best that stays for long never leaves only duplicates to propose.
        """
        best = self.best.values
        if wide:
            count = min(len(_GRID), 1 + wide // 5)
            names = self.rng.sample(sorted(_GRID), self.rng.randint(1, count))
            sizes = tuple(range(1, 2 + wide // 3))
            new = {
                k: self._step(k, best[k], self.rng.choice((1, -1)), self.rng.choice(sizes))
                for k in names
            }
            new = {k: v for k, v in new.items() if v != best[k]}
            changes = {k: [best[k], v] for k, v in new.items()}
            wider: dict[str, Any] = {"changes": changes, "parent_value": self.best_value()}
            return {**best, **new}, _describe(best, new), "swarm", wider
        if self.wave is None and self.rng.random() < _FACTORIAL / 9:
            self._new_wave()
        if self.wave is not None and self.wave.points:
            w = self.wave
            design = w.points.pop(0)
            settings = {f: w.levels[f][0 if s < 0 else 1] for f, s in design.items()}
            signs = " ".join("+" if s > 0 else "-" for s in design.values())
            desc = f"wave {w.id} [{signs}]: " + _describe(best, settings)
            point = {"wave": w.id, "design": design, "settings": settings, "step": 1}
            if not w.points:
                self.wave = None
            return {**best, **settings}, desc, "factorial", point
        if self.wave_id and self.rng.random() < 0.03:  # a combination of an earlier wave
            names = self.rng.sample(sorted(_GRID), 2)
            settings = {k: self._step(k, best[k], self.rng.choice((1, -1))) for k in names}
            desc = f"combine wave {self.wave_id}: " + _describe(best, settings)
            return (
                {**best, **settings},
                desc,
                "factorial",
                {"combine": self.wave_id, "settings": settings},
            )
        names = self.rng.sample(sorted(_GRID), self.rng.choice((1, 1, 1, 2)))
        new = {
            k: self._step(k, best[k], self.rng.choice((1, -1)), self.rng.choice((1, 1, 2)))
            for k in names
        }
        changes = {k: [best[k], v] for k, v in new.items()}
        meta: dict[str, Any] = {"changes": changes, "parent_value": self.best_value()}
        if self.rng.random() < 0.05:
            meta["carried"] = True
        return {**best, **new}, _describe(best, new), "swarm", meta

    def _new_wave(self) -> None:
        self.wave_id += 1
        factors = tuple(sorted(self.rng.sample(sorted(_GRID), 3)))
        best = self.best.values
        levels = {
            f: (best[f], not best[f])
            if isinstance(best[f], bool)
            else (self._step(f, best[f], -1), self._step(f, best[f], 1))
            for f in factors
        }
        points = [{f: (1 if (i >> j) & 1 else -1) for j, f in enumerate(factors)} for i in range(8)]
        self.wave = _Wave(self.wave_id, factors, points, levels)

    @staticmethod
    def _step(name: str, value: Any, direction: int, size: int = 1) -> Any:
        grid = _GRID[name]
        if isinstance(value, bool):
            return not value
        i = min(range(len(grid)), key=lambda j: abs(float(grid[j]) - float(value)))
        return grid[max(0, min(len(grid) - 1, i + direction * size))]

    def _candidate(self, *, simple: bool = False) -> None:
        """One candidate and its re-runs; ``simple``: one row (screened and discarded)."""
        roll = 1.0 if simple else self.rng.random()
        if roll < _DUPLICATE and self.variants:  # a proposal of files tried before
            values, twin, diff = self.rng.choice(self.variants)
            desc = _describe(
                self.best.values, {k: v for k, v in values.items() if v != self.best.values[k]}
            )
            proposer, pmeta = "swarm", {"changes": {}, "parent_value": self.best_value()}
        else:
            if roll < _DUPLICATE:  # nothing tried yet: a plain screen instead
                roll = 1.0
            # Knob proposers skip what was tried (ctx.seen), and so does this.
            for wide in range(1000):
                values, desc, proposer, pmeta = self._propose(wide)
                if fingerprint({"train.py": train_py(values)}) not in self.seen:
                    break
            twin, diff = None, ""
        files = {"train.py": train_py(values)}
        fp, key = fingerprint(files), dedup_key(files)
        created = min(self.slots.free)
        facts: dict[str, Any] = {"fingerprint": fp, "dedup": key, "knobs": dict(values)}
        common: dict[str, Any] = {
            "kind": Kind.CANDIDATE,
            "parent": self.best.commit,
            "description": desc or "(no change)",
            "proposer": proposer,
            "seed": self.cfg.run.seed,
            "now": created,
            "meta": pmeta,
        }
        twin = self.seen.get(fp, twin)
        if twin is not None:  # the scheduler's dedup: rejected, never committed
            self._add(
                status=Status.REJECTED,
                commit="",
                diff=diff,
                reason=f"duplicate of #{twin}",
                facts={**facts, "duplicate_of": twin},
                **common,
            )
            return
        commit = self.ws.commit_files(self.best.commit, files, f"autoswarm: {desc}")
        diff = self.ws.diff(self.best.commit, commit)
        if _DUPLICATE <= roll < _DUPLICATE + _SYNTAX:
            e = self._add(
                status=Status.CRASH,
                commit=commit,
                diff=diff,
                reason="syntax error: train.py line 9: invalid syntax",
                facts=facts,
                **common,
            )
            self.ws.pin(f"refs/autoswarm/{TAG}/{e.id}", commit)
            return
        e = self._add(status=Status.QUEUED, commit=commit, diff=diff, facts=facts, **common)
        self.ws.pin(f"refs/autoswarm/{TAG}/{e.id}", commit)
        self.seen[fp] = e.id
        self.variants.append((values, e.id, diff))
        if len(self.variants) > 2000:
            del self.variants[:1000]
        roll -= _DUPLICATE + _SYNTAX
        if roll < _CRASH:
            reason, duration = _CRASHES[int(roll / _CRASH * len(_CRASHES)) % len(_CRASHES)]
            start, end = self._run(e, created, duration)
            self.ledger.finish(
                e.id,
                status=Status.CRASH,
                metrics={},
                metric=None,
                finished_at=end,
                started_at=start,
                reason=reason,
            )
            return
        roll -= _CRASH
        promising = roll < _PROMISING
        keep = promising and roll < _PROMISING * _KEEP
        gain = 2.5 * SIGMA / (1.0 + len(self.standing) / 20.0)
        screen = self._measure(-2.0 * gain if promising else abs(self.rng.gauss(0.01, 0.02)))
        start, end = self._run(e, created, BUDGET + 30.0)
        e = self.ledger.finish(
            e.id,
            status=Status.PENDING,
            metrics=self._metrics(screen, values, end - start),
            metric=screen,
            finished_at=end,
            started_at=start,
        )
        if not promising:
            ev = self._evidence([screen], [screen], [])
            self._verdict(e, Status.DISCARD, ev, [], end)
            return
        second = roll < _PROMISING * _SECOND_LOOK
        confirms: list[Experiment] = []
        fresh: list[float] = []
        now = end
        for look in range(2 if second else 1):
            z = self._evidence([screen, *fresh], [screen], fresh).t
            rows = []
            for i in range(self.cfg.run.confirm_runs):
                seed = self.cfg.run.seed + 1 + len(confirms) + i
                rows.append(
                    self._add(
                        kind=Kind.CONFIRM,
                        status=Status.QUEUED,
                        parent=e.parent,
                        commit=commit,
                        description=f"confirm #{e.id} (seed {seed}): {desc}",
                        proposer=proposer,
                        seed=seed,
                        now=now,
                        facts={"purpose": Purpose.CONFIRM, "rerun_of": e.id, "z_before": z},
                    )
                )
            self.reruns.setdefault(e.id, []).extend(c.id for c in rows)
            for c in rows:
                offset = -gain if keep or (look == 0 and second) else SIGMA
                v = self._measure(offset)
                s, f = self._run(c, now, BUDGET + 30.0)
                confirms.append(
                    self.ledger.finish(
                        c.id,
                        status=Status.PENDING,
                        metrics=self._metrics(v, values, f - s),
                        metric=v,
                        finished_at=f,
                        started_at=s,
                    )
                )
                fresh.append(v)
                now = max(now, f)
        ev = self._evidence([screen, *fresh], [screen], fresh)
        self._verdict(e, Status.KEEP if keep else Status.DISCARD, ev, confirms, now)

    def _evidence(
        self, values: Sequence[float], selected: Sequence[float], fresh: Sequence[float]
    ) -> Evidence:
        bar = self.best.bar
        gain = statistics.fmean(bar) - statistics.fmean(values)
        se = SIGMA * math.sqrt(1 / len(values) + 1 / len(bar))
        t = gain / se
        own = statistics.stdev(values) if len(values) > 1 else 0.0
        return Evidence(
            values=tuple(values),
            selected=tuple(selected),
            fresh=tuple(fresh),
            bar=tuple(bar),
            bar_id=self.best.exp_id,
            sigma=SIGMA,
            sigma_df=float(min(400, 2 + self.count // 50)),
            own_sigma=own,
            gain=gain,
            se=se,
            t=t,
            df=float(min(400, 2 + self.count // 50)),
            p=0.5 * math.erfc(t / math.sqrt(2)),
            alpha=0.0005 if fresh else 0.001,
        )

    def _verdict(
        self,
        e: Experiment,
        status: Status,
        ev: Evidence,
        confirms: Sequence[Experiment],
        now: float,
    ) -> None:
        """The scheduler's _record_verdict: the candidate, then its pending re-runs."""
        facts: dict[str, Any] = {"evidence": ev}
        if status is Status.KEEP:
            facts["kept_at"] = now
        done = self.ledger.finish(
            e.id,
            status=status,
            metrics=e.metrics,
            metric=e.value("val_bpb"),
            finished_at=e.finished_at or now,
            facts=facts,
        )
        for c in confirms:
            self.ledger.finish(
                c.id,
                status=status,
                metrics=c.metrics,
                metric=c.value("val_bpb"),
                finished_at=c.finished_at or now,
            )
        if status is Status.KEEP:
            self.best = _Best(done.id, done.commit, dict(done.knobs or {}), ev.fresh or ev.values)
            self.standing.append(self.best)
            self.ws.advance_branch(
                self.run.branch, done.commit, f"autoswarm keep #{done.id}: {done.description}"
            )

    def _validate_best(self) -> None:
        """The end of a session: the best is re-run three times; the review may revoke it.

        As the scheduler does it: ``validated`` on the candidate, three replicate rows
        queued, each run kept and folded into the candidate's evidence, then (if the
        review says so) the keep and its re-runs revoked and the branch moved back.
        """
        best = self.best
        self.validated.add(best.exp_id)
        cand = self._update(self.ledger.get(best.exp_id), {"validated": True})
        revoke = self.rng.random() < _REVOKE and len(self.standing) > 1
        now = max(self.slots.free)
        rows = []
        for _ in range(3):
            seed = self.cfg.run.seed + 10 + self.seeds
            self.seeds += 1
            rows.append(
                self._add(
                    kind=Kind.CONFIRM,
                    status=Status.QUEUED,
                    parent=cand.parent,
                    commit=cand.commit,
                    description=f"validate best #{cand.id} (seed {seed}): {cand.description}",
                    proposer=cand.proposer,
                    seed=seed,
                    now=now,
                    facts={"purpose": Purpose.FINAL, "rerun_of": cand.id},
                )
            )
        self.reruns.setdefault(cand.id, []).extend(r.id for r in rows)
        assert cand.evidence is not None
        evidence = cand.evidence
        for r in rows:
            v = self._measure(3 * SIGMA if revoke else 0.0)
            s, f = self._run(r, now, BUDGET + 30.0)
            self.ledger.finish(
                r.id,
                status=Status.KEEP,
                metrics=self._metrics(v, best.values, f - s),
                metric=v,
                finished_at=f,
                started_at=s,
            )
            evidence = evidence.with_run(v)
            cand = self._update(cand, {"evidence": evidence})
        self.best = _Best(best.exp_id, best.commit, best.values, evidence.fresh)
        self.standing[-1] = self.best
        if not revoke:
            return
        end = max(self.slots.free)
        why = (
            f"revoked: re-measured at {statistics.fmean(evidence.fresh):.6f} on "
            f"{len(evidence.fresh)} fresh run(s); the gain over #{evidence.bar_id} "
            "does not hold"
        )
        self._update(cand, {"revoked_at": end}, status=Status.REVOKED, reason=why)
        for c in map(self.ledger.get, self.reruns.get(cand.id, ())):
            if c.status is Status.KEEP:
                self._update(
                    c,
                    {},
                    status=Status.REVOKED,
                    reason=f"a run of #{cand.id}, whose keep was revoked",
                )
        self.standing.pop()
        self.best = self.standing[-1]
        self.ws.advance_branch(
            self.run.branch,
            self.best.commit,
            f"autoswarm revoke #{cand.id}: back to {self.best.commit[:10]}",
        )

    def _update(
        self,
        e: Experiment,
        facts: Mapping[str, Any],
        *,
        status: Status | None = None,
        reason: str | None = None,
    ) -> Experiment:
        """The scheduler's _set_status: same row, new status/reason, facts set."""
        return self.ledger.finish(
            e.id,
            status=status or e.status,
            metrics=e.metrics,
            metric=e.value("val_bpb"),
            finished_at=e.finished_at or self.t,
            reason=e.reason if reason is None else reason,
            facts=facts,
        )

    def _orphans(self, k: int) -> None:
        """The last session dies with ``k`` experiments running (no end_session)."""
        for _ in range(k):
            for wide in range(1000):  # an orphan is a fresh variant
                values, desc, proposer, pmeta = self._propose(wide)
                files = {"train.py": train_py(values)}
                fp = fingerprint(files)
                if fp not in self.seen:
                    break
            commit = self.ws.commit_files(self.best.commit, files, f"autoswarm: {desc}")
            created = min(self.slots.free)
            e = self._add(
                kind=Kind.CANDIDATE,
                status=Status.QUEUED,
                parent=self.best.commit,
                commit=commit,
                diff=self.ws.diff(self.best.commit, commit),
                description=desc,
                proposer=proposer,
                seed=self.cfg.run.seed,
                now=created,
                meta=pmeta,
                facts={"fingerprint": fp, "dedup": dedup_key(files), "knobs": dict(values)},
            )
            self.seen[fp] = e.id
            self.ws.pin(f"refs/autoswarm/{TAG}/{e.id}", commit)
            self._run(e, created, BUDGET + 30.0)
        self.ledger.heartbeat(self.session, min(self.slots.free) + 60.0)


def _describe(current: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k} {format_literal(current[k])} -> {format_literal(v)}" for k, v in new.items()
    )


def config_record(cfg: Config) -> dict[str, Any]:
    """The run's config as ``Scheduler`` records it in ``runs.config``."""
    return cfg.to_record()


def run_config(root: Path) -> Config:
    """The settings the synthetic run was started with (16 slots, the default strategy)."""
    return with_overrides(load_config(root), workers=WORKERS, budget=BUDGET, timeout=960.0, tag=TAG)


@dataclass(frozen=True)
class Built:
    """A workspace whose ledger holds a synthetic run of ``experiments`` rows."""

    root: Path
    experiments: int
    counts: Mapping[str, int]
    last_id: int
    build_s: float

    def backup(self) -> Path:
        return self.root / ".autoswarm" / "ledger.sqlite.built"


def build(root: Path, n: int, *, seed: int = 0) -> Built:
    """A workspace at ``root`` with a run of ``n`` experiments (reused if built before)."""
    marker = root / ".autoswarm" / "scale-build.json"
    if marker.exists():
        rec = json.loads(marker.read_text())
        if rec.get("experiments") == n and rec.get("seed") == seed:
            built = Built(root, n, rec["counts"], rec["last_id"], rec["build_s"])
            # Built by an older schema: migrated once here, so no timed command pays for it.
            Ledger(built.backup()).close()
            return built
        shutil.rmtree(root)
    t0 = time.perf_counter()
    make_workspace(root, budget=BUDGET)
    cfg = run_config(root)
    ws = Workspace(root, cfg)
    with Ledger(ws.ledger_path) as ledger:
        run = _History(ws, ledger, cfg, n, seed).write()
        exps = ledger.experiments(run.id)
    counts: dict[str, int] = {}
    for e in exps:
        counts[e.status.value] = counts.get(e.status.value, 0) + 1
    build_s = time.perf_counter() - t0
    shutil.copy2(ws.ledger_path, root / ".autoswarm" / "ledger.sqlite.built")
    rec = {
        "experiments": n,
        "seed": seed,
        "counts": counts,
        "last_id": exps[-1].id,
        "build_s": build_s,
    }
    marker.write_text(json.dumps(rec))
    return Built(root, n, counts, exps[-1].id, build_s)


def restore(b: Built) -> None:
    """Put the ledger back as built (a resume probe writes to it)."""
    path = b.root / ".autoswarm" / "ledger.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy2(b.backup(), path)
    os.sync()  # the copy's writeback is not the next timed command's


# ---------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class Measure:
    """One command at one N: medians over the repetitions (``timed_out``: killed at the
    time limit, its figures are lower bounds)."""

    name: str
    command: str
    experiments: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    repeats: int
    goal_s: float | None = None
    timed_out: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        return None if self.goal_s is None else (not self.timed_out and self.wall_s < self.goal_s)


def _child(argv: Sequence[str], out: Path, timeout: float) -> tuple[int, float, float, float]:
    """Run ``argv`` (stdout and stderr to ``out``): exit code, wall s, CPU s, peak RSS MB.

    Stopped after ``timeout`` seconds of CPU time (RLIMIT_CPU: on a machine shared with
    other work, wall time says more about the other work than about the command), or
    after ten times that (at least an hour) of wall time; see :func:`_killed`.
    """

    def limit_cpu() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (int(timeout), int(timeout) + 5))

    with out.open("wb") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdout=f, stderr=subprocess.STDOUT, preexec_fn=limit_cpu
        )
        killer = threading.Timer(max(3600.0, 10 * timeout), proc.kill)
        killer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0


def _killed(rc: int) -> bool:
    """Whether :func:`_child` stopped the command (CPU limit: SIGXCPU, or SIGKILL)."""
    return rc in (-signal.SIGXCPU, -signal.SIGKILL)


def _python(profile: Path | None, name: str) -> list[str]:
    if profile is None:
        return [sys.executable]
    profile.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "cProfile", "-o", str(profile / f"{name}.prof")]


def _runs(
    argv: Callable[[Path | None], list[str]],
    out: Path,
    *,
    repeat: int,
    timeout: float,
    profile: Path | None,
    before: Callable[[], None] = lambda: None,
    after: Callable[[int], None] = lambda i: None,
) -> tuple[list[tuple[float, float, float]], bool]:
    """``repeat`` timed runs of ``argv(None)``, then one under cProfile if ``profile``.

    Returns (wall, CPU, RSS) per timed run and whether one was stopped at ``timeout``
    CPU seconds (then it is the only one: a command that slow is not repeated).
    """
    rows: list[tuple[float, float, float]] = []
    for i in range(repeat + (profile is not None)):
        before()
        prof = profile if i == repeat else None
        rc, wall, cpu, mb = _child(argv(prof), out, timeout)
        if _killed(rc) and prof is not None:
            break  # the profile of a command too slow to finish: the timed runs stand
        if _killed(rc):
            return [(wall, cpu, mb)], True
        if rc != 0:
            raise RuntimeError(f"{' '.join(argv(None))} failed ({rc}): {out.read_text()[-3000:]}")
        if prof is None:
            rows.append((wall, cpu, mb))
            after(i)
    return rows, False


def _median(rows: Sequence[tuple[float, ...]], k: int) -> float:
    return statistics.median(r[k] for r in rows)


def measure_cli(
    b: Built,
    name: str,
    args: Sequence[str],
    *,
    repeat: int,
    goal: float | None,
    timeout: float = 600.0,
    profile: Path | None = None,
) -> Measure:
    """``autoswarm ARGS --workspace ROOT`` in a fresh process, ``repeat`` times."""
    out = b.root.parent / f"out-{b.experiments}-{name}.txt"
    prof_dir = profile / str(b.experiments) if profile is not None else None

    def argv(prof: Path | None) -> list[str]:
        return [*_python(prof, name), "-m", "autoswarm", *args, "--workspace", str(b.root)]

    rows, killed = _runs(argv, out, repeat=repeat, timeout=timeout, profile=prof_dir)
    return Measure(
        name=name,
        command="autoswarm " + " ".join(args),
        experiments=b.experiments,
        wall_s=_median(rows, 0),
        cpu_s=_median(rows, 1),
        peak_rss_mb=_median(rows, 2),
        repeats=len(rows),
        goal_s=goal,
        timed_out=killed,
        extra={"bytes_out": out.stat().st_size},
    )


def measure_floor(workdir: Path, *, repeat: int, timeout: float = 600.0) -> Measure:
    """What every ``status`` pays whatever N: the interpreter, the CLI, numpy, scipy.stats."""
    code = "import autoswarm.cli, autoswarm.outputs, autoswarm.judge, scipy.stats"
    rows, killed = _runs(
        lambda prof: [sys.executable, "-c", code],
        workdir / "out-floor.txt",
        repeat=repeat,
        timeout=timeout,
        profile=None,
    )
    return Measure(
        name="floor",
        command="python -c 'import autoswarm.cli, autoswarm.judge, scipy.stats'",
        experiments=0,
        wall_s=_median(rows, 0),
        cpu_s=_median(rows, 1),
        peak_rss_mb=_median(rows, 2),
        repeats=len(rows),
        timed_out=killed,
    )


def measure_resume(
    b: Built, *, repeat: int, timeout: float = 600.0, profile: Path | None = None
) -> list[Measure]:
    """The resume probe ``repeat`` times: to the first dispatch, and to every slot busy."""
    marks: list[dict[str, Any]] = []
    out = b.root.parent / f"out-{b.experiments}-resume.txt"
    report = b.root.parent / f"resume-{b.experiments}.json"
    prof_dir = profile / str(b.experiments) if profile is not None else None

    def argv(prof: Path | None) -> list[str]:
        return [
            *_python(prof, "resume"),
            *("-m", "autoswarm.bench.scale", "--probe-resume", str(b.root)),
            *("--t0", repr(time.time()), "--report", str(report)),
        ]

    def before() -> None:
        restore(b)
        report.unlink(missing_ok=True)

    def after(i: int) -> None:
        if not report.exists():
            raise RuntimeError(f"the resume probe wrote no report: {out.read_text()[-3000:]}")
        marks.append(json.loads(report.read_text()))

    rows, killed = _runs(
        argv, out, repeat=repeat, timeout=timeout, profile=prof_dir, before=before, after=after
    )
    restore(b)
    common: dict[str, Any] = {"experiments": b.experiments, "repeats": len(rows)}
    if killed:
        wall, cpu, mb = rows[0]
        return [
            Measure(
                name=name,
                command=command,
                wall_s=wall,
                cpu_s=cpu,
                peak_rss_mb=mb,
                goal_s=goal,
                timed_out=True,
                **common,
            )
            for name, command, goal in (
                ("resume-first", "autoswarm run --resume (to the first dispatch)", GOALS["resume"]),
                (
                    "resume",
                    f"autoswarm run --resume (to all {WORKERS} slots busy)",
                    GOALS["resume"],
                ),
            )
        ]

    def med(mark: str, figure: str) -> float:
        return statistics.median(float(m[mark][figure]) for m in marks)

    return [
        Measure(
            name="resume-first",
            command="autoswarm run --resume (to the first dispatch)",
            wall_s=med("first", "wall_s"),
            cpu_s=med("first", "cpu_s"),
            peak_rss_mb=med("first", "rss_mb"),
            goal_s=GOALS["resume"],  # the start-up the issue names
            **common,
        ),
        Measure(
            name="resume",
            command=f"autoswarm run --resume (to all {WORKERS} slots busy)",
            wall_s=med("full", "wall_s"),
            cpu_s=med("full", "cpu_s"),
            peak_rss_mb=med("full", "rss_mb"),
            goal_s=GOALS["resume"],
            extra={
                "slots_busy": min(int(m["busy"]) for m in marks),
                "process_wall_s": _median(rows, 0),
                "process_rss_mb": _median(rows, 2),
            },
            **common,
        ),
    ]


def measure(
    b: Built, *, repeat: int = 3, timeout: float = 600.0, profile: Path | None = None
) -> list[Measure]:
    """Every command of the benchmark on one built workspace."""
    since = str(max(0, b.last_id - 50))
    commands: list[tuple[str, list[str], float | None]] = [
        ("status", ["status"], GOALS["status"]),
        ("status-json", ["status", "--json"], GOALS["status"]),
        ("results-since", ["results", "--since", since], None),
        ("results-since-json", ["results", "--since", since, "--format", "json"], None),
    ]
    out = [
        measure_cli(b, name, args, repeat=repeat, goal=goal, timeout=timeout, profile=profile)
        for name, args, goal in commands
    ]
    return out + measure_resume(b, repeat=repeat, timeout=timeout, profile=profile)


# ---------------------------------------------------------------------------
# The resume probe (a child process)


class _ProbeBackend:
    """A backend that runs nothing: it notes when each job is submitted (wall, CPU, RSS)
    and calls ``on_full`` once every slot has a job, or ``patience_s`` after the first
    one (a proposer that cannot fill the slots). Cancelled jobs report at once."""

    def __init__(
        self, slots: int, t0: float, on_full: Callable[[], None], patience_s: float = 60.0
    ) -> None:
        self.slots, self.t0, self.on_full = slots, t0, on_full
        self.marks: list[dict[str, float]] = []
        self._jobs: dict[int, Job] = {}
        self._done: list[RunResult] = []
        self._watchdog = threading.Timer(patience_s, on_full)
        self._watchdog.daemon = True

    def capacity(self) -> int:
        return self.slots

    def submit(self, job: Job) -> str:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.marks.append(
            {
                "wall_s": time.time() - self.t0,
                "cpu_s": ru.ru_utime + ru.ru_stime,
                "rss_mb": ru.ru_maxrss / 1024.0,
            }
        )
        self._jobs[job.experiment_id] = job
        if len(self.marks) == 1:
            self._watchdog.start()
        if len(self._jobs) >= self.slots:
            self.on_full()
        return json.dumps({"probe": job.experiment_id})

    def poll(self, timeout: float) -> list[RunResult]:
        done, self._done = self._done, []
        if not done:
            time.sleep(min(timeout, 0.01))
        return done

    def cancel(self, experiment_id: int, handle: str | None = None) -> None:
        job = self._jobs.pop(experiment_id, None)
        if job is not None:
            now = time.time()
            self._done.append(
                RunResult(
                    experiment_id=experiment_id,
                    exit_code=None,
                    timed_out=False,
                    started_at=now,
                    finished_at=now,
                    log_path=job.log_path,
                    cancelled=True,
                )
            )

    def close(self) -> None:
        self._watchdog.cancel()
        for exp_id in list(self._jobs):
            self.cancel(exp_id)


def probe_resume(root: Path, t0: float, report: Path) -> int:
    """What ``autoswarm run --resume --workspace ROOT`` does, with :class:`_ProbeBackend`."""
    from autoswarm.cli import _recorded_config
    from autoswarm.proposers.registry import make_proposer
    from autoswarm.scheduler import Scheduler

    cfg = _recorded_config(root, load_config(root), None)
    ws = Workspace(root, cfg)
    ledger = Ledger(ws.ledger_path)
    proposer = make_proposer(cfg, state_dir=ws.state_dir)
    holder: list[Scheduler] = []
    backend = _ProbeBackend(cfg.run.workers, t0, lambda: holder[0].request_stop())
    sched = Scheduler(workspace=ws, ledger=ledger, backend=backend, proposer=proposer, config=cfg)
    holder.append(sched)
    try:
        outcome = sched.run(tag=cfg.run.tag or None, resume=True)
    finally:
        ledger.close()
    if not backend.marks:
        return 1
    rec = {
        "first": backend.marks[0],
        "full": backend.marks[-1],
        "busy": len(backend.marks),
        "reason": outcome.reason,
    }
    report.write_text(json.dumps(rec))
    return 0


# ---------------------------------------------------------------------------
# The whole benchmark and its table


@dataclass(frozen=True)
class ScaleResult:
    built: Built
    measures: tuple[Measure, ...]


def run_scale(
    sizes: Sequence[int],
    *,
    workdir: Path | None = None,
    repeat: int = 3,
    seed: int = 0,
    timeout: float = 600.0,
    profile: Path | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[ScaleResult]:
    """Build (or reuse, in ``workdir``) a run of each size and measure every command on it."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = workdir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        floor = measure_floor(base, repeat=repeat, timeout=timeout)
        log(f"{floor.command}: {floor.wall_s:.2f} s wall, {floor.cpu_s:.2f} s CPU")
        for k, n in enumerate(sizes):
            log(f"building a ledger of {n} experiments ...")
            b = build(base / f"ws-{n}", n, seed=seed)
            log(f"  built in {b.build_s:.0f} s: {dict(sorted(b.counts.items()))}; measuring ...")
            ms = [floor] if k == 0 else []
            ms += measure(b, repeat=repeat, timeout=timeout, profile=profile)
            for m in ms:
                killed = " (killed at the time limit)" if m.timed_out else ""
                log(
                    f"  {m.command}: {m.wall_s:.2f} s wall, {m.cpu_s:.2f} s CPU, "
                    f"{m.peak_rss_mb:.0f} MB{killed}"
                )
            results.append(ScaleResult(b, tuple(ms)))
    return results


def markdown(results: Sequence[ScaleResult]) -> str:
    """The results as a markdown table (one row per command and N)."""
    lines = [
        "| experiments | command | wall (s) | CPU (s) | peak RSS (MB) | goal | met |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for m in r.measures:
            goal = f"< {m.goal_s:g} s" if m.goal_s is not None else ""
            met = "" if m.met is None else ("met" if m.met else "**not met**")
            n = "(any)" if m.name == "floor" else f"{m.experiments:,}"
            if m.timed_out:
                wall, cpu = f"> {m.wall_s:.0f} (killed)", f"> {m.cpu_s:.0f}"
            else:
                wall, cpu = f"{m.wall_s:.2f}", f"{m.cpu_s:.2f}"
            lines.append(
                f"| {n} | `{m.command}` | {wall} | {cpu} | {m.peak_rss_mb:.0f} | {goal} | {met} |"
            )
    lines.append("")
    lines.append("| experiments | build (s) | rows by status |")
    lines.append("|---:|---:|---|")
    for r in results:
        counts = ", ".join(f"{k} {v:,}" for k, v in sorted(r.built.counts.items()))
        lines.append(f"| {r.built.experiments:,} | {r.built.build_s:.0f} | {counts} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m autoswarm.bench.scale", description=__doc__.split("\n")[0]
    )
    p.add_argument("--experiments", default="1000,10000,100000", help="sizes, comma-separated")
    p.add_argument("--out", type=Path, help="write the markdown table here")
    p.add_argument("--json", type=Path, dest="json_out", help="write the figures as JSON here")
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per command (the median is reported)"
    )
    p.add_argument("--workdir", type=Path, help="keep (and reuse) the built workspaces here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="stop a command after this many seconds of CPU time",
    )
    p.add_argument("--profile", type=Path, help="write a cProfile file per command here")
    p.add_argument("--probe-resume", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.probe_resume is not None:
        return probe_resume(a.probe_resume, a.t0 or time.time(), a.report)
    sizes = [int(s.replace("_", "")) for s in a.experiments.split(",") if s.strip()]
    results = run_scale(
        sizes,
        workdir=a.workdir,
        repeat=a.repeat,
        seed=a.seed,
        timeout=a.timeout,
        profile=a.profile,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    table = markdown(results)
    print(table)
    if a.out is not None:
        a.out.write_text(table)
    if a.json_out is not None:
        a.json_out.write_text(
            json.dumps(
                [
                    {
                        "experiments": r.built.experiments,
                        "build_s": r.built.build_s,
                        "counts": dict(r.built.counts),
                        "measures": [dataclasses.asdict(m) for m in r.measures],
                    }
                    for r in results
                ],
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
