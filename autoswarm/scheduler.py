"""The scheduler: the research loop. Decides *when and where* experiments run.

One :meth:`Scheduler.run` call owns a workspace until the run ends. The loop itself,
:meth:`Scheduler._loop`, reads on one screen::

    ask → admit → dispatch      (_fill_slots: Proposer.propose, _admit, _dispatch)
    on each result: classify → record → judge → apply
                                (_on_result: _classify, _finish, _verdict, _conclude ...)

over parts with one job each:

- :mod:`autoswarm.lifecycle`: the run lock, opening or resuming the run, recovering
  what a crash left, reconciling the branch with the ledger;
- :mod:`autoswarm.run_state`: the run's rows in memory, loaded in one place
  (:meth:`Scheduler._load`, on start and resume) and kept by ``RunState.record``, which
  tells the observers (results.tsv: ``outputs.ResultsTsvWriter``; the live view);
- :mod:`autoswarm.admission`: locked files, duplicates, syntax errors;
- :mod:`autoswarm.limits`: time, experiments, money and GPU-hours;
- :mod:`autoswarm.judge`: the keep rule, pure functions whose answers the scheduler
  applies (re-runs, keeps, discards, revocations, the branch).

The run, step by step::

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
result whose gain clears the confirm margin is promoted (a CONFIRM row with purpose
``Purpose.VALIDATE``, run on the validation tier) and only the validation verdict can
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
from typing import Any

from autoswarm import judge, lifecycle
from autoswarm.admission import Admission, knob_values, one_line
from autoswarm.analysis.noise import Baseline
from autoswarm.backends.base import Backend, Reattachable
from autoswarm.bars import Bars
from autoswarm.clock import Clock, SystemClock
from autoswarm.config import Config
from autoswarm.costs import Cost, cost_by_tier, prices_of
from autoswarm.dedup import dedup_key
from autoswarm.errors import BaselineError, RunStateError
from autoswarm.judge import Action, Noise, Rule, Verdict
from autoswarm.ledger import Ledger, RunRecord
from autoswarm.lifecycle import RunLock
from autoswarm.limits import Limits
from autoswarm.metrics import crash_reason, read_tail
from autoswarm.outputs import ResultsTsvWriter
from autoswarm.policy import Best, best_of, kept_chain
from autoswarm.proposers.base import Context, Proposer, fingerprint
from autoswarm.run_state import RunState
from autoswarm.sandbox import scrubbed_env
from autoswarm.tiers import TierPlan, plan_tiers, tier_key
from autoswarm.types import Experiment, Job, Kind, Proposal, Purpose, RunResult, Status
from autoswarm.workspace import Workspace

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


class _LiveView:
    """The observer that tells ``Scheduler.on_change`` (the live view, event lines)."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched

    def changed(self) -> None:
        self.sched._changed()


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
        # Tiers: known once the backend says how many slots it has.
        self.tiers: TierPlan = plan_tiers(config.pool, backend.capacity())
        self.limits = Limits.from_config(config, prices_of(config.pool), self.tiers.screening[0])
        # The parts (see the module docstring); the state is loaded from the ledger by run().
        self.state = RunState(config, self._tier)
        self.admission = Admission(workspace, config)
        self.results = ResultsTsvWriter(
            workspace.results_path, self.state.rows, self.metric, on_write=self._changed
        )
        self.state.observers += [self.results, _LiveView(self)]
        self.run_rec: RunRecord | None = None
        self._session = 0
        self._last_beat = 0.0
        # Finished experiments' work directories are removed off the dispatch path; one
        # executor per run() (it is shut down, and waited for, when the run ends).
        self._cleanup: concurrent.futures.ThreadPoolExecutor
        self._idle_wait = 0.0
        self._ended = ""
        self._reattached: dict[int, int] = {}  # experiment id -> slot, adopted on --resume
        self._events: collections.deque[tuple[int, str]] = collections.deque(maxlen=50)
        self._event_count = 0
        # What results are compared with: each tier's baseline, the best, the best per tier.
        self.bars = Bars(config, self.tiers, self._tier, self.state.rows)
        # End-of-run validation of the best ([run] final_runs) and `autoswarm reproduce`:
        # once started, only rows of that purpose are dispatched.
        self._final: str | None = None  # the reason the run ends, once validation started
        self._final_ids: set[int] = set()

    @property
    def _lock(self) -> threading.RLock:
        return self.state.lock

    @property
    def baseline(self) -> Baseline | None:
        """The deciding tier's baseline (None until its first repeat is in)."""
        return self.bars.baseline

    @property
    def best(self) -> Best | None:
        """The bar a candidate must beat: the last keep that stands, else the baseline."""
        return self.bars.best

    @best.setter
    def best(self, best: Best | None) -> None:
        self.bars.best = best

    @property
    def _baselines(self) -> dict[str, Baseline | None]:
        return self.bars.baselines

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
            run = self._start(tag, resume or reproduce is not None)
            try:
                self._load()
                if reproduce is not None:
                    self._start_reproduce(reproduce)
                else:
                    self._ensure_baseline()
                self.results.changed()
                reason = self._loop()
            except KeyboardInterrupt:
                reason = "interrupted"
                raise
            except BaseException as e:
                reason = f"error: {e}"
                raise
            finally:
                self._shutdown(reason)
            return RunOutcome(run=run, reason=reason, best=self.best, counts=self.state.counts())
        finally:
            gc.unfreeze()
            lock.release()

    def snapshot(self) -> Snapshot:
        with self._lock:
            slots: list[SlotView | None] = [None] * self.backend.capacity()
            for exp_id, (slot, exp) in self.state.running.items():
                if 0 <= slot < len(slots):
                    slots[slot] = SlotView(
                        slot, exp_id, exp.description, exp.kind, exp.started_at or 0.0
                    )
            finished = sorted(self.state.finished(), key=lambda e: (e.finished_at or 0.0, e.id))
            return Snapshot(
                tag=self.run_rec.tag if self.run_rec else "",
                slots=tuple(slots),
                counts=self.state.counts(),
                best=self.best,
                baseline=self.baseline,
                elapsed_s=self.state.elapsed(self.clock.now()),
                time_limit_s=self.cfg.run.time_limit,
                max_experiments=self.cfg.run.max_experiments,
                recent=tuple(finished[-8:]),
                now=self.clock.now(),
                ended=self._ended,
                events=tuple(self._events),
            )

    def cost(self, now: float | None = None) -> dict[str, Cost]:
        """Tier key -> dollars and GPU-hours so far (running experiments up to ``now``)."""
        return cost_by_tier(
            self.state.rows(), self.cfg.pool, self.clock.now() if now is None else now
        )

    # -- starting: the run, its recovery, its state --------------------------------

    def _start(self, tag: str | None, resume: bool) -> RunRecord:
        """Open the run (lifecycle.open_run), start this session, recover what a crash left."""
        run = lifecycle.open_run(self.ws, self.ledger, self.cfg, self.clock, tag, resume)
        self.run_rec = run
        now = self.clock.now()
        self.state.prior_seconds = sum(s.seconds for s in self.ledger.sessions(run.id))
        self._session = self.ledger.start_session(
            run.id, pid=os.getpid(), workers=self.backend.capacity(), now=now
        )
        self.state.session_start = now
        self._last_beat = now
        self._reattached = {}
        lifecycle.recover(self.ledger, self.backend, run, self._reattach, self.ws.run_dir)
        return run

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

    def _load(self) -> None:
        """The run's state from the ledger: the one place it is loaded, on start and resume.

        Rows, queue and indexes (RunState.load), what was tried (Admission.index), the
        bars (baselines, best); then the proposer is replayed every finished row, waiting
        verdicts are decided and the branch is made to match the best.
        """
        assert self.run_rec is not None
        # The rows live as long as the run: kept out of the cyclic collector's passes (a
        # long run's rows are millions of objects); gc.unfreeze() when the run ends.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self.state.load(self.ledger.experiments(self.run_rec.id), self._reattached)
            self.bars.stale()
            self._reject_unplaceable()
            for e in self.state.rows():
                self.admission.index(e)
            self.bars.refresh_baselines()
            self.best = best_of(self.state.rows(), self.metric, self.baseline)
            for e in sorted(self.state.finished(), key=lambda e: (e.finished_at or 0, e.id)):
                self.proposer.observe(e)
            self._judge_pending()
            lifecycle.reconcile_branch(
                self.ws, self.run_rec, self.best.commit if self.best else None
            )
        finally:
            gc.freeze()
            if collecting:
                gc.enable()

    def _ensure_baseline(self) -> None:
        """Queue the baseline repeats still missing, on every tier (each tier has its own)."""
        assert self.run_rec is not None
        base = self.run_rec.base_commit
        files = self.admission.files(base)
        for tier in self.tiers.used:
            rows = [
                e
                for e in self.state.all.values()
                if e.kind is Kind.BASELINE and self._tier(e) == tier
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
                    facts={
                        "fingerprint": fingerprint(files),
                        "dedup": dedup_key(files),
                        "knobs": knob_values(files),
                    }
                    | ({"pinned_tier": tier} if tier else {}),
                )
                self.state.record(exp)
                self.admission.index(exp)
                self.state.queue.append(exp.id)
        self.bars.refresh_baselines()
        # Baselines go first, whatever else was queued.
        self.state.queue = collections.deque(
            sorted(self.state.queue, key=lambda i: (self.state.all[i].kind is not Kind.BASELINE, i))
        )

    # -- the loop ------------------------------------------------------------------

    def _loop(self) -> str:
        """ask → admit → dispatch; on each result: classify → record → judge → apply."""
        while True:
            if self._stop.is_set():
                return "interrupted"
            now = self.clock.now()
            self._heartbeat(now)
            self.results.flush()
            limit = None if self._final else self.limits.reason(self.state, now)
            acted = limit is None and self._fill_slots()  # ask → admit → dispatch
            if not self.state.running:
                ending = self._final or limit or self._done()
                if ending is not None:
                    if self._final is None and self._start_final(ending):
                        continue
                    return ending
                if not acted:
                    self._idle()
                    continue
            self._idle_wait = 0.0
            for result in self.backend.poll(timeout=0.5):
                self._on_result(result)  # classify → record → judge → apply

    def _done(self) -> str | None:
        """Why the run ends once nothing runs and nothing is queued, or None."""
        if self.state.queue:
            return None
        if self.limits.count_reached(self.state):
            return "max experiments"
        if self.proposer.exhausted:
            return "proposer exhausted"
        return None

    def _idle(self) -> None:
        """Nothing to run now (an asynchronous proposer is thinking): wait, a little longer
        each time, so an idle proposer is not asked in a busy loop. A proposer that waits on
        others (agents, submissions) may ask for a shorter cap through ``idle_poll_s``."""
        cap = float(getattr(self.proposer, "idle_poll_s", 5.0))
        self._idle_wait = min(cap, max(0.2, self._idle_wait * 2))
        self.clock.sleep(self._idle_wait)

    # -- ask → admit → dispatch ------------------------------------------------------

    def _fill_slots(self) -> bool:
        """Start work in every free slot; True if anything was started or proposed."""
        busy = {slot for slot, _ in self.state.running.values()}
        free = [s for s in range(self.backend.capacity()) if s not in busy]
        acted = False
        while free:
            pick = self._pick(free)
            if pick is None and self._final is None:
                # Nothing queued fits a free slot: ask for first runs for the free screening slots.
                want = sum(1 for s in free if self.tiers.screens(s))
                left = self.limits.left(self.state)
                if left is not None:
                    want = min(want, left)
                if want > 0 and not self.limits.count_reached(self.state):
                    for proposal in self.proposer.propose(self._context(), want)[:want]:
                        self._admit(proposal)
                        acted = True
                pick = self._pick(free)
            if pick is None:
                break
            exp_id, slot = pick
            self.state.queue.remove(exp_id)
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
        for exp_id in self.state.queue:
            if self._final is not None and exp_id not in self._final_ids:
                continue  # validating the best at the end: nothing else starts
            pin = self.state.all[exp_id].pinned_tier
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
            running = tuple(exp for _, exp in self.state.running.values())
            history = tuple(sorted(self.state.finished(), key=lambda e: e.id))
        complete = self.baseline is not None and self.baseline.complete
        return Context(
            best_commit=best_commit,
            best_files=self.admission.files(best_commit),
            best_value=self.best.value if self.best and complete else None,
            noise_sigma=self.baseline.sigma if self.baseline and complete else None,
            metric=self.metric,
            direction=self.cfg.metric.direction,
            running=running,
            history=history,
            seen=frozenset(self.admission.seen),
            now=self.clock.now(),
            tag=self.run_rec.tag if self.run_rec else "",
        )

    def _admit(self, p: Proposal) -> Experiment:
        """Record a proposal: QUEUED if it may run, REJECTED or CRASH (syntax) otherwise."""
        assert self.run_rec is not None
        a = self.admission.admit(p)
        # `autoswarm submit` reserved the experiment's id (see Ledger.add_submission).
        reserved = p.meta.get("submission")
        exp = self.ledger.add_experiment(
            exp_id=int(reserved) if isinstance(reserved, int) else None,
            run_id=self.run_rec.id,
            kind=Kind.CANDIDATE,
            status=a.status,
            parent=p.parent,
            commit=a.commit,
            description=a.description,
            proposer=p.proposer,
            seed=self.cfg.run.seed,
            now=self.clock.now(),
            diff=a.diff,
            reason=a.reason,
            meta=dict(p.meta),
            facts=a.facts,
        )
        if a.commit:
            self.ws.pin(f"refs/autoswarm/{self.run_rec.tag}/{exp.id}", a.commit)
        if exp.status is Status.QUEUED:
            self.state.queue.append(exp.id)
            self.admission.tried(exp)
        self.state.record(exp)
        if exp.status.is_finished():
            self.proposer.observe(exp)
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
        exp = self.state.all[exp_id]
        workdir = self.ws.materialize(exp.commit, self.ws.run_dir(exp_id))
        job = self._job(exp, slot, workdir)
        started = self.clock.now()
        # The intent first: a crash after this line leaves a RUNNING row without a handle,
        # whose job lifecycle.recover kills (it may have started) before re-queueing it.
        self.ledger.mark_running(
            exp_id, slot=slot, started_at=started, log_path=str(job.log_path), tier=job.tier
        )
        handle = self.backend.submit(job)
        self.ledger.set_handle(exp_id, handle)
        self.state.start(self.ledger.get(exp_id), slot)

    # -- on each result: classify → record → judge → apply ---------------------------

    def _on_result(self, r: RunResult) -> None:
        exp = self.state.stop(r.experiment_id)
        if exp is None:
            return  # a result for something we no longer track (already handled)
        status, reason = self._classify(exp, r)
        if status not in (Status.INTERRUPTED, Status.CRASH):
            self.state.took(r.duration_s)
        done = self._finish(exp, status, r, reason)
        self._apply(done, r)

    def _classify(self, exp: Experiment, r: RunResult) -> tuple[Status, str]:
        """The status a finished job's row gets, and why.

        A cancelled job is INTERRUPTED; no usable metric is a CRASH (metrics.crash_reason);
        a baseline repeat is KEEP (its repeats make the noise model); a re-measurement of a
        keep is KEEP (REVOKED if the keep was revoked while it ran); a first run or a
        confirmation waits for its verdict (PENDING), unless its candidate was decided
        while it ran (DISCARD).
        """
        if r.cancelled:
            return Status.INTERRUPTED, "interrupted; `autoswarm run --resume` runs it again"
        reason = crash_reason(
            exit_code=r.exit_code,
            timed_out=r.timed_out,
            timeout_s=self.cfg.run.effective_timeout,
            metrics=dict(r.metrics),
            metric=self.metric,
            log_tail=read_tail(r.log_path),
            error=r.error,
        )
        if reason:
            return Status.CRASH, reason
        if exp.kind is Kind.BASELINE:
            return Status.KEEP, ""
        if exp.is_remeasure:
            parent = self.state.rerun_parent(exp)
            if parent.status is Status.REVOKED:  # revoked while this one ran
                return Status.REVOKED, f"a run of #{parent.id}, whose keep was revoked"
            return Status.KEEP, ""
        if exp.kind is Kind.CONFIRM:
            parent = self.state.rerun_parent(exp)
            if parent.status is not Status.PENDING:  # decided while this one ran
                return Status.DISCARD, f"#{parent.id} was already decided"
        return Status.PENDING, ""

    def _apply(self, done: Experiment, r: RunResult) -> None:
        """What a recorded result leads to: a verdict, a review of a keep, the end of the run."""
        status = done.status
        if status is Status.INTERRUPTED:
            return
        if status is Status.CRASH:
            if done.kind is Kind.BASELINE:
                raise BaselineError(
                    f"the baseline (the unmodified {', '.join(self.cfg.workspace.editable)}) "
                    f"crashed: {done.reason}. Read its log ({r.log_path}), fix the files so "
                    f"that `python train.py` prints the '---' summary block with "
                    f"'{self.metric}:', commit, and start a new run"
                )
            if done.kind is Kind.CONFIRM and not done.is_remeasure:
                parent = self.state.rerun_parent(done)
                what = "validation" if done.purpose is Purpose.VALIDATE else "confirmation"
                self._conclude_discard(parent, f"{what} run #{done.id} crashed: {done.reason}")
            else:
                self.proposer.observe(done)  # a kept variant stays kept on its evidence
            return
        if done.kind is Kind.BASELINE:
            self.proposer.observe(done)
            self._check_baseline(self._tier(done))
        elif done.is_remeasure and status is Status.KEEP:
            self._replicated(done)
        elif status is Status.PENDING:
            self._verdict(self.state.rerun_parent(done) if done.rerun_of is not None else done)
        else:  # a re-measurement of a revoked keep, a confirmation of a decided candidate
            self.proposer.observe(done)

    def _finish(self, exp: Experiment, status: Status, r: RunResult, reason: str) -> Experiment:
        """Record a job's end: the ledger row, the state, the noise groups; its run directory
        is removed off the loop's path (the log stays)."""
        metrics = dict(r.metrics)
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
        self.state.record(done)
        self.state.noise.measure(done)
        self._cleanup.submit(shutil.rmtree, self.ws.run_dir(exp.id), ignore_errors=True)
        return done

    # -- judge → apply: verdicts, re-runs, keeps and revocations ---------------------

    def _check_baseline(self, tier: str) -> None:
        """Once a tier's repeats are in: leave out a repeat slowed by other load, then judge."""
        rows = sorted(
            (
                e
                for e in self.state.all.values()
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
                self.state.noise.unmeasure(self._refinish(e, Status.DISCARD, why))
                self._event(f"baseline #{e.id} {why}")
            if any(self.state.all[e.id].status is Status.DISCARD for e in rows):
                self._ensure_baseline()
        self.bars.refresh_baselines()
        self.best = best_of(list(self.state.all.values()), self.metric, self.baseline)
        base = self.bars.baselines.get(tier)
        if base and base.complete:
            self._judge_pending()

    def _judge_pending(self) -> None:
        """Decide every candidate that waits for a verdict (after a baseline, on resume)."""
        pending = sorted(
            (
                e
                for e in self.state.all.values()
                if e.status is Status.PENDING and e.kind is Kind.CANDIDATE
            ),
            key=lambda e: (e.finished_at or 0.0, e.id),
        )
        for e in pending:
            self._verdict(e)

    def _room(self, need: int = 1) -> bool:
        """Whether the run's limits leave room for ``need`` more runs (none once it ends)."""
        if self._final is not None:
            return False
        return self.limits.room(self.state, self.clock.now(), need)

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
        confirms = [c for c in self.state.reruns(cand) if not c.is_remeasure]
        if any(c.status in (Status.QUEUED, Status.RUNNING, Status.INTERRUPTED) for c in confirms):
            return  # evidence still on its way
        promoted = [c for c in confirms if c.purpose is Purpose.VALIDATE]
        rows = promoted if promoted else [cand, *confirms]
        tier = self._tier(rows[0])
        base = self.bars.baselines.get(tier)
        if base is None or not base.complete:
            return  # judged once this tier's own baseline is complete
        values = [v for e in rows if (v := e.value(self.metric)) is not None]
        if not values:  # its runs were withdrawn (a tier left the pool)
            self._conclude_discard(cand, "no usable run left to decide on")
            return
        best = self.bars.best_on(tier)
        noise = self._noise_of(tier)
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
                target = self.bars.promotion_tier(current)
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
        left = self.limits.left(self.state)
        if left is not None:
            missing = min(missing, left)  # --max-experiments counts these too
        self._queue_replicates(cand, missing, "re-measure kept")

    def _queue_replicates(
        self, cand: Experiment, n: int, what: str, purpose: Purpose = Purpose.REPLICATE
    ) -> list[int]:
        confirms = [c for c in self.state.reruns(cand) if c.kind is Kind.CONFIRM]
        promoted = [c for c in confirms if c.purpose is Purpose.VALIDATE]
        rows = promoted if promoted else [cand, *confirms]
        facts: dict[str, Any] = {"purpose": purpose, "rerun_of": cand.id}
        if tier := self._tier(rows[0]):
            facts["pinned_tier"] = tier
        seed = max(e.seed for e in [cand, *confirms]) + 1
        ids = []
        for i in range(n):
            ids.append(self._queue_rerun(cand, f"{what} #{cand.id}", seed + i, facts))
        return ids

    def _replicated(self, rep: Experiment) -> None:
        """A re-run of a kept variant is in: its value joins the variant's fresh runs, and
        the keep is reviewed against the bar it replaced (and revoked if it no longer holds)."""
        cand = self.state.rerun_parent(rep)
        value = rep.value(self.metric)
        before = cand.evidence
        if (
            value is not None
            and before is not None
            and before.values
            and cand.status is Status.KEEP
        ):
            # The runs the keep was decided on are remembered (decided_runs); every later
            # one is a replicate.
            evidence = before.with_run(value)
            fresh, values = list(evidence.fresh), list(evidence.values)
            updated = self._update_facts(cand, {"evidence": evidence})
            standing = updated.status is Status.KEEP
            if standing and self.best is not None and self.best.experiment_id == cand.id:
                self.best = Best(
                    statistics.fmean(fresh), cand.commit, cand.id, len(fresh), tuple(fresh)
                )
            bar = list(evidence.bar)
            noise = self._noise_of(self._tier(rep))
            assert evidence.decided_runs is not None
            action, why = judge.review(
                self.rule, fresh, bar, noise, values=values, kept_with=evidence.decided_runs
            )
            if standing and action is Action.REVOKE:
                self._revoke(
                    updated,
                    f"revoked: re-measured at {statistics.fmean(fresh):.6f} on {len(fresh)} fresh "
                    f"run(s); {why} (#{evidence.bar_id} at {statistics.fmean(bar):.6f})",
                )
        self.proposer.observe(rep)

    def _revoke(self, cand: Experiment, why: str) -> None:
        """Withdraw a keep whose evidence no longer stands; the branch moves back.

        Keeps made after it were judged against a bar that no longer stands: each is
        judged again against the best standing before it, and revoked too unless its own
        runs beat that one.
        """
        assert self.run_rec is not None
        later = [
            k
            for k in kept_chain(list(self.state.all.values()), self.metric)
            if k.id != cand.id and (k.kept_at or 0.0) >= (cand.kept_at or 0.0)
        ]
        self._set_status(cand, Status.REVOKED, why, {"revoked_at": self.clock.now()})
        self._event(f"#{cand.id} {why}")
        # Each later keep is judged against the best standing before it: without itself
        # and the keeps after it (those not yet judged again), with the ones that stood.
        waiting = {k.id for k in later}
        for k in later:
            standing = [e for e in self.state.all.values() if e.id not in waiting]
            self.best = best_of(standing, self.metric, self.baseline)
            self.bars.stale()  # the cached bars per tier are stale
            tier = self._tier(k)
            bar = (
                self.bars.best_on(tier, without=frozenset(waiting))
                if self.bars.baselines.get(tier)
                else self.best
            )
            waiting.discard(k.id)
            values = list(k.evidence.values) if k.evidence else []
            selected = len(k.evidence.selected) if k.evidence else 0
            if bar is None or not values:
                continue
            v = judge.judge(
                self.rule, values, selected, bar.samples, bar.experiment_id, self._noise_of(tier)
            )
            if v.action is not Action.KEEP:
                self._set_status(
                    k,
                    Status.REVOKED,
                    f"revoked: judged against #{cand.id}, which was revoked; against "
                    f"#{bar.experiment_id} it does not hold (p={v.evidence.p:.3g})",
                    {"revoked_at": self.clock.now()},
                )
        self.bars.refresh_best()
        target = self.best.commit if self.best else self.run_rec.base_commit
        self.ws.advance_branch(
            self.run_rec.branch, target, f"autoswarm revoke #{cand.id}: back to {target[:10]}"
        )
        self.proposer.observe(self.state.all[cand.id])

    def _set_status(
        self, e: Experiment, status: Status, reason: str, facts: Mapping[str, Any]
    ) -> Experiment:
        with self._lock:
            done = self._refinish(e, status, reason, facts)
            if status is Status.REVOKED:  # its re-runs were kept with it: withdrawn with it
                for c in self.state.reruns(e):
                    if c.status is Status.KEEP:
                        self._refinish(
                            c, Status.REVOKED, f"a run of #{e.id}, whose keep was revoked"
                        )
                    elif c.status is Status.QUEUED and c.id not in self._final_ids:
                        self._withdraw(c, f"not run: #{e.id}'s keep was revoked")
        self.bars.stale()
        return done

    def _refinish(
        self,
        e: Experiment,
        status: Status,
        reason: str = "",
        facts: Mapping[str, Any] | None = None,
    ) -> Experiment:
        """Give a finished row a new status (a verdict, a revocation), keeping its metrics."""
        done = self.ledger.finish(
            e.id,
            status=status,
            metrics=e.metrics,
            metric=e.value(self.metric),
            finished_at=e.finished_at or self.clock.now(),
            reason=reason,
            facts=facts,
        )
        self.state.record(done)
        return done

    def _withdraw(self, e: Experiment, reason: str) -> Experiment:
        """A queued row that will never run: out of the queue, recorded REJECTED with why."""
        if e.id in self.state.queue:
            self.state.queue.remove(e.id)
        done = self.ledger.finish(
            e.id,
            status=Status.REJECTED,
            metrics={},
            metric=None,
            finished_at=self.clock.now(),
            reason=reason,
        )
        self.state.record(done)
        return done

    def _update_facts(self, e: Experiment, facts: Mapping[str, Any]) -> Experiment:
        return self._set_status(e, e.status, e.reason, facts)

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
        facts: dict[str, Any] = {
            "purpose": Purpose.VALIDATE if promoted else Purpose.CONFIRM,
            "rerun_of": cand.id,
            "z_before": ev.t if math.isfinite(ev.t) else None,
        }
        if tier:
            facts["pinned_tier"] = tier
        if promoted:
            facts["screening"] = ev  # the evidence that earned the promotion
        for i in range(n):
            what = f"validate #{cand.id} on {tier}" if promoted else f"confirm #{cand.id}"
            self._queue_rerun(cand, what, (cand.seed + 1 if seed is None else seed) + i, facts)

    def _queue_rerun(self, cand: Experiment, what: str, seed: int, facts: dict[str, Any]) -> int:
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
            facts=facts,
        )
        self.state.record(row)
        self.state.queue.appendleft(row.id)  # re-runs gate decisions and the bar: they go first
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
        cand = self.state.all.get(best.experiment_id)
        if cand is None or cand.kind is not Kind.CANDIDATE:
            return False  # the baseline is the best: its repeats already measure it
        if cand.validated:
            return False
        self._update_facts(cand, {"validated": True})
        self._event(f"validating the best #{cand.id}: {self._final_runs()} more runs, fresh seeds")
        ids = self._queue_replicates(cand, self._final_runs(), "validate best", Purpose.FINAL)
        self._final_ids.update(ids)
        return bool(ids)

    def _decide_leftovers(self) -> None:
        """The run ends: candidates still waiting on re-runs that will not start now are
        decided on the evidence there is (their queued re-runs withdrawn), so that a run
        that ended leaves no verdict open. (Ctrl-C does not come here: --resume goes on.)"""
        for cand in sorted(self.state.all.values(), key=lambda e: e.id):
            if cand.kind is not Kind.CANDIDATE or cand.status is not Status.PENDING:
                continue
            rows = self.state.reruns(cand)
            if any(c.status in (Status.RUNNING, Status.INTERRUPTED) for c in rows):
                continue
            for c in rows:
                if c.status is Status.QUEUED:
                    with self._lock:
                        self._withdraw(c, f"not run: the run ended ({self._final}) first")
            self._verdict(self.state.all[cand.id])

    def _start_reproduce(self, r: Reproduce) -> None:
        """Queue ``r.runs`` re-runs of experiment ``r.experiment_id`` with fresh seeds.

        For a kept variant they join its fresh runs, so a reproduction that contradicts
        the keep revokes it (as any re-measurement does).
        """
        exp = self.state.all.get(r.experiment_id)
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
        seed = max(e.seed for e in self.state.all.values() if e.commit == exp.commit) + 1
        facts: dict[str, Any] = {"purpose": Purpose.REPRODUCE, "rerun_of": exp.id}
        if r.tier or self._tier(exp):
            facts["pinned_tier"] = r.tier or self._tier(exp)
        for i in range(r.runs):
            rid = self._queue_rerun(exp, f"reproduce #{exp.id}", seed + i, facts)
            self._final_ids.add(rid)

    def _event(self, text: str) -> None:
        """A line for the live view and the log of the orchestrator."""
        with self._lock:
            self._event_count += 1
            self._events.append((self._event_count, one_line(text)))
        self._changed()

    # -- tiers -----------------------------------------------------------------------

    def _tier(self, e: Experiment) -> str:
        """Tier key of an experiment: where it ran, else where it is pinned ("" without tiers)."""
        return tier_key(self.cfg.pool, e.tier, e.pinned_tier)

    def _reject_unplaceable(self) -> None:
        """Queued rows pinned to a tier the pool no longer has can never run: reject them."""
        if not self.cfg.pool.tiers:
            return
        for e in list(self.state.all.values()):
            pin = e.pinned_tier
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
        facts: dict[str, Any] = {}
        if ev is not None:
            facts["evidence"] = ev
        promoted = [c for c in self.state.reruns(cand) if c.purpose is Purpose.VALIDATE]
        if promoted:
            facts["screening"] = promoted[0].screening
            facts["validated_on"] = promoted[0].pinned_tier or ""
        if status is Status.KEEP:
            facts["kept_at"] = self.clock.now()
            self.bars.stale()
        finished_confirms: list[Experiment] = []
        with self._lock:
            done = self._refinish(cand, status, reason, facts)
            for c in self.state.reruns(cand):
                if c.status is Status.QUEUED and not c.is_remeasure:
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

    # -- shutdown and bookkeeping ---------------------------------------------------

    def _shutdown(self, reason: str) -> None:
        """Kill what still runs, mark it interrupted, close the session. Never raises."""
        self._ended = reason
        try:
            for exp_id in list(self.state.running):
                self.backend.cancel(exp_id)
            deadline = time.monotonic() + 15.0
            while self.state.running and time.monotonic() < deadline:
                for r in self.backend.poll(timeout=0.5):
                    exp = self.state.stop(r.experiment_id)
                    if exp is not None:
                        self._finish(
                            exp,
                            Status.INTERRUPTED,
                            r,
                            f"interrupted ({reason}); re-queued by --resume",
                        )
            for exp_id in list(self.state.running):
                self.ledger.finish(
                    exp_id,
                    status=Status.INTERRUPTED,
                    metrics={},
                    metric=None,
                    finished_at=self.clock.now(),
                    reason=f"interrupted ({reason}); re-queued by --resume",
                )
                self.state.stop(exp_id)
        finally:
            self.backend.close()
            self.proposer.close()
            self._cleanup.shutdown(wait=True)
            if self._session:
                self.ledger.end_session(self._session, now=self.clock.now(), reason=reason)
            if self.run_rec is not None:
                self.results.flush(force=True)
            self._changed()

    def _heartbeat(self, now: float) -> None:
        if now - self._last_beat >= 1.0:
            self.ledger.heartbeat(self._session, now)
            self._last_beat = now
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _noise_of(self, tier: str) -> Noise:
        """The noise model of ``tier`` now (:func:`autoswarm.judge.noise_model`)."""
        base = self.bars.baselines.get(tier)
        return self.state.noise.model(tier, base.commit if base else None)

    def _base(self) -> str:
        assert self.run_rec is not None
        return self.run_rec.base_commit


# ---------------------------------------------------------------------------
# Small helpers


__all__ = ["Reproduce", "RunLock", "RunOutcome", "Scheduler", "SlotView", "Snapshot"]
