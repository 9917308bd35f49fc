"""The SkyPilot backend: experiments as SkyPilot tasks on clusters or as managed jobs.

Two modes (``[pool.options] mode``):

* ``clusters`` — one long-lived cluster per slot (``<prefix>-<tag>-<tier>-<i>``). The
  first experiment of a slot provisions it with ``sky.launch`` (which also runs the
  setup that prepares data once); later ones reuse it with ``sky.exec`` (workdir sync
  and run only: no provisioning per experiment). A cluster that disappears under a
  running job (spot preemption, node loss) is relaunched and the experiment re-run,
  up to ``max_relaunches`` times; it is never silently dropped.
* ``jobs`` — each experiment is a managed job (``sky.jobs.launch``) with ``use_spot``
  and ``job_recovery``; SkyPilot's controller recovers preemptions itself and the
  backend follows the job through RECOVERING back to RUNNING. Slots are only a
  concurrency limit.

Each experiment goes through a small state machine (:class:`SkyState`)::

    launching ─▶ running ─▶ succeeded | failed | timed_out | cancelled
        ▲            │
        └ recovering ◀ preempted

What differs between the modes (which SDK calls launch, poll, cancel, fetch logs, look
up and tear down) is a :class:`~autoswarm.backends.skymodes.Mode` chosen once in
``__init__``; the body below has no mode branches. Every SDK call goes through one
error boundary (:func:`~autoswarm.backends.skymodes.sdk_errors`) that maps what
SkyPilot raises to :class:`~autoswarm.errors.BackendCallError`: a failed launch is
retried or ends the experiment as a crash, a failed status poll is tried again, a
failed cancel or log download is a note in the experiment's log, never a crash of
the run.

Every SDK call (launches, status polls, log downloads, cancels) runs in a background
thread, so :meth:`SkyPilotBackend.poll` only reads a queue and never blocks the
scheduler longer than its timeout. SkyPilot 0.14's client calls return request ids
that ``sky.get`` resolves. What was launched is written to ``<state_dir>/skypilot.json``
so that ``autoswarm down`` can tear it down and ``--resume`` can re-attach.

``sky`` is imported lazily (``pip install 'autoswarm[skypilot]'``); tests pass a fake
of the SDK (:mod:`autoswarm.testing.fakesky`) instead.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

from autoswarm.backends.base import drain
from autoswarm.backends.skymodes import (
    API_HINT,
    Handle,
    Seen,
    SkyState,
    Tracked,
    down_clusters,
    make_mode,
    sdk_errors,
)
from autoswarm.backends.skytask import (
    TIMEOUT_EXIT,
    SkyOptions,
    SkyTier,
    cluster_name,
    job_name,
    parse_pool,
    read_exit,
    split_evaluation,
    task_config,
)
from autoswarm.config import Config
from autoswarm.errors import BackendCallError, BackendError, ConfigError
from autoswarm.evaluation import eval_outcome
from autoswarm.metrics import parse_summary
from autoswarm.process import CappedLog
from autoswarm.sandbox import sandbox_settings
from autoswarm.types import Job, RunResult

log = logging.getLogger(__name__)

STATE_FILE = "skypilot.json"
# How long a synchronous SDK call (reattach, orphan cancel, teardown) may take.
SYNC_CALL_TIMEOUT_S = 120.0
_LINE_PREFIX = re.compile(r"^\([^)\n]*pid=\d+\)\s?", re.MULTILINE)


def import_sky() -> Any:
    """The ``sky`` module, or a BackendError saying how to install it."""
    try:
        import sky
    except ImportError as e:
        raise BackendError(
            "the skypilot backend needs SkyPilot: pip install 'autoswarm[skypilot]', "
            "then run `sky check` to enable a cloud or Kubernetes"
        ) from e
    return sky


# ---------------------------------------------------------------------------
# The backend


class SkyPilotBackend:
    """Implements :class:`~autoswarm.backends.base.Backend` and ``Reattachable`` on SkyPilot."""

    def __init__(
        self,
        opts: SkyOptions,
        *,
        state_dir: Path,
        tag: str = "",
        prepare: Sequence[str] = (),
        log_max_bytes: int = 2_000_000,
        sdk: Any = None,
    ) -> None:
        self.opts = opts
        self.state_dir = state_dir
        self.tag = tag
        self.prepare = tuple(prepare)
        self.log_max_bytes = log_max_bytes
        self.sdk = sdk if sdk is not None else import_sky()
        self._mode = make_mode(opts.mode, self.sdk, opts)
        self._results: queue.Queue[RunResult] = queue.Queue()
        self._tracked: dict[int, Tracked] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._driver: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=min(32, opts.capacity + 4), thread_name_prefix="autoswarm-sky"
        )
        self._closed = False
        self.states: dict[int, list[SkyState]] = {}  # history of every experiment, for status/tests

    @classmethod
    def from_config(cls, cfg: Config, *, state_dir: Path, sdk: Any = None) -> SkyPilotBackend:
        """Build from ``[pool]`` (backend = "skypilot"); ConfigError for a malformed pool."""
        if cfg.pool.backend != "skypilot":
            raise ConfigError(
                f'[pool] backend is {cfg.pool.backend!r}, not "skypilot": set backend = "skypilot"'
            )
        return cls(
            # Each node contains its experiments as [sandbox] says (skytask.sandbox_prelude).
            dataclasses.replace(parse_pool(cfg.pool), sandbox=sandbox_settings(cfg.sandbox)),
            state_dir=state_dir,
            tag=cfg.run.tag,
            prepare=cfg.workspace.prepare,
            log_max_bytes=cfg.run.log_max_bytes,
            sdk=sdk,
        )

    @property
    def mode(self) -> str:
        return self._mode.name

    # -- protocol ------------------------------------------------------------------

    def capacity(self) -> int:
        return self.opts.capacity

    def submit(self, job: Job) -> str:
        if self._closed:
            raise BackendError("the skypilot backend is closed")
        tier = self._tier_of(job)
        cluster = cluster_name(self.opts, self.tag, tier.name, self.opts.slot_tier(job.slot)[1])
        t = Tracked(
            job=job,
            tier=tier,
            cluster=self._mode.cluster(cluster),
            name=job_name(self.opts, self.tag, job.experiment_id),
            submitted_at=time.time(),
        )
        task = self._task(job)  # parse before anything is launched: a bad task is a bug
        with self._lock:
            busy = [
                o.job.experiment_id
                for o in self._tracked.values()
                if o.job.slot == job.slot and not o.state.is_finished()
            ]
            if busy:
                raise BackendError(
                    f"slot {job.slot} is still running experiment {busy[0]}; "
                    "this is a scheduler bug, please report it"
                )
            self._tracked[job.experiment_id] = t
            self.states[job.experiment_id] = t.history
            self._start_launch(t, task, relaunch=False)
        self._save_state()
        self._ensure_driver()
        return json.dumps(t.handle(self.mode))

    def poll(self, timeout: float) -> list[RunResult]:
        return drain(self._results, timeout)

    def cancel(self, experiment_id: int, handle: str | None = None) -> None:
        with self._lock:
            t = self._tracked.get(experiment_id)
            if t is not None:
                t.cancel_requested = True
        if t is not None:
            self._wake.set()
            return
        if handle:
            self._cancel_orphan(experiment_id, handle)

    def close(self) -> None:
        """Cancel what still runs, then tear down the clusters this process used."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._driver is not None:
            self._driver.join(timeout=SYNC_CALL_TIMEOUT_S)
        with self._lock:
            left = list(self._tracked.values())
        for t in left:
            t.cancel_requested = True
            if t.launch is not None:
                wait_futures([t.launch], timeout=SYNC_CALL_TIMEOUT_S)
                self._on_launched(t)
            if not t.state.is_finished():
                self._cancel_remote(t)
                self._finish(t, SkyState.CANCELLED)
        if not self.opts.keep_clusters:
            self.teardown()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- Reattachable ----------------------------------------------------------------

    def reattach(self, job: Job, handle: str) -> bool:
        """Adopt an experiment an earlier orchestrator started (``--resume``)."""
        h = Handle.parse(handle)
        if h is None or h.mode != self.mode or self._closed:
            return False
        tier = self._tier_of(job)
        h = self._completed(h, job.experiment_id)
        h = dataclasses.replace(h, name=h.name or job_name(self.opts, self.tag, job.experiment_id))
        try:
            job_id, status = self._sync(lambda: self._mode.lookup(h), f"re-attaching {h.name}")
        except BackendCallError as e:
            log.info("cannot reattach experiment %s: %s", job.experiment_id, e)
            return False
        if job_id is None:
            return False
        t = Tracked(
            job=job,
            tier=tier,
            cluster=h.cluster,
            name=h.name,
            submitted_at=time.time(),
            job_id=job_id,
        )
        if status is SkyState.RUNNING:
            t.move(SkyState.RUNNING)
            t.first_running = t.running_since = time.time()
        with self._lock:
            self._tracked[job.experiment_id] = t
            self.states[job.experiment_id] = t.history
            self._mode.adopt(t)
        self._save_state()
        self._ensure_driver()
        return True

    # -- teardown ----------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """``sky down`` every cluster this process launched or adopted; returns their names."""
        downed = self._mode.teardown()
        self._save_state(forget=set(downed))
        return downed

    # -- internals: launching ----------------------------------------------------------

    def _tier_of(self, job: Job) -> SkyTier:
        if not 0 <= job.slot < self.opts.capacity:
            raise BackendError(f"slot {job.slot} does not exist (capacity {self.opts.capacity})")
        tier, _ = self.opts.slot_tier(job.slot)
        if job.tier and job.tier != tier.name:
            raise BackendError(
                f"experiment {job.experiment_id} is for tier {job.tier!r} but slot {job.slot} "
                f"belongs to tier {tier.name!r}; this is a scheduler bug, please report it"
            )
        return tier

    def _task(self, job: Job) -> Any:
        config = task_config(job, self.opts, tag=self.tag, prepare=self.prepare)
        with sdk_errors(
            self.sdk,
            f"SkyPilot's check of the task of experiment {job.experiment_id}",
            hint="check [pool] in autoswarm.toml (see `autoswarm run --dry-run`)",
        ):
            return self.sdk.Task.from_yaml_config(config)

    def _start_launch(self, t: Tracked, task: Any, *, relaunch: bool) -> None:
        t.launch = self._pool.submit(self._mode.launch(t, task, relaunch=relaunch))

    def _on_launched(self, t: Tracked) -> None:
        fut, t.launch = t.launch, None
        if fut is None:
            return
        try:
            reply = _reply(fut)
        except BackendCallError as e:
            self._mode.lost(t)
            where = f"cluster {t.cluster}" if t.cluster else f"tier {t.tier.name}"
            t.notes.append(f"launch on {where} failed: {e.reason}")
            if t.cancel_requested:
                self._finish(t, SkyState.CANCELLED)
            elif t.attempts < self.opts.max_relaunches:
                t.attempts += 1
                t.move(SkyState.RECOVERING)
                self._start_launch(t, self._task(t.job), relaunch=True)
            else:
                self._finish(
                    t,
                    SkyState.FAILED,
                    error=f"SkyPilot could not start the experiment on {where} after "
                    f"{t.attempts + 1} attempt(s): {e.reason}. Check `sky check`, the tier's "
                    "accelerator and infra, and the cloud's quota",
                )
            return
        self._mode.launched(t, reply)
        self._save_state()

    # -- internals: the driver ---------------------------------------------------------

    def _ensure_driver(self) -> None:
        with self._lock:
            if self._driver is None:
                self._driver = threading.Thread(
                    target=self._drive, daemon=True, name="autoswarm-skypilot"
                )
                self._driver.start()

    def _drive(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:
                # The watcher's boundary: SDK failures are already data (sdk_errors);
                # whatever else one poll hit (a bug, a full disk writing a log), the
                # thread must keep following the jobs, or they would never finish.
                log.exception("skypilot backend: status poll failed; retrying")
            self._wake.wait(self.opts.poll_interval_s)
            self._wake.clear()

    def _tick(self) -> None:
        with self._lock:
            items = [t for t in self._tracked.values() if not t.state.is_finished()]
        for t in items:
            if t.launch is not None and t.launch.done():
                self._on_launched(t)
        active = [t for t in items if t.launch is None and not t.state.is_finished()]
        for t, seen in self._mode.observe([t for t in active if t.job_id is not None]):
            self._apply(t, seen)
        now = time.time()
        for t in active:
            if t.state.is_finished():
                continue
            if t.cancel_requested:
                self._cancel_remote(t)
                self._finish(t, SkyState.CANCELLED)
            elif (
                t.state is SkyState.RUNNING
                and t.running_since is not None
                and now - t.running_since > t.job.timeout_s + self.opts.timeout_slack_s
            ):
                self._cancel_remote(t)
                self._finish(t, SkyState.TIMED_OUT)

    def _apply(self, t: Tracked, seen: Seen) -> None:
        """Move ``t`` by what a status poll saw of it."""
        if t.state.is_finished():
            return
        if seen.state is SkyState.RUNNING:
            self._running(t)
        elif seen.state is SkyState.PREEMPTED:
            self._preempted(t, seen.why)
        elif seen.state is SkyState.RECOVERING:
            if t.state not in (SkyState.PREEMPTED, SkyState.RECOVERING):
                t.move(SkyState.PREEMPTED)
                t.notes.append(seen.why)
                t.move(SkyState.RECOVERING)
                t.running_since = None
        elif seen.state.is_finished():
            self._finish(t, seen.state, error=seen.why)

    def _running(self, t: Tracked) -> None:
        if t.state is not SkyState.RUNNING:
            t.move(SkyState.RUNNING)
            now = time.time()
            t.running_since = now
            if t.first_running is None:
                t.first_running = now

    def _preempted(self, t: Tracked, why: str) -> None:
        """``t`` lost its cluster: relaunch it there, up to ``max_relaunches`` times."""
        t.move(SkyState.PREEMPTED)
        t.notes.append(why)
        t.running_since = None
        self._mode.lost(t)
        if t.cancel_requested:
            self._finish(t, SkyState.CANCELLED)
        elif t.attempts >= self.opts.max_relaunches:
            t.job_id = None  # its cluster is gone: no log to fetch, no exit code
            self._finish(
                t,
                SkyState.FAILED,
                error=f"{why}; gave up after {t.attempts} relaunch(es) (max_relaunches = "
                f"{self.opts.max_relaunches} in [pool.options])",
            )
        else:
            t.attempts += 1
            t.job_id = None
            t.move(SkyState.RECOVERING)
            self._start_launch(t, self._task(t.job), relaunch=True)

    # -- internals: cancelling -----------------------------------------------------------

    def _cancel_remote(self, t: Tracked) -> None:
        if t.job_id is None:
            return
        try:
            self._mode.cancel(t)
        except BackendCallError as e:
            t.notes.append(f"cancel failed: {e.reason}")

    def _cancel_orphan(self, experiment_id: int, handle: str) -> None:
        h = Handle.parse(handle)
        if h is None:
            return
        h = self._completed(h, experiment_id)
        mode = self._mode if h.mode == self.mode else make_mode(h.mode, self.sdk, self.opts)
        try:
            self._sync(lambda: mode.cancel_orphan(h), f"cancelling {h.name or h.job_id}")
        except BackendCallError as e:
            log.warning("skypilot: could not cancel orphaned experiment %s: %s", experiment_id, e)
        self._save_state(drop_job=experiment_id)

    # -- internals: finishing ------------------------------------------------------------

    def _fetch_logs(self, t: Tracked) -> str:
        if t.job_id is None:
            return ""
        buf = io.StringIO()
        try:
            self._mode.logs(t, buf)
        except BackendCallError as e:
            t.notes.append(f"could not download the log: {e.reason}")
        return _LINE_PREFIX.sub("", buf.getvalue())

    def _finish(self, t: Tracked, state: SkyState, *, error: str = "") -> None:
        if t.state.is_finished():
            return
        text = self._fetch_logs(t)
        t.move(state)
        trained, ev_text, ev_code, ev_seconds = split_evaluation(text)
        code, marker_timeout = read_exit(trained)
        timed_out = state is SkyState.TIMED_OUT or marker_timeout
        if state is SkyState.SUCCEEDED:
            exit_code: int | None = 0 if code is None else code
        elif state is SkyState.FAILED:
            exit_code = code if code is not None else (1 if t.job_id is not None else None)
        else:
            exit_code = code
        out = CappedLog(t.job.log_path, self.log_max_bytes)
        out.write(text.encode())
        tail = list(t.notes) + ([error] if error else [])
        if state is SkyState.TIMED_OUT:
            tail.append(f"killed after the {t.job.timeout_s:g}s timeout")
        if tail:
            out.write(("\n" + "".join(f"autoswarm: {n}\n" for n in tail)).encode())
        out.close()
        now = time.time()
        evaluation = None
        if ev_text is not None and state is not SkyState.CANCELLED:
            t.job.eval_log_path.write_text(ev_text)
            evaluation = eval_outcome(
                exit_code=ev_code,
                timed_out=ev_code == TIMEOUT_EXIT,
                seconds=ev_seconds,
                error="" if ev_code is not None else "the evaluation did not finish on the node",
                log=ev_text,
                started=ev_code is not None,
            )
        result = RunResult(
            experiment_id=t.job.experiment_id,
            exit_code=exit_code,
            timed_out=timed_out,
            started_at=t.first_running if t.first_running is not None else t.submitted_at,
            finished_at=now,
            log_path=t.job.log_path,
            metrics={}
            if state in (SkyState.CANCELLED, SkyState.TIMED_OUT)
            else parse_summary(trained),
            error=error,
            cancelled=state is SkyState.CANCELLED,
            evaluation=evaluation,
        )
        with self._lock:
            self._tracked.pop(t.job.experiment_id, None)
        self._save_state(drop_job=t.job.experiment_id)
        self._results.put(result)

    # -- internals: SDK helpers ----------------------------------------------------------

    def _sync(self, fn: Callable[[], Any], what: str) -> Any:
        """Run an SDK call in the pool, waiting at most SYNC_CALL_TIMEOUT_S."""
        fut = self._pool.submit(fn)
        try:
            return fut.result(timeout=SYNC_CALL_TIMEOUT_S)
        except FutureTimeout as e:
            late = FutureTimeout(f"no answer within {SYNC_CALL_TIMEOUT_S:g}s")
            raise BackendCallError(what, late, hint=API_HINT) from e

    def _completed(self, h: Handle, experiment_id: int) -> Handle:
        """``h`` with the job id the state file recorded if the handle has none."""
        if h.job_id is not None:
            return h
        return dataclasses.replace(h, job_id=self._recorded_job_id(experiment_id))

    # -- internals: the state file -------------------------------------------------------

    def _recorded_job_id(self, experiment_id: int) -> int | None:
        rec = read_state(self.state_dir).get("jobs", {}).get(str(experiment_id), {})
        jid = rec.get("job_id") if isinstance(rec, dict) else None
        return int(jid) if isinstance(jid, int) else None

    def _save_state(self, *, drop_job: int | None = None, forget: set[str] | None = None) -> None:
        with self._lock:
            state = read_state(self.state_dir)
            clusters = {
                k: v for k, v in state.get("clusters", {}).items() if k not in (forget or set())
            }
            for name in self._mode.clusters():
                clusters.setdefault(name, {"launched_at": time.time()})
            jobs = dict(state.get("jobs", {}))
            for eid, t in self._tracked.items():
                jobs[str(eid)] = t.handle(self.mode)
            if drop_job is not None:
                jobs.pop(str(drop_job), None)
            write_state(self.state_dir, {"clusters": clusters, "jobs": jobs})


def _reply(fut: Future[Any]) -> Any:
    """What a launch returned; BackendCallError if it failed, is still running or was cancelled."""
    if fut.cancelled() or not fut.done():
        why = "cancelled" if fut.cancelled() else f"no answer within {SYNC_CALL_TIMEOUT_S:g}s"
        raise BackendCallError("the launch", FutureTimeout(why), hint=API_HINT)
    return fut.result()  # a mode's launch call raises only BackendCallError (its boundary)


# ---------------------------------------------------------------------------
# The state file and `autoswarm down`


def read_state(state_dir: Path) -> dict[str, Any]:
    """``<state_dir>/skypilot.json``: clusters launched and jobs in flight ({} if none)."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_state(state_dir: Path, data: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{STATE_FILE}.{os.getpid()}.{threading.get_ident()}"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(state_dir / STATE_FILE)


def down_recorded(state_dir: Path, *, sdk: Any = None) -> tuple[list[str], list[str]]:
    """Tear down what a run recorded in ``<state_dir>/skypilot.json`` (``autoswarm down``).

    Cancels managed jobs still listed, then ``sky down`` every recorded cluster.
    Returns (clusters downed, clusters that failed to go down).
    """
    state = read_state(state_dir)
    clusters = sorted(state.get("clusters", {}))
    jobs = state.get("jobs", {})
    if not clusters and not jobs:
        return [], []
    sdk = sdk if sdk is not None else import_sky()
    for rec in jobs.values():
        h = Handle.of(rec)
        if h is None:
            continue
        try:
            make_mode(h.mode, sdk).release(h)
        except BackendCallError as e:
            log.warning("skypilot: could not cancel managed job %s: %s", rec, e)
    downed = down_clusters(sdk, clusters)
    failed = [c for c in clusters if c not in downed]
    write_state(
        state_dir,
        {"clusters": {c: state["clusters"][c] for c in failed}, "jobs": {}},
    )
    return downed, failed


__all__ = [
    "STATE_FILE",
    "SkyPilotBackend",
    "SkyState",
    "down_clusters",
    "down_recorded",
    "import_sky",
    "read_state",
    "write_state",
]
