"""The scheduler: the research loop. Decides *when and where* experiments run.

One :meth:`Scheduler.run` call owns a workspace until the run ends::

    open or resume the run in the ledger (tag, branch autoswarm/<tag>)
    recover: orphaned and interrupted experiments go back to the queue
    queue the baseline repeats (unmodified files, seeds seed, seed+1, ...)
    loop:
        fill every free slot: queued experiments first, then the proposer's
        wait for results; judge each (crash | keep | discard), record it, advance the branch
        (a keep measured fewer than [run] best_runs times is re-run with the next seeds,
        and the best's bar becomes the mean of its runs)
    stop at a limit, when the proposer is exhausted, or on request (Ctrl-C)

With hardware tiers ([[pool.tiers]], see docs/pools.md) every slot belongs to a tier,
the baseline repeats run on every tier (each tier has its own baseline and σ), a first
run goes to the cheapest screening tier with a free slot, and a result is only ever
compared with the best measured *on its own tier*. With a validation tier, a screening
result whose gain clears the confirm margin is promoted (a CONFIRM row with
``meta["promoted"]``, run on the validation tier) and only the validation verdict can
advance the branch. Costs (tier price × measured duration) count toward --max-cost and
--max-gpu-hours, which stop dispatching like --time-limit does.

The ledger is written *before* each step takes effect (a row before a job starts,
a verdict before the branch moves), so an orchestrator killed at any moment is
resumed by re-reading it. Time comes from an injected clock, so the whole loop
runs against a fake backend in milliseconds in unit tests.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import difflib
import fcntl
import gc
import math
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from autoswarm import judge
from autoswarm.analysis.noise import Baseline, baseline_of
from autoswarm.backends.base import Backend, Reattachable
from autoswarm.clock import Clock, SystemClock
from autoswarm.config import Config
from autoswarm.costs import Cost, cost_by_tier, prices_of, slot_cost, total_cost
from autoswarm.dedup import dedup_key
from autoswarm.errors import BaselineError, RunLockedError, RunStateError
from autoswarm.judge import Action, Noise, Rule, Verdict
from autoswarm.knobs import knobs_of
from autoswarm.ledger import Ledger, RunRecord
from autoswarm.metrics import crash_reason, read_tail
from autoswarm.outputs import write_results_tsv
from autoswarm.policy import Best, best_of, kept_chain
from autoswarm.proposers.base import Context, IdlePolling, Proposer, fingerprint
from autoswarm.sandbox import scrubbed_env
from autoswarm.tiers import TierPlan, plan_tiers, tier_key
from autoswarm.types import Experiment, Job, Kind, Proposal, RunResult, Status
from autoswarm.workspace import Workspace

# ---------------------------------------------------------------------------
# Ownership of a workspace: one orchestrator at a time


class RunLock:
    """An exclusive ``flock`` on ``.autoswarm/run.lock``; the kernel releases it if we die."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "run.lock"
        self._f: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            f.close()
            raise RunLockedError(
                f"another `autoswarm run` (pid {owner}) is active on this workspace: wait for it, "
                f"watch it with `autoswarm status`, or stop it with `kill {owner}` (then --resume)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._f = f

    def release(self) -> None:
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None


# ---------------------------------------------------------------------------
# What the live view reads


@dataclass(frozen=True)
class SlotView:
    slot: int
    experiment_id: int
    description: str
    kind: Kind
    started_at: float


@dataclass(frozen=True)
class Snapshot:
    """A consistent picture of the run for the live view (copied under a lock)."""

    tag: str
    slots: tuple[SlotView | None, ...]
    counts: Mapping[str, int]
    best: Best | None
    baseline: Baseline | None
    elapsed_s: float
    time_limit_s: float
    max_experiments: int
    recent: tuple[Experiment, ...]
    now: float
    ended: str = ""
    # The run's own notices (revocations, slowed repeats, the end-of-run validation),
    # numbered so that a viewer prints each once.
    events: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Reproduce:
    """``autoswarm reproduce``: re-run one recorded experiment's commit with fresh seeds."""

    experiment_id: int
    runs: int = 3
    tier: str = ""


@dataclass
class RunOutcome:
    run: RunRecord
    reason: str
    best: Best | None
    counts: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# The scheduler


class Scheduler:
    """Runs the loop described in the module docstring."""

    def __init__(
        self,
        *,
        workspace: Workspace,
        ledger: Ledger,
        backend: Backend,
        proposer: Proposer,
        config: Config,
        clock: Clock | None = None,
        python: str = sys.executable,
        environ: Mapping[str, str] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.ws = workspace
        self.ledger = ledger
        self.backend = backend
        self.proposer = proposer
        self.cfg = config
        self.clock = clock or SystemClock()
        self.python = python
        self.environ = dict(os.environ if environ is None else environ)
        self.on_change = on_change
        self.metric = config.metric.name
        self.rule = Rule(
            direction=config.metric.direction,
            false_keep_rate=config.run.false_keep_rate,
            screen_sigmas=config.run.confirm_sigmas,
            confirm_runs=config.run.confirm_runs,
            keep_sigmas=config.run.keep_sigmas,
            min_delta=config.run.min_delta,
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # State rebuilt from the ledger at start, then kept up to date.
        self.run_rec: RunRecord | None = None
        self._session = 0
        self._session_start = 0.0
        self._prior_seconds = 0.0
        self._last_beat = 0.0
        self._queue: collections.deque[int] = collections.deque()
        self._running: dict[int, tuple[int, Experiment]] = {}
        self._all: dict[int, Experiment] = {}
        self._seen: dict[str, int] = {}
        self._twins: dict[str, int] = {}  # normalised key (autoswarm.dedup) -> first experiment
        self._files_cache: dict[str, dict[str, str]] = {}
        # Indexes that keep per-result work independent of the run's length.
        self._confirm_ids: dict[int, list[int]] = collections.defaultdict(list)
        self._best_cache: dict[str, tuple[tuple[Any, ...], Best]] = {}
        self._keeps = 0  # bumped on every candidate keep (and rebuild): invalidates _best_cache
        # Finished experiments' work directories are removed off the dispatch path; one
        # executor per run() (it is shut down, and waited for, when the run ends).
        self._cleanup: concurrent.futures.ThreadPoolExecutor
        self._durations: collections.deque[float] = collections.deque(maxlen=50)
        self._outputs_written = 0.0
        self._outputs_dirty = False
        self._idle_wait = 0.0
        self.baseline: Baseline | None = None
        self.best: Best | None = None
        self._ended = ""
        # Tiers: known once the backend says how many slots it has (see run()).
        self.tiers: TierPlan = plan_tiers(config.pool, backend.capacity())
        self._baselines: dict[str, Baseline | None] = {}
        self._prices = prices_of(config.pool)
        self._reattached: dict[int, int] = {}  # experiment id -> slot, adopted on --resume
        self._events: collections.deque[tuple[int, str]] = collections.deque(maxlen=50)
        self._event_count = 0
        # The noise model per tier, re-estimated whenever a commit gets another run.
        self._groups: dict[str, dict[str, list[float]]] = collections.defaultdict(dict)
        self._noise_cache: dict[str, tuple[int, Noise]] = {}
        self._measured = 0
        # End-of-run validation of the best ([run] final_runs) and `autoswarm reproduce`:
        # once started, only rows of that purpose are dispatched.
        self._final: str | None = None  # the reason the run ends, once validation started
        self._final_ids: set[int] = set()

    # -- public ----------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop soon: no new experiments; running ones are killed and marked interrupted."""
        self._stop.set()

    def run(
        self, *, tag: str | None = None, resume: bool = False, reproduce: Reproduce | None = None
    ) -> RunOutcome:
        """Run (or ``resume``) the loop; with ``reproduce``, only re-run one recorded commit."""
        lock = RunLock(self.ws.state_dir)
        lock.acquire()
        self._cleanup = concurrent.futures.ThreadPoolExecutor(1, "autoswarm-cleanup")
        reason = "error"
        try:
            run = self._open_run(tag, resume or reproduce is not None)
            self.run_rec = run
            now = self.clock.now()
            self._prior_seconds = sum(s.seconds for s in self.ledger.sessions(run.id))
            self._session = self.ledger.start_session(
                run.id, pid=os.getpid(), workers=self.backend.capacity(), now=now
            )
            self._session_start = now
            self._last_beat = now
            try:
                self._recover()
                # The rows rebuilt from the ledger live as long as the run: kept out of the
                # cyclic collector's passes (a long run's rows are millions of objects).
                collecting = gc.isenabled()
                gc.disable()
                try:
                    self._rebuild()
                finally:
                    gc.freeze()  # gc.unfreeze() when the run ends
                    if collecting:
                        gc.enable()
                if reproduce is not None:
                    self._start_reproduce(reproduce)
                else:
                    self._ensure_baseline()
                self._write_outputs()
                reason = self._loop()
            except KeyboardInterrupt:
                reason = "interrupted"
                raise
            except BaseException as e:
                reason = f"error: {e}"
                raise
            finally:
                self._shutdown(reason)
            return RunOutcome(run=run, reason=reason, best=self.best, counts=self._counts())
        finally:
            gc.unfreeze()
            lock.release()

    def snapshot(self) -> Snapshot:
        with self._lock:
            slots: list[SlotView | None] = [None] * self.backend.capacity()
            for exp_id, (slot, exp) in self._running.items():
                if 0 <= slot < len(slots):
                    slots[slot] = SlotView(
                        slot, exp_id, exp.description, exp.kind, exp.started_at or 0.0
                    )
            finished = sorted(
                (e for e in self._all.values() if e.status.is_finished()),
                key=lambda e: (e.finished_at or 0.0, e.id),
            )
            return Snapshot(
                tag=self.run_rec.tag if self.run_rec else "",
                slots=tuple(slots),
                counts=self._counts(),
                best=self.best,
                baseline=self.baseline,
                elapsed_s=self._elapsed(self.clock.now()),
                time_limit_s=self.cfg.run.time_limit,
                max_experiments=self.cfg.run.max_experiments,
                recent=tuple(finished[-8:]),
                now=self.clock.now(),
                ended=self._ended,
                events=tuple(self._events),
            )

    # -- opening and recovering a run -----------------------------------------

    def _open_run(self, tag: str | None, resume: bool) -> RunRecord:
        tag = tag or self.cfg.run.tag or None
        if resume:
            run = self.ledger.get_run(tag)
            if run is None:
                what = f"tagged {tag!r}" if tag else "at all"
                raise RunStateError(
                    f"there is no run {what} to resume in {self.ws.root}: start one with `autoswarm run`"
                )
            if not self.ws.ref_exists(f"refs/heads/{run.branch}"):
                self.ws.ensure_branch(run.branch, run.base_commit)
            config = self.cfg.to_record()
            if config != dict(run.config):  # flags of the resuming command (a longer limit, ...)
                self.ledger.update_run_config(run.id, config)
                run = self.ledger.get_run(run.tag) or run
            return run
        if tag is None:
            tag = self._fresh_tag()
        elif self.ledger.get_run(tag) is not None:
            raise RunStateError(
                f"a run tagged {tag!r} already exists: continue it with "
                f"`autoswarm run --resume --tag {tag}`, or choose a new --tag"
            )
        dirty = self.ws.dirty_files()
        if dirty:
            raise RunStateError(
                f"{', '.join(dirty)} has uncommitted changes; the baseline must be a commit: "
                f"`git -C {self.ws.root} commit -am 'my change'` (or `git stash`) and run again"
            )
        base = self.ws.head()
        branch = f"autoswarm/{tag}"
        if self.ws.ref_exists(f"refs/heads/{branch}"):
            raise RunStateError(
                f"branch {branch} already exists but the ledger has no run {tag!r}: "
                f"choose another --tag or delete it with `git branch -D {branch}`"
            )
        self.ws.ensure_branch(branch, base)
        config = self.cfg.to_record()
        return self.ledger.create_run(
            tag=tag, branch=branch, base_commit=base, config=config, now=self.clock.now()
        )

    def _fresh_tag(self) -> str:
        base = time.strftime("%b%d", time.localtime(self.clock.now())).lower()
        tag, n = base, 1
        while self.ledger.get_run(tag) is not None or self.ws.ref_exists(
            f"refs/heads/autoswarm/{tag}"
        ):
            n += 1
            tag = f"{base}-{n}"
        return tag

    def _recover(self) -> None:
        """Orphans (RUNNING from a dead orchestrator) are re-attached if the backend can and
        they still run; the others are killed and, with interrupted ones, re-queued (same id)."""
        assert self.run_rec is not None
        self._reattached = {}
        for exp in self.ledger.experiments(
            self.run_rec.id, statuses=[Status.RUNNING, Status.INTERRUPTED]
        ):
            if exp.status is Status.RUNNING:
                handle = self.ledger.handle(exp.id)
                if handle and self._reattach(exp, handle):
                    continue
                self.backend.cancel(exp.id, handle)
                why = "orphaned by an orchestrator that died; re-queued"
            else:
                why = "interrupted; re-queued"
            self.ledger.requeue(exp.id, reason=why)

    def _reattach(self, exp: Experiment, handle: str) -> bool:
        """Offer a still-running orphan to a :class:`Reattachable` backend; True if adopted."""
        if not isinstance(self.backend, Reattachable) or exp.slot is None:
            return False
        if not 0 <= exp.slot < self.backend.capacity() or exp.slot in self._reattached.values():
            return False
        job = self._job(exp, exp.slot, self.ws.run_dir(exp.id))
        if not self.backend.reattach(job, handle):
            return False
        self._reattached[exp.id] = exp.slot
        return True

    def _rebuild(self) -> None:
        assert self.run_rec is not None
        exps = self.ledger.experiments(self.run_rec.id)
        self._all = {e.id: e for e in exps}
        self._confirm_ids.clear()
        for e in sorted(exps, key=lambda e: e.id):
            if e.kind is Kind.CONFIRM:
                self._confirm_ids[int(e.meta["confirms"])].append(e.id)
        self._keeps += 1
        self._running = {i: (slot, self._all[i]) for i, slot in self._reattached.items()}
        self._reject_unplaceable()
        exps = list(self._all.values())
        for e in exps:
            fp = e.meta.get("fingerprint")
            if fp and e.status is not Status.REJECTED:
                self._seen.setdefault(str(fp), e.id)
            if e.status is not Status.REJECTED and e.kind is not Kind.CONFIRM and e.commit:
                key = e.meta.get("dedup") or dedup_key(self._files(e.commit))  # older rows: none
                self._twins.setdefault(str(key), e.id)
        queued = [e for e in exps if e.status is Status.QUEUED]
        queued.sort(key=lambda e: (e.kind is not Kind.BASELINE, e.id))
        self._queue = collections.deque(e.id for e in queued)
        self._durations.extend(
            d
            for e in sorted(exps, key=lambda e: e.finished_at or 0.0)
            if e.status in (Status.KEEP, Status.DISCARD, Status.PENDING)
            and (d := e.duration_s) is not None
        )
        self._groups.clear()
        for e in sorted(exps, key=lambda e: e.id):
            self._measure(e)
        self._refresh_baselines()
        self.best = best_of(exps, self.metric, self.baseline)
        finished = sorted(
            (e for e in exps if e.status.is_finished()), key=lambda e: (e.finished_at or 0, e.id)
        )
        for e in finished:
            self.proposer.observe(e)
        self._judge_pending()
        self._reconcile_branch()

    def _reconcile_branch(self) -> None:
        """The branch head must hold the best's files (a crash may have cut a keep short)."""
        assert self.run_rec is not None
        target = self.best.commit if self.best else self.run_rec.base_commit
        head = self.ws.rev_parse(f"refs/heads/{self.run_rec.branch}")
        if self.ws.tree_id(head) != self.ws.tree_id(target):
            self.ws.advance_branch(
                self.run_rec.branch, target, f"autoswarm: restore best ({target[:10]})"
            )

    def _ensure_baseline(self) -> None:
        """Queue the baseline repeats still missing, on every tier (each tier has its own)."""
        assert self.run_rec is not None
        base = self.run_rec.base_commit
        files = self._files(base)
        for tier in self.tiers.used:
            rows = [
                e for e in self._all.values() if e.kind is Kind.BASELINE and self._tier(e) == tier
            ]
            # A repeat left out as slowed by other load (DISCARD) is replaced, at most once each.
            left_out = sum(1 for e in rows if e.status is Status.DISCARD)
            have = len(rows) - min(left_out, self.cfg.run.baseline_repeats)
            on = f" on {tier}" if tier else ""
            for i in range(have, self.cfg.run.baseline_repeats):
                i += len(rows) - have  # seeds and descriptions continue after left-out repeats
                exp = self.ledger.add_experiment(
                    run_id=self.run_rec.id,
                    kind=Kind.BASELINE,
                    status=Status.QUEUED,
                    parent=base,
                    commit=base,
                    description=f"baseline{on}"
                    if i == 0
                    else f"baseline{on} (repeat {i + 1}, seed {self.cfg.run.seed + i})",
                    proposer="baseline",
                    seed=self.cfg.run.seed + i,
                    now=self.clock.now(),
                    meta={
                        "fingerprint": fingerprint(files),
                        "dedup": dedup_key(files),
                        "knobs": _knob_values(files),
                    }
                    | ({"tier": tier} if tier else {}),
                )
                self._all[exp.id] = exp
                self._seen.setdefault(fingerprint(files), exp.id)
                self._twins.setdefault(dedup_key(files), exp.id)
                self._queue.append(exp.id)
        self._refresh_baselines()
        # Baselines go first, whatever else was queued.
        self._queue = collections.deque(
            sorted(self._queue, key=lambda i: (self._all[i].kind is not Kind.BASELINE, i))
        )

    # -- the loop ------------------------------------------------------------------

    def _loop(self) -> str:
        while True:
            if self._stop.is_set():
                return "interrupted"
            now = self.clock.now()
            self._heartbeat(now)
            if self._outputs_dirty:
                self._write_outputs()
            limit = None if self._final else self._limit_reason(now)
            proposed_any = self._fill_slots(can_dispatch=limit is None)
            if not self._running:
                ending = self._final
                if ending is None and limit is not None:
                    ending = limit
                if ending is None and not self._queue and self._count_limit():
                    ending = "max experiments"
                if ending is None and not self._queue and self.proposer.exhausted:
                    ending = "proposer exhausted"
                if ending is not None:
                    if self._final is None and self._start_final(ending):
                        continue
                    return ending
                if not proposed_any:
                    # Nothing to run now (an asynchronous proposer is thinking): wait, a
                    # little longer each time, so an idle proposer is not asked in a busy loop.
                    # A proposer that waits on others (agents, submissions) may ask for a
                    # shorter cap (IdlePolling).
                    p = self.proposer
                    cap = float(p.idle_poll_s) if isinstance(p, IdlePolling) else 5.0
                    self._idle_wait = min(cap, max(0.2, self._idle_wait * 2))
                    self.clock.sleep(self._idle_wait)
                    continue
            self._idle_wait = 0.0
            for result in self.backend.poll(timeout=0.5):
                self._on_result(result)

    def _limit_reason(self, now: float) -> str | None:
        r = self.cfg.run
        elapsed = self._elapsed(now)
        if r.time_limit and elapsed >= r.time_limit:
            return "time limit"
        if r.time_limit and elapsed + self._expected_duration() > r.time_limit:
            return "time limit (no time for another experiment)"
        if r.max_cost or r.max_gpu_hours:
            return self._cost_limit(now)
        return None

    def cost(self, now: float | None = None) -> dict[str, Cost]:
        """Tier key -> dollars and GPU-hours so far (running experiments up to ``now``)."""
        with self._lock:
            exps = list(self._all.values())
        return cost_by_tier(exps, self.cfg.pool, self.clock.now() if now is None else now)

    def _cost_limit(self, now: float) -> str | None:
        """Like the time limit: stop dispatching once the next experiment could overrun."""
        r = self.cfg.run
        spent = total_cost(self.cost(now))
        expected = self._expected_duration()
        # What the running experiments will have cost when they end, plus one more first run.
        committed = spent
        for _, exp in self._running.values():
            ran = max(0.0, now - (exp.started_at or now))
            price = self._prices.get(self._tier(exp))
            if price is not None:
                committed = committed + slot_cost(price, max(0.0, expected - ran))
        nxt = slot_cost(self._prices[self.tiers.screening[0]], expected)
        if r.max_cost and spent.usd >= r.max_cost:
            return "cost limit"
        if r.max_gpu_hours and spent.gpu_hours >= r.max_gpu_hours:
            return "gpu-hour limit"
        if r.max_cost and (committed + nxt).usd > r.max_cost:
            return "cost limit (no budget for another experiment)"
        if r.max_gpu_hours and (committed + nxt).gpu_hours > r.max_gpu_hours:
            return "gpu-hour limit (no budget for another experiment)"
        return None

    def _count_limit(self) -> bool:
        m = self.cfg.run.max_experiments
        return bool(m) and len(self._all) >= m

    def _expected_duration(self) -> float:
        """Median duration of the last experiments that ran to the end (budget until one has)."""
        return statistics.median(self._durations) if self._durations else self.cfg.run.budget

    def _fill_slots(self, *, can_dispatch: bool) -> bool:
        """Start work in every free slot; True if anything was started or proposed."""
        if not can_dispatch:
            return False
        busy = {slot for slot, _ in self._running.values()}
        free = [s for s in range(self.backend.capacity()) if s not in busy]
        acted = False
        while free:
            pick = self._pick(free)
            if pick is None and self._final is None:
                # Nothing queued fits a free slot: ask for first runs for the free screening slots.
                want = sum(1 for s in free if self.tiers.screens(s))
                if self.cfg.run.max_experiments:
                    want = min(want, self.cfg.run.max_experiments - len(self._all))
                if want > 0 and not self._count_limit():
                    for proposal in self.proposer.propose(self._context(), want)[:want]:
                        self._admit(proposal)
                        acted = True
                pick = self._pick(free)
            if pick is None:
                break
            exp_id, slot = pick
            self._queue.remove(exp_id)
            free.remove(slot)
            self._dispatch(exp_id, slot)
            acted = True
        return acted

    def _pick(self, free: list[int]) -> tuple[int, int] | None:
        """The first queued experiment that fits a free slot, and that slot.

        Pinned rows (baselines, confirmations, promotions) go to a slot of their tier;
        first runs to the cheapest screening tier with a free slot.
        """
        plan = self.tiers
        for exp_id in self._queue:
            if self._final is not None and exp_id not in self._final_ids:
                continue  # validating the best at the end: nothing else starts
            pin = self._all[exp_id].meta.get("tier")
            if pin is not None and plan.slot_tiers and pin not in plan.tiers:
                pin = None  # pinned to a tier the pool no longer has (see _reject_unplaceable)
            wanted = (pin,) if pin is not None else plan.screening
            for tier in wanted:
                for s in free:
                    if plan.slot_tiers[s] == tier or not self.cfg.pool.tiers:
                        return exp_id, s
        return None

    def _context(self) -> Context:
        best_commit = self.best.commit if self.best else self._base()
        with self._lock:
            running = tuple(exp for _, exp in self._running.values())
            history = tuple(
                sorted(
                    (e for e in self._all.values() if e.status.is_finished()), key=lambda e: e.id
                )
            )
        return Context(
            best_commit=best_commit,
            best_files=self._files(best_commit),
            best_value=self.best.value
            if self.best and self.baseline and self.baseline.complete
            else None,
            noise_sigma=self.baseline.sigma if self.baseline and self.baseline.complete else None,
            metric=self.metric,
            direction=self.cfg.metric.direction,
            running=running,
            history=history,
            seen=frozenset(self._seen),
            now=self.clock.now(),
            tag=self.run_rec.tag if self.run_rec else "",
        )

    # -- admitting and dispatching -----------------------------------------------

    def _admit(self, p: Proposal) -> Experiment:
        """Record a proposal: QUEUED if it may run, REJECTED or CRASH (syntax) otherwise."""
        assert self.run_rec is not None
        now = self.clock.now()
        files = {os.path.normpath(k): v for k, v in p.files.items()}
        check = self.ws.check_proposal(p.parent, files)
        editable = self.cfg.workspace.editable
        parent_files = self._files(p.parent)
        full = {path: files.get(path, parent_files.get(path, "")) for path in editable}
        fp = fingerprint(full)
        key = dedup_key(full)
        # `autoswarm submit` reserved the experiment's id (see Ledger.add_submission).
        reserved = p.meta.get("submission")
        common: dict[str, Any] = dict(
            exp_id=int(reserved) if isinstance(reserved, int) else None,
            run_id=self.run_rec.id,
            kind=Kind.CANDIDATE,
            parent=p.parent,
            description=_one_line(p.description),
            proposer=p.proposer,
            seed=self.cfg.run.seed,
            now=now,
            meta={**dict(p.meta), "fingerprint": fp, "dedup": key, "knobs": _knob_values(full)},
        )
        twin = self._seen.get(fp)
        if twin is None:  # near-identical: same code up to layout and comments
            twin = self._twins.get(key)
        if check.problem and not check.problem.startswith("syntax error"):
            exp = self.ledger.add_experiment(
                status=Status.REJECTED,
                commit="",
                diff=_text_diff(self.ws, p),
                reason=check.problem,
                **common,
            )
        elif twin is not None:
            common["meta"] = {**common["meta"], "duplicate_of": twin}
            exp = self.ledger.add_experiment(
                status=Status.REJECTED,
                commit="",
                diff=_text_diff(self.ws, p),
                reason=f"duplicate of #{twin}",
                **common,
            )
        elif not check.changed:
            exp = self.ledger.add_experiment(
                status=Status.REJECTED, commit="", diff="", reason="changes nothing", **common
            )
        else:
            changed = {path: files[path] for path in check.changed}
            commit = self.ws.commit_files(p.parent, changed, f"autoswarm: {common['description']}")
            diff = self.ws.diff(p.parent, commit)
            if check.problem:  # syntax error: recorded as a crash without spending a slot
                exp = self.ledger.add_experiment(
                    status=Status.CRASH, commit=commit, diff=diff, reason=check.problem, **common
                )
            else:
                exp = self.ledger.add_experiment(
                    status=Status.QUEUED, commit=commit, diff=diff, **common
                )
                self._queue.append(exp.id)
                self._seen[fp] = exp.id
                self._twins.setdefault(key, exp.id)
            self.ws.pin(f"refs/autoswarm/{self.run_rec.tag}/{exp.id}", commit)
        with self._lock:
            self._all[exp.id] = exp
        if exp.status.is_finished():
            self.proposer.observe(exp)
            self._write_outputs()
        return exp

    def _job(self, exp: Experiment, slot: int, workdir: Path) -> Job:
        argv = tuple(self.python if a == "{python}" else a for a in self.cfg.workspace.command)
        env = scrubbed_env(
            self.environ,
            {
                "AUTOSWARM_BUDGET": f"{self.cfg.run.budget:g}",
                "AUTOSWARM_SEED": str(exp.seed),
                "AUTOSWARM_EXPERIMENT": str(exp.id),
            },
        )
        return Job(
            experiment_id=exp.id,
            workdir=workdir,
            argv=argv,
            env=env,
            timeout_s=self.cfg.run.effective_timeout,
            slot=slot,
            log_path=self.ws.log_path(exp.id),
            budget_s=self.cfg.run.budget,
            tier=self.tiers.slot_tiers[slot] if slot < len(self.tiers.slot_tiers) else "",
        )

    def _dispatch(self, exp_id: int, slot: int) -> None:
        exp = self._all[exp_id]
        workdir = self.ws.materialize(exp.commit, self.ws.run_dir(exp_id))
        job = self._job(exp, slot, workdir)
        started = self.clock.now()
        self.ledger.mark_running(
            exp_id, slot=slot, started_at=started, log_path=str(job.log_path), tier=job.tier
        )
        handle = self.backend.submit(job)
        self.ledger.set_handle(exp_id, handle)
        with self._lock:
            running = self.ledger.get(exp_id)
            self._all[exp_id] = running
            self._running[exp_id] = (slot, running)
        self._changed()

    # -- results -------------------------------------------------------------------

    def _on_result(self, r: RunResult) -> None:
        with self._lock:
            entry = self._running.pop(r.experiment_id, None)
        if entry is None:
            return  # a result for something we no longer track (already handled)
        exp = entry[1]
        metrics = dict(r.metrics)
        if r.cancelled:
            self._finish(
                exp,
                Status.INTERRUPTED,
                r,
                metrics,
                "interrupted; `autoswarm run --resume` runs it again",
            )
            return
        reason = crash_reason(
            exit_code=r.exit_code,
            timed_out=r.timed_out,
            timeout_s=self.cfg.run.effective_timeout,
            metrics=metrics,
            metric=self.metric,
            log_tail=read_tail(r.log_path),
            error=r.error,
        )
        if reason:
            done = self._finish(exp, Status.CRASH, r, metrics, reason)
            if exp.kind is Kind.BASELINE:
                raise BaselineError(
                    f"the baseline (the unmodified {', '.join(self.cfg.workspace.editable)}) crashed: {reason}. "
                    f"Read its log ({r.log_path}), fix the files so that `python train.py` prints the "
                    f"'---' summary block with '{self.metric}:', commit, and start a new run"
                )
            if exp.kind is Kind.CONFIRM and exp.meta.get("replicates"):
                self.proposer.observe(done)  # the kept variant stays kept on its evidence
            elif exp.kind is Kind.CONFIRM:
                parent = self._all[int(exp.meta["confirms"])]
                what = "validation" if exp.meta.get("promoted") else "confirmation"
                self._conclude_discard(parent, f"{what} run #{exp.id} crashed: {reason}")
            else:
                self.proposer.observe(done)
            return
        self._durations.append(r.duration_s)
        if exp.kind is Kind.BASELINE:
            self.proposer.observe(self._finish(exp, Status.KEEP, r, metrics, ""))
            self._check_baseline(self._tier(exp))
            return
        if exp.kind is Kind.CONFIRM and exp.meta.get("replicates"):
            parent = self._all[int(exp.meta["confirms"])]
            if parent.status is Status.REVOKED:  # revoked while this one ran
                why = f"a run of #{parent.id}, whose keep was revoked"
                self.proposer.observe(self._finish(exp, Status.REVOKED, r, metrics, why))
                self._write_outputs()
                return
            self._replicated(self._finish(exp, Status.KEEP, r, metrics, ""))
            return
        if exp.kind is Kind.CONFIRM:
            parent = self._all[int(exp.meta["confirms"])]
            if parent.status is not Status.PENDING:  # decided while this one ran
                self.proposer.observe(
                    self._finish(
                        exp, Status.DISCARD, r, metrics, f"#{parent.id} was already decided"
                    )
                )
                return
            self._finish(exp, Status.PENDING, r, metrics, "")
            self._verdict(parent)
            return
        self._verdict(self._finish(exp, Status.PENDING, r, metrics, ""))

    def _check_baseline(self, tier: str) -> None:
        """Once a tier's repeats are in: leave out a repeat slowed by other load, then judge."""
        rows = sorted(
            (
                e
                for e in self._all.values()
                if e.kind is Kind.BASELINE and self._tier(e) == tier and e.status is Status.KEEP
            ),
            key=lambda e: e.id,
        )
        if len(rows) >= self.cfg.run.baseline_repeats:
            steps = [e.metrics.get("num_steps") for e in rows]
            for i in judge.slowed(steps):
                e = rows[i]
                others = statistics.median(
                    s for j, s in enumerate(steps) if j != i and s is not None
                )
                why = (
                    f"slowed by other load on the machine ({steps[i]:g} steps, the other repeats "
                    f"a median of {others:g}): left out of the noise estimate and re-run"
                )
                self._unmeasure(self._refinish(e, Status.DISCARD, why))
                self._event(f"baseline #{e.id} {why}")
            if any(self._all[e.id].status is Status.DISCARD for e in rows):
                self._ensure_baseline()
        self._refresh_baselines()
        self.best = best_of(list(self._all.values()), self.metric, self.baseline)
        base = self._baselines.get(tier)
        if base and base.complete:
            self._judge_pending()

    def _judge_pending(self) -> None:
        """Decide every candidate that waits for a verdict (after a baseline, on resume)."""
        pending = sorted(
            (
                e
                for e in self._all.values()
                if e.status is Status.PENDING and e.kind is Kind.CANDIDATE
            ),
            key=lambda e: (e.finished_at or 0.0, e.id),
        )
        for e in pending:
            self._verdict(e)

    def _confirmations(self, cand: Experiment) -> list[Experiment]:
        """``cand``'s re-runs (confirmation, validation, re-measurement), oldest first."""
        return [self._all[i] for i in self._confirm_ids.get(cand.id, ())]

    def _noise(self, tier: str) -> Noise:
        """The noise model of ``tier`` now (:func:`autoswarm.judge.noise_model`), cached."""
        cached = self._noise_cache.get(tier)
        if cached is not None and cached[0] == self._measured:
            return cached[1]
        groups = self._groups.get(tier, {})
        base = self._baselines.get(tier)
        first = groups.get(base.commit, []) if base else []
        others = [g for c, g in groups.items() if len(g) > 1 and (base is None or c != base.commit)]
        noise = judge.noise_model([first, *others])
        self._noise_cache[tier] = (self._measured, noise)
        return noise

    def _measure(self, e: Experiment) -> None:
        """Add ``e``'s value to its commit's group (the noise model's input)."""
        v = e.value(self.metric)
        if v is None or not e.commit or e.status not in _MEASURED:
            return
        if e.kind is Kind.BASELINE and e.status is not Status.KEEP:
            return  # a repeat left out (slowed by other load)
        group = self._groups[self._tier(e)].setdefault(e.commit, [])
        group.append(v)
        if len(group) > 1:
            self._measured += 1

    def _unmeasure(self, e: Experiment) -> None:
        v = e.metrics.get(self.metric)
        group = self._groups[self._tier(e)].get(e.commit, [])
        if v in group:
            group.remove(v)
            self._measured += 1

    def _room(self, need: int = 1) -> bool:
        """Whether the run's limits leave room for ``need`` more runs (none once it ends)."""
        if self._final is not None:
            return False
        m = self.cfg.run.max_experiments
        if m and len(self._all) + need > m:
            return False
        return self._limit_reason(self.clock.now()) is None

    def _verdict(self, cand: Experiment) -> None:
        """Screen, confirm, keep or discard ``cand`` (the rule: :mod:`autoswarm.judge`).

        A first run is a screen; a promising one is re-run with fresh seeds (on its own
        tier, or promoted to the tier where it counts), and the verdict is on all its runs
        on the deciding tier, against the best measured on that same tier, with that
        tier's noise model. A screening stage is final without a validation tier, unless
        the current best was never measured on that tier (then the candidate is promoted
        to a tier where the best was measured).
        """
        assert self.run_rec is not None
        if cand.status is not Status.PENDING:
            return  # already decided (a sibling re-run crashed and discarded it)
        confirms = [c for c in self._confirmations(cand) if not c.meta.get("replicates")]
        if any(c.status in (Status.QUEUED, Status.RUNNING, Status.INTERRUPTED) for c in confirms):
            return  # evidence still on its way
        promoted = [c for c in confirms if c.meta.get("promoted")]
        rows = promoted if promoted else [cand, *confirms]
        tier = self._tier(rows[0])
        base = self._baselines.get(tier)
        if base is None or not base.complete:
            return  # judged once this tier's own baseline is complete
        values = [v for e in rows if (v := e.value(self.metric)) is not None]
        if not values:  # its runs were withdrawn (a tier left the pool)
            self._conclude_discard(cand, "no usable run left to decide on")
            return
        best = self._best_on(tier)
        noise = self._noise(tier)
        current = self.best.commit if self.best else best.commit
        final = bool(promoted) or (self.tiers.validation is None and best.commit == current)
        room = self._room(max(1, self.rule.confirm_runs))
        if not promoted and not confirms:
            sv = judge.screen(
                self.rule, values[0], best.samples, best.experiment_id, noise, room=room
            )
            runs = max(1, self.rule.confirm_runs)
            if not final and sv.action is not Action.DISCARD:
                # A screen on a tier that does not decide: run it where it counts.
                target = self._promotion_tier(current)
                if room and target is not None:
                    self._add_reruns(cand, target, runs, promoted=True, ev=sv.evidence)
                    return
                why = (
                    f"promising on {tier} (z={sv.evidence.t:.2f}) but the run's limits leave "
                    "no room to validate it"
                )
                self._conclude(cand, Verdict(Action.DISCARD, sv.evidence, reason=why))
                return
            if sv.action is Action.CONFIRM:
                self._add_reruns(cand, tier, sv.runs, promoted=False, ev=sv.evidence)
                return
            if not room and sv.action is Action.DISCARD and sv.evidence.gain > self.rule.min_delta:
                se1 = noise.sigma * math.sqrt(1 + 1 / len(best.samples))
                if se1 > 0 and sv.evidence.gain / se1 > self.rule.screen_sigmas:
                    sv = dataclasses.replace(
                        sv,
                        reason="promising, but the run's limits leave no room for the "
                        f"{self.rule.confirm_runs} fresh runs a keep needs",
                    )
            self._conclude(cand, sv)
            return
        selected = 0 if promoted else 1
        per_look = max(1, self.rule.confirm_runs)
        look = math.ceil((len(values) - selected) / per_look)
        verdict = judge.judge(
            self.rule,
            values,
            selected,
            best.samples,
            best.experiment_id,
            noise,
            look=look,
            room=self._room(per_look),
        )
        if verdict.action is Action.CONFIRM:  # promising, short of the keep level: more fresh runs
            seed = max(e.seed for e in [cand, *confirms]) + 1
            self._add_reruns(
                cand, tier, verdict.runs, promoted=bool(promoted), ev=verdict.evidence, seed=seed
            )
            return
        self._conclude(cand, verdict)

    def _best_runs(self) -> int:
        """How many fresh runs a kept variant's bar should rest on ([run] best_runs)."""
        return self.cfg.run.best_runs or self.cfg.run.baseline_repeats

    def _replicate(self, cand: Experiment, fresh: int) -> None:
        """Queue re-runs of a just-kept ``cand`` until its bar rests on ``best_runs`` fresh runs.

        The winner's curse: of many candidates compared with the best, the one kept is
        likely to have been measured lucky; its bar is the mean of runs measured after it
        was selected. The re-runs go to the tier its evidence came from, with the next seeds.
        """
        missing = self._best_runs() - fresh
        if missing <= 0 or not self._room():
            return
        m = self.cfg.run.max_experiments
        if m:
            missing = min(missing, m - len(self._all))  # --max-experiments counts these too
        self._queue_replicates(cand, missing, "re-measure kept")

    def _queue_replicates(self, cand: Experiment, n: int, what: str, **flags: Any) -> list[int]:
        confirms = [c for c in self._confirmations(cand) if c.kind is Kind.CONFIRM]
        promoted = [c for c in confirms if c.meta.get("promoted")]
        rows = promoted if promoted else [cand, *confirms]
        meta: dict[str, Any] = {"confirms": cand.id, "replicates": True, **flags}
        if tier := self._tier(rows[0]):
            meta["tier"] = tier
        seed = max(e.seed for e in [cand, *confirms]) + 1
        ids = []
        for i in range(n):
            ids.append(self._queue_rerun(cand, f"{what} #{cand.id}", seed + i, meta))
        return ids

    def _replicated(self, rep: Experiment) -> None:
        """A re-run of a kept variant is in: its value joins the variant's fresh runs, and
        the keep is reviewed against the bar it replaced (and revoked if it no longer holds)."""
        cand = self._all[int(rep.meta["confirms"])]
        value = rep.value(self.metric)
        evidence = dict(cand.meta.get("evidence") or {})
        fresh = [float(v) for v in evidence.get("fresh") or []]
        values = [float(v) for v in evidence.get("values") or []]
        if value is not None and values and cand.status is Status.KEEP:
            # The runs the keep was decided on; every later one is a replicate.
            evidence.setdefault("decided_runs", len(values))
            fresh.append(value)
            values.append(value)
            evidence.update(
                values=values,
                runs=len(values),
                mean=statistics.fmean(values),
                fresh=fresh,
                replicated_mean=statistics.fmean(fresh),
            )
            updated = self._update_meta(cand, {"evidence": evidence})
            standing = updated.status is Status.KEEP
            if standing and self.best is not None and self.best.experiment_id == cand.id:
                self.best = Best(
                    statistics.fmean(fresh), cand.commit, cand.id, len(fresh), tuple(fresh)
                )
            bar = [float(v) for v in evidence.get("bar") or []]
            noise = self._noise(self._tier(rep))
            action, why = judge.review(
                self.rule, fresh, bar, noise, values=values, kept_with=evidence["decided_runs"]
            )
            if standing and action is Action.REVOKE:
                self._revoke(
                    updated,
                    f"revoked: re-measured at {statistics.fmean(fresh):.6f} on {len(fresh)} fresh "
                    f"run(s); {why} (#{evidence.get('bar_id')} at {statistics.fmean(bar):.6f})",
                )
        self.proposer.observe(rep)
        self._write_outputs()

    def _revoke(self, cand: Experiment, why: str) -> None:
        """Withdraw a keep whose evidence no longer stands; the branch moves back.

        Keeps made after it were judged against a bar that no longer stands: each is
        judged again against the best standing before it, and revoked too unless its own
        runs beat that one.
        """
        assert self.run_rec is not None
        later = [
            k
            for k in kept_chain(list(self._all.values()), self.metric)
            if k.id != cand.id
            and float(k.meta.get("kept_at", 0.0)) >= float(cand.meta.get("kept_at", 0.0))
        ]
        self._set_status(cand, Status.REVOKED, why, {"revoked_at": self.clock.now()})
        self._event(f"#{cand.id} {why}")
        # Each later keep is judged against the best standing before it: without itself
        # and the keeps after it (those not yet judged again), with the ones that stood.
        waiting = {k.id for k in later}
        for k in later:
            standing = [e for e in self._all.values() if e.id not in waiting]
            self.best = best_of(standing, self.metric, self.baseline)
            self._keeps += 1  # the cached bars per tier are stale
            tier = self._tier(k)
            bar = (
                self._best_on(tier, without=frozenset(waiting))
                if self._baselines.get(tier)
                else self.best
            )
            waiting.discard(k.id)
            ev = dict(k.meta.get("evidence") or {})
            values = [float(v) for v in ev.get("values") or []]
            selected = len(ev.get("selected") or [])
            if bar is None or not values:
                continue
            v = judge.judge(
                self.rule, values, selected, bar.samples, bar.experiment_id, self._noise(tier)
            )
            if v.action is not Action.KEEP:
                self._set_status(
                    k,
                    Status.REVOKED,
                    f"revoked: judged against #{cand.id}, which was revoked; against "
                    f"#{bar.experiment_id} it does not hold (p={v.evidence.p:.3g})",
                    {"revoked_at": self.clock.now()},
                )
        self._refresh_best()
        target = self.best.commit if self.best else self.run_rec.base_commit
        self.ws.advance_branch(
            self.run_rec.branch, target, f"autoswarm revoke #{cand.id}: back to {target[:10]}"
        )
        self.proposer.observe(self._all[cand.id])
        self._write_outputs()

    def _refresh_best(self) -> None:
        self._keeps += 1
        self.best = best_of(list(self._all.values()), self.metric, self.baseline)

    def _set_status(
        self, e: Experiment, status: Status, reason: str, meta: Mapping[str, Any]
    ) -> Experiment:
        with self._lock:
            done = self._refinish(e, status, reason, {**e.meta, **meta})
            if status is Status.REVOKED:  # its re-runs were kept with it: withdrawn with it
                for c in self._confirmations(e):
                    if c.status is Status.KEEP:
                        self._refinish(
                            c, Status.REVOKED, f"a run of #{e.id}, whose keep was revoked"
                        )
                    elif c.status is Status.QUEUED and c.id not in self._final_ids:
                        self._withdraw(c, f"not run: #{e.id}'s keep was revoked")
        self._keeps += 1
        return done

    def _refinish(
        self,
        e: Experiment,
        status: Status,
        reason: str = "",
        meta: Mapping[str, Any] | None = None,
    ) -> Experiment:
        """Give a finished row a new status (a verdict, a revocation), keeping its metrics."""
        done = self.ledger.finish(
            e.id,
            status=status,
            metrics=e.metrics,
            metric=e.value(self.metric),
            finished_at=e.finished_at or self.clock.now(),
            reason=reason,
            meta=meta,
        )
        self._all[e.id] = done
        return done

    def _withdraw(self, e: Experiment, reason: str) -> Experiment:
        """A queued row that will never run: out of the queue, recorded REJECTED with why."""
        if e.id in self._queue:
            self._queue.remove(e.id)
        done = self.ledger.finish(
            e.id,
            status=Status.REJECTED,
            metrics={},
            metric=None,
            finished_at=self.clock.now(),
            reason=reason,
        )
        self._all[e.id] = done
        return done

    def _update_meta(self, e: Experiment, meta: Mapping[str, Any]) -> Experiment:
        return self._set_status(e, e.status, e.reason, meta)

    def _add_reruns(
        self,
        cand: Experiment,
        tier: str,
        n: int,
        *,
        promoted: bool,
        ev: judge.Evidence,
        seed: int | None = None,
    ) -> None:
        """Queue ``n`` confirmation (same tier) or validation (another tier) runs of ``cand``,
        with fresh seeds: they are the evidence its verdict, and its bar, rest on."""
        meta: dict[str, Any] = {
            "confirms": cand.id,
            "z_before": ev.t if math.isfinite(ev.t) else None,
        }
        if tier:
            meta["tier"] = tier
        if promoted:
            meta["promoted"] = True
            meta["screening"] = ev.as_meta()  # the evidence that earned the promotion
        for i in range(n):
            what = f"validate #{cand.id} on {tier}" if promoted else f"confirm #{cand.id}"
            self._queue_rerun(cand, what, (cand.seed + 1 if seed is None else seed) + i, meta)

    def _queue_rerun(self, cand: Experiment, what: str, seed: int, meta: dict[str, Any]) -> int:
        """Record a CONFIRM row re-running ``cand``'s commit with ``seed``, first in the queue."""
        assert self.run_rec is not None
        row = self.ledger.add_experiment(
            run_id=self.run_rec.id,
            kind=Kind.CONFIRM,
            status=Status.QUEUED,
            parent=cand.parent,
            commit=cand.commit,
            description=f"{what} (seed {seed}): {cand.description}",
            proposer=cand.proposer,
            seed=seed,
            now=self.clock.now(),
            meta=meta,
        )
        with self._lock:
            self._all[row.id] = row
            self._confirm_ids[cand.id].append(row.id)
        self._queue.appendleft(row.id)  # re-runs gate decisions and the bar: they go first
        return row.id

    # -- the end of a run: validating the best ---------------------------------------

    def _final_runs(self) -> int:
        n = self.cfg.run.final_runs
        return n if n >= 0 else (3 if self.backend.capacity() > 1 else 0)

    def _start_final(self, reason: str) -> bool:
        """Queue the end-of-run re-runs of the best ([run] final_runs); True if any were."""
        self._final = reason
        self._decide_leftovers()
        best = self.best
        if best is None or self._final_runs() <= 0:
            return False
        if not (reason.startswith("time limit") or reason == "proposer exhausted"):
            return False  # a count or money limit is a hard stop: no runs beyond it
        cand = self._all.get(best.experiment_id)
        if cand is None or cand.kind is not Kind.CANDIDATE:
            return False  # the baseline is the best: its repeats already measure it
        if cand.meta.get("validated"):
            return False
        self._update_meta(cand, {"validated": True})
        self._event(f"validating the best #{cand.id}: {self._final_runs()} more runs, fresh seeds")
        ids = self._queue_replicates(cand, self._final_runs(), "validate best", final=True)
        self._final_ids.update(ids)
        return bool(ids)

    def _decide_leftovers(self) -> None:
        """The run ends: candidates still waiting on re-runs that will not start now are
        decided on the evidence there is (their queued re-runs withdrawn), so that a run
        that ended leaves no verdict open. (Ctrl-C does not come here: --resume goes on.)"""
        for cand in sorted(self._all.values(), key=lambda e: e.id):
            if cand.kind is not Kind.CANDIDATE or cand.status is not Status.PENDING:
                continue
            rows = self._confirmations(cand)
            if any(c.status in (Status.RUNNING, Status.INTERRUPTED) for c in rows):
                continue
            for c in rows:
                if c.status is Status.QUEUED:
                    with self._lock:
                        self._withdraw(c, f"not run: the run ended ({self._final}) first")
            self._verdict(self._all[cand.id])

    def _start_reproduce(self, r: Reproduce) -> None:
        """Queue ``r.runs`` re-runs of experiment ``r.experiment_id`` with fresh seeds.

        For a kept variant they join its fresh runs, so a reproduction that contradicts
        the keep revokes it (as any re-measurement does).
        """
        exp = self._all.get(r.experiment_id)
        if exp is None or not exp.commit or not exp.status.is_finished():
            raise RunStateError(
                f"experiment #{r.experiment_id} is not a finished experiment of run "
                f"{self.run_rec.tag if self.run_rec else ''!r}: pick an id from `autoswarm results`"
            )
        if r.tier and r.tier not in self.tiers.used:
            raise RunStateError(
                f"tier {r.tier!r} is not in this run's pool ({', '.join(self.tiers.used) or 'no tiers'})"
            )
        self._final = "reproduced"
        seed = max(e.seed for e in self._all.values() if e.commit == exp.commit) + 1
        meta: dict[str, Any] = {
            "confirms": exp.id,
            "replicates": True,
            "reproduce": True,
        }
        if r.tier or self._tier(exp):
            meta["tier"] = r.tier or self._tier(exp)
        for i in range(r.runs):
            rid = self._queue_rerun(exp, f"reproduce #{exp.id}", seed + i, meta)
            self._final_ids.add(rid)

    def _event(self, text: str) -> None:
        """A line for the live view and the log of the orchestrator."""
        with self._lock:
            self._event_count += 1
            self._events.append((self._event_count, _one_line(text)))
        self._changed()

    # -- tiers -----------------------------------------------------------------------

    def _tier(self, e: Experiment) -> str:
        """Tier key of an experiment: where it ran, else where it is pinned ("" without tiers)."""
        return tier_key(self.cfg.pool, e.tier, e.meta.get("tier"))

    def _refresh_baselines(self) -> None:
        """Each tier's own baseline; ``self.baseline`` is the deciding tier's."""
        exps = list(self._all.values())
        rows: dict[str, list[Experiment]] = {t: [] for t in self.tiers.used}
        for e in exps:
            if e.kind is Kind.BASELINE:
                rows.setdefault(self._tier(e), []).append(e)
        n = self.cfg.run.baseline_repeats
        self._baselines = {t: baseline_of(r, self.metric, n) for t, r in rows.items()}
        self.baseline = self._baselines.get(self.tiers.deciding)

    def _best_on(self, tier: str, *, without: frozenset[int] = frozenset()) -> Best:
        """The best as measured on ``tier``: the current best's runs there, else the last kept
        commit that ran there (a lagging reference: results then only screen), else the
        tier's baseline. ``without``: keeps (and their runs) that do not count."""
        base = self._baselines[tier]
        assert base is not None and base.values
        if without:
            return self._scan_best_on(tier, base, without)
        key = (self._keeps, self.best, base)
        cached = self._best_cache.get(tier)
        if cached is not None and cached[0] == key:
            return cached[1]
        found = self._scan_best_on(tier, base)
        self._best_cache[tier] = (key, found)
        return found

    def _scan_best_on(
        self, tier: str, base: Baseline, without: frozenset[int] = frozenset()
    ) -> Best:
        # A bar is the mean of fresh runs (re-runs after the selection) where there are any.
        values: dict[str, list[float]] = {}
        fresh: dict[str, list[float]] = {}
        kept: list[Experiment] = []
        with self._lock:
            exps = list(self._all.values())
        if without:
            exps = [
                e
                for e in exps
                if e.id not in without and int(e.meta.get("confirms", 0) or 0) not in without
            ]
        for e in exps:
            if e.kind is Kind.CANDIDATE and e.status is Status.KEEP:
                kept.append(e)
            if (
                e.kind is not Kind.BASELINE
                and e.status is Status.KEEP
                and self._tier(e) == tier
                and (v := e.value(self.metric)) is not None
            ):
                values.setdefault(e.commit, []).append(v)
                if e.kind is Kind.CONFIRM:
                    fresh.setdefault(e.commit, []).append(v)
        kept.sort(key=lambda e: (float(e.meta.get("kept_at", e.finished_at or 0.0)), e.id))
        order = [self.best] if self.best else []
        for k in reversed(kept):
            order.append(Best(value=0.0, commit=k.commit, experiment_id=k.id))
        for b in order:
            if b.commit in values:
                vs = fresh.get(b.commit) or values[b.commit]
                return Best(
                    statistics.fmean(vs), b.commit, b.experiment_id, runs=len(vs), values=tuple(vs)
                )
        first = min(
            (e for e in exps if e.kind is Kind.BASELINE and self._tier(e) == tier),
            key=lambda e: e.id,
        )
        return Best(base.mean, base.commit, first.id, runs=len(base.values), values=base.values)

    def _promotion_tier(self, current: str) -> str | None:
        """Where a promoted candidate is re-run: the validation tier, else a tier on which
        the current best was measured (cheapest first)."""
        if self.tiers.validation is not None:
            return self.tiers.validation
        for t in self.tiers.screening:
            base = self._baselines.get(t)
            if base and base.complete and self._best_on(t).commit == current:
                return t
        return None

    def _reject_unplaceable(self) -> None:
        """Queued rows pinned to a tier the pool no longer has can never run: reject them."""
        if not self.cfg.pool.tiers:
            return
        for e in list(self._all.values()):
            pin = e.meta.get("tier")
            if e.status is Status.QUEUED and pin and pin not in self.tiers.used:
                self._withdraw(e, f"its tier {pin!r} is no longer in [pool]; it cannot run")

    def _conclude_discard(self, cand: Experiment, reason: str) -> None:
        """Discard ``cand`` without evidence to weigh (its re-run crashed, its runs are gone)."""
        self._record_verdict(cand, Status.DISCARD, None, reason)

    def _conclude(self, cand: Experiment, v: Verdict) -> None:
        """Record the final verdict of a candidate and of its confirmation runs."""
        status = Status.KEEP if v.action is Action.KEEP else Status.DISCARD
        self._record_verdict(cand, status, v.evidence, v.reason)

    def _record_verdict(
        self, cand: Experiment, status: Status, ev: judge.Evidence | None, reason: str
    ) -> None:
        assert self.run_rec is not None
        meta: dict[str, Any] = dict(cand.meta)
        if ev is not None:
            meta["evidence"] = ev.as_meta()
        promoted = [c for c in self._confirmations(cand) if c.meta.get("promoted")]
        if promoted:
            meta["screening"] = promoted[0].meta.get("screening")
            meta["validated_on"] = promoted[0].meta.get("tier", "")
        if status is Status.KEEP:
            meta["kept_at"] = self.clock.now()
            self._keeps += 1
        finished_confirms: list[Experiment] = []
        with self._lock:
            done = self._refinish(cand, status, reason, meta)
            for c in self._confirmations(cand):
                if c.status is Status.QUEUED and not c.meta.get("replicates"):
                    self._withdraw(c, f"not run: #{cand.id} was decided without it")
                if c.status is Status.PENDING:
                    finished_confirms.append(self._refinish(c, status))
            if status is Status.KEEP and ev is not None:
                bar = ev.fresh or ev.values
                self.best = Best(
                    value=statistics.fmean(bar),
                    commit=cand.commit,
                    experiment_id=cand.id,
                    runs=len(bar),
                    values=tuple(bar),
                )
        if status is Status.KEEP:
            self.ws.advance_branch(
                self.run_rec.branch, cand.commit, f"autoswarm keep #{cand.id}: {cand.description}"
            )
            if ev is not None:
                self._replicate(done, len(ev.fresh))
        # Observed in the order a resume replays them: the candidate, then its confirmations.
        for e in (done, *finished_confirms):
            self.proposer.observe(e)
        self._write_outputs()

    def _finish(
        self,
        exp: Experiment,
        status: Status,
        r: RunResult,
        metrics: Mapping[str, float],
        reason: str,
    ) -> Experiment:
        value = metrics.get(self.metric)
        done = self.ledger.finish(
            exp.id,
            status=status,
            metrics=metrics,
            metric=value if value is not None and value == value else None,
            finished_at=r.finished_at,
            started_at=r.started_at,
            reason=reason,
        )
        with self._lock:
            self._all[exp.id] = done
        self._measure(done)
        self._cleanup.submit(shutil.rmtree, self.ws.run_dir(exp.id), ignore_errors=True)
        if status is not Status.PENDING:
            self._write_outputs()
        return done

    # -- shutdown and bookkeeping ---------------------------------------------------

    def _shutdown(self, reason: str) -> None:
        """Kill what still runs, mark it interrupted, close the session. Never raises."""
        self._ended = reason
        try:
            for exp_id in list(self._running):
                self.backend.cancel(exp_id)
            deadline = time.monotonic() + 15.0
            while self._running and time.monotonic() < deadline:
                for r in self.backend.poll(timeout=0.5):
                    with self._lock:
                        entry = self._running.pop(r.experiment_id, None)
                    if entry:
                        self._finish(
                            entry[1],
                            Status.INTERRUPTED,
                            r,
                            r.metrics,
                            f"interrupted ({reason}); re-queued by --resume",
                        )
            for exp_id, (_, _exp) in list(self._running.items()):
                self.ledger.finish(
                    exp_id,
                    status=Status.INTERRUPTED,
                    metrics={},
                    metric=None,
                    finished_at=self.clock.now(),
                    reason=f"interrupted ({reason}); re-queued by --resume",
                )
                self._running.pop(exp_id, None)
        finally:
            self.backend.close()
            self.proposer.close()
            self._cleanup.shutdown(wait=True)
            if self._session:
                self.ledger.end_session(self._session, now=self.clock.now(), reason=reason)
            self._write_outputs(force=True)
            self._changed()

    def _heartbeat(self, now: float) -> None:
        if now - self._last_beat >= 1.0:
            self.ledger.heartbeat(self._session, now)
            self._last_beat = now
            self._changed()

    def _elapsed(self, now: float) -> float:
        return self._prior_seconds + max(0.0, now - self._session_start)

    def _counts(self) -> dict[str, int]:
        c: dict[str, int] = collections.Counter(e.status.value for e in self._all.values())
        return {s.value: c.get(s.value, 0) for s in Status} | {"total": len(self._all)}

    def _write_outputs(self, *, force: bool = False) -> None:
        """Rewrite results.tsv, at most once a second (it is O(experiments) per write)."""
        if self.run_rec is None:
            return
        now = time.monotonic()
        if not force and now - self._outputs_written < 1.0:
            self._outputs_dirty = True
            return
        write_results_tsv(self.ws.results_path, list(self._all.values()), self.metric)
        self._outputs_written = now
        self._outputs_dirty = False
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _base(self) -> str:
        assert self.run_rec is not None
        return self.run_rec.base_commit

    def _files(self, commit: str) -> dict[str, str]:
        if commit not in self._files_cache:
            self._files_cache[commit] = self.ws.read_files(commit)
        return self._files_cache[commit]


# ---------------------------------------------------------------------------
# Small helpers

# Statuses whose value is a measurement of its commit (the noise model's input).
_MEASURED = (Status.KEEP, Status.DISCARD, Status.PENDING, Status.REVOKED)


def _knob_values(files: Mapping[str, str]) -> dict[str, Any]:
    """All knob values of a variant (for effect analysis); {} if a file does not parse."""
    try:
        return {name: k.value for name, k in knobs_of(files).items()}
    except SyntaxError:
        return {}


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line[:200] if line else "(no description)"


def _text_diff(ws: Workspace, p: Proposal) -> str:
    """A unified diff for a proposal that never became a commit (rejected)."""
    out: list[str] = []
    for path, new in sorted(p.files.items()):
        try:
            old = ws.read_file(p.parent, path)
        except Exception:
            old = ""
        out.extend(
            difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                f"a/{path}",
                f"b/{path}",
            )
        )
    return "".join(out)


__all__ = ["Reproduce", "RunLock", "RunOutcome", "Scheduler", "SlotView", "Snapshot"]
