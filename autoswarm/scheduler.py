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
import gc
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from autoswarm import lifecycle
from autoswarm.admission import Admission, one_line
from autoswarm.analysis.noise import Baseline
from autoswarm.backends.base import Backend, Reattachable
from autoswarm.bars import Bars
from autoswarm.clock import Clock, SystemClock
from autoswarm.config import Config
from autoswarm.costs import Cost, cost_by_tier, prices_of
from autoswarm.errors import BaselineError, WorkspaceError
from autoswarm.evaluation import Judged, judge
from autoswarm.judge import Rule
from autoswarm.ledger import Ledger, RunRecord
from autoswarm.lifecycle import RunLock
from autoswarm.limits import Limits
from autoswarm.metrics import crash_reason, read_tail
from autoswarm.outputs import ResultsTsvWriter
from autoswarm.policy import Best, best_of
from autoswarm.proposers.base import Context, IdlePolling, Proposer
from autoswarm.run_state import RunState
from autoswarm.sandbox import scrubbed_env
from autoswarm.tiers import TierPlan, plan_tiers, tier_key
from autoswarm.types import (
    Evaluation,
    Experiment,
    Job,
    Kind,
    Proposal,
    Purpose,
    RunResult,
    Status,
)
from autoswarm.verdicts import Keeper, Reproduce
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


def interrupted_reason(end: str) -> str:
    """The reason an experiment that was running when the run ended records."""
    cause = "Ctrl-C" if end == "interrupted" else end
    return f"interrupted ({cause}); `autoswarm run --resume` runs it again"


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
            workspace.results_path,
            self.state.rows,
            self.metric,
            on_write=self._changed,
            on_error=self._event,
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
        # Applies the keep rule's verdicts (autoswarm.verdicts); made once the run is open.
        self.keeper: Keeper
        # Every job's locked evaluation ([metric] evaluate); made once the run is open.
        self._evaluation: Evaluation | None = None

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
        self.ws.drop_spares()  # a dead run's
        reason = "error"
        try:
            run = self._start(tag, resume or reproduce is not None)
            try:
                self._reattached = {}
                lifecycle.recover(
                    self.ledger,
                    self.backend,
                    run,
                    self._reattach,
                    self.ws.run_dir,
                    self.clock.now(),
                )
                self._load()
                if reproduce is not None:
                    self.keeper.start_reproduce(reproduce)
                else:
                    self.keeper.ensure_baseline()
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
        """Open the run (lifecycle.open_run) and start this session."""
        run = lifecycle.open_run(
            self.ws, self.ledger, self.cfg, self.clock, tag, resume, say=self._event
        )
        self.run_rec = run
        self._evaluation = self._locked_evaluation(run.base_commit)
        self.keeper = Keeper(
            run=run,
            state=self.state,
            bars=self.bars,
            admission=self.admission,
            limits=self.limits,
            ledger=self.ledger,
            ws=self.ws,
            proposer=self.proposer,
            cfg=self.cfg,
            rule=self.rule,
            tiers=self.tiers,
            clock=self.clock,
            slots=self.backend.capacity(),
            tier_of=self._tier,
            event=self._event,
        )
        now = self.clock.now()
        self.state.prior_seconds = sum(s.seconds for s in self.ledger.sessions(run.id))
        self._session = self.ledger.start_session(
            run.id, pid=os.getpid(), workers=self.backend.capacity(), now=now
        )
        self.state.session_start = now
        self._last_beat = now
        return run

    def _locked_evaluation(self, commit: str) -> Evaluation | None:
        """``[metric] evaluate`` as every job's second phase, from the run's locked files."""
        m = self.cfg.metric
        if not m.evaluate:
            return None
        files = []
        for path in self.cfg.workspace.locked:
            try:
                files.append((path, self.ws.read_bytes(commit, path)))
            except WorkspaceError:
                continue  # a locked name with no file (yet): nothing to copy
        return Evaluation(
            argv=tuple(self.python if a == "{python}" else a for a in m.evaluate),
            files=tuple(files),
            sealed=m.sealed,
            timeout_s=m.evaluate_timeout,
            model=m.model,
        )

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
            self.keeper.reject_unplaceable()
            for e in self.state.rows():
                self.admission.index(e)
            self.bars.refresh_baselines()
            self.best = best_of(self.state.rows(), self.metric, self.baseline)
            for e in sorted(self.state.finished(), key=lambda e: (e.finished_at or 0, e.id)):
                self.proposer.observe(e)
            self.keeper.judge_pending()
            lifecycle.reconcile_branch(
                self.ws, self.run_rec, self.best.commit if self.best else None
            )
            aside = lifecycle.tampered_dir(self.ws, self.clock)
            for line in lifecycle.repair_pins(self.ws, self.run_rec, self.state.rows(), aside):
                self._event(line)
        finally:
            gc.freeze()
            if collecting:
                gc.enable()

    # -- the loop ------------------------------------------------------------------

    def _loop(self) -> str:
        """ask → admit → dispatch; on each result: classify → record → judge → apply."""
        while True:
            if self._stop.is_set():
                return "interrupted"
            now = self.clock.now()
            self._heartbeat(now)
            self.results.flush()
            limit = None if self.keeper.final else self.limits.reason(self.state, now)
            acted = limit is None and self._fill_slots()  # ask → admit → dispatch
            if not self.state.running:
                ending = self.keeper.final or limit or self._done()
                if ending is not None:
                    if self.keeper.final is None and self.keeper.start_final(ending):
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
        others (agents, submissions) may ask for a shorter cap (:class:`IdlePolling`)."""
        p = self.proposer
        cap = float(p.idle_poll_s) if isinstance(p, IdlePolling) else 5.0
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
            if pick is None and self.keeper.final is None:
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
            if self.keeper.final is not None and exp_id not in self.keeper.final_ids:
                continue  # validating the best at the end: nothing else starts
            pin = self.state.all[exp_id].pinned_tier
            if pin is not None and plan.slot_tiers and pin not in plan.tiers:
                pin = None  # pinned to a tier the pool lost (see Keeper.reject_unplaceable)
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
            evaluation=self._evaluation,
        )

    def _dispatch(self, exp_id: int, slot: int) -> None:
        exp = self.state.all[exp_id]
        workdir = self.ws.materialize(exp.commit, self.ws.run_dir(exp_id))
        self._cleanup.submit(self.ws.make_spares, min(4, self.backend.capacity()))
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
        judged = self._judged(r)
        status, reason = self._classify(exp, r, judged)
        if status is not Status.INTERRUPTED and not status.failed:
            self.state.took(r.duration_s)
        done = self._finish(exp, status, r, reason, judged)
        self._apply(done, r)

    def _judged(self, r: RunResult) -> Judged:
        """The result's numbers once the locked evaluation is taken into account."""
        m = self.cfg.metric
        return judge(
            r.metrics,
            r.evaluation,
            metric=self.metric,
            test=m.test,
            tolerance=m.tolerance,
            required=self._evaluation is not None,
        )

    def _classify(self, exp: Experiment, r: RunResult, judged: Judged) -> tuple[Status, str]:
        """The status a finished job's row gets, and why.

        A cancelled job is INTERRUPTED; a training run that failed, or a failed locked
        evaluation, is a CRASH (metrics.crash_reason); a printed metric the evaluation does
        not confirm is FORGED; no usable metric is a CRASH;
        a baseline repeat is KEEP (its repeats make the noise model); a re-measurement of a
        keep is KEEP (REVOKED if the keep was revoked while it ran); a first run or a
        confirmation waits for its verdict (PENDING), unless its candidate was decided
        while it ran (DISCARD).
        """
        if r.cancelled:
            return Status.INTERRUPTED, "interrupted; `autoswarm run --resume` runs it again"
        trained = not r.error and not r.timed_out and r.exit_code == 0
        if trained and judged.failure is not None:
            return judged.failure, judged.reason
        reason = crash_reason(
            bounds=self.cfg.metric.bounds,
            exit_code=r.exit_code,
            timed_out=r.timed_out,
            timeout_s=self.cfg.run.effective_timeout,
            metrics=dict(judged.metrics),
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
        if status.failed:
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
                self.keeper.conclude_discard(
                    parent, f"{what} run #{done.id} crashed: {done.reason}"
                )
            else:
                self.proposer.observe(done)  # a kept variant stays kept on its evidence
            return
        if done.kind is Kind.BASELINE:
            self.proposer.observe(done)
            self.keeper.check_baseline(self._tier(done))
        elif done.is_remeasure and status is Status.KEEP:
            self.keeper.replicated(done)
        elif status is Status.PENDING:
            self.keeper.verdict(
                self.state.rerun_parent(done) if done.rerun_of is not None else done
            )
        else:  # a re-measurement of a revoked keep, a confirmation of a decided candidate
            self.proposer.observe(done)

    def _finish(
        self, exp: Experiment, status: Status, r: RunResult, reason: str, judged: Judged
    ) -> Experiment:
        """Record a job's end: the ledger row, the state, the noise groups; its run directory
        is removed off the loop's path (the log stays)."""
        metrics = dict(judged.metrics)
        value = metrics.get(self.metric)
        done = self.ledger.finish(
            exp.id,
            status=status,
            metrics=metrics,
            metric=value if value is not None and value == value and not status.failed else None,
            finished_at=r.finished_at,
            started_at=r.started_at,
            reason=reason,
            sealed=judged.sealed,
        )
        self.state.record(done)
        self.state.noise.measure(done)
        self._cleanup.submit(shutil.rmtree, self.ws.run_dir(exp.id), ignore_errors=True)
        return done

    # -- events and tiers ------------------------------------------------------------
    def _event(self, text: str) -> None:
        """A line for the live view and the log of the orchestrator."""
        with self._lock:
            self._event_count += 1
            self._events.append((self._event_count, one_line(text)))
        self._changed()

    def _tier(self, e: Experiment) -> str:
        """Tier key of an experiment: where it ran, else where it is pinned ("" without tiers)."""
        return tier_key(self.cfg.pool, e.tier, e.pinned_tier)

    # -- shutdown and bookkeeping ---------------------------------------------------

    def _shutdown(self, reason: str) -> None:
        """Kill what still runs, mark it interrupted, close the session. Never raises."""
        self._ended = reason
        why = interrupted_reason(reason)
        try:
            for exp_id in list(self.state.running):
                self.backend.cancel(exp_id)
            if self.ledger.broken:  # nothing more is written; a resume re-queues the orphans
                return
            deadline = time.monotonic() + 15.0
            while self.state.running and time.monotonic() < deadline:
                for r in self.backend.poll(timeout=0.5):
                    exp = self.state.stop(r.experiment_id)
                    if exp is not None:
                        self._finish(
                            exp,
                            Status.INTERRUPTED,
                            r,
                            why,
                            self._judged(r),
                        )
            for exp_id in list(self.state.running):
                self.ledger.finish(
                    exp_id,
                    status=Status.INTERRUPTED,
                    metrics={},
                    metric=None,
                    finished_at=self.clock.now(),
                    reason=why,
                )
                self.state.stop(exp_id)
        finally:
            self.backend.close()
            self.proposer.close()
            self._cleanup.shutdown(wait=True)
            self.ws.drop_spares()
            if self._session and not self.ledger.broken:
                self.ledger.end_session(self._session, now=self.clock.now(), reason=reason)
            if self.run_rec is not None and not self.ledger.broken:
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

    def _base(self) -> str:
        assert self.run_rec is not None
        return self.run_rec.base_commit


# ---------------------------------------------------------------------------
# Small helpers


__all__ = ["Reproduce", "RunLock", "RunOutcome", "Scheduler", "SlotView", "Snapshot"]
