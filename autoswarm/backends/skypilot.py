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

Every SDK call (launches, status polls, log downloads, cancels) runs in a background
thread, so :meth:`SkyPilotBackend.poll` only reads a queue and never blocks the
scheduler longer than its timeout. SkyPilot 0.14's client calls return request ids
that ``sky.get`` resolves. What was launched is written to ``<state_dir>/skypilot.json``
so that ``autoswarm down`` can tear it down and ``--resume`` can re-attach.

``sky`` is imported lazily (``pip install 'autoswarm[skypilot]'``); tests pass a fake
of the SDK (:mod:`autoswarm.testing.fakesky`) instead.
"""

from __future__ import annotations

import contextlib
import enum
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoswarm.backends.base import drain
from autoswarm.backends.skytask import (
    SkyOptions,
    SkyTier,
    cluster_name,
    job_name,
    parse_pool,
    read_exit,
    task_config,
)
from autoswarm.config import Config
from autoswarm.errors import BackendError, ConfigError
from autoswarm.metrics import parse_summary
from autoswarm.process import CappedLog
from autoswarm.types import Job, RunResult

log = logging.getLogger(__name__)

STATE_FILE = "skypilot.json"
# How long a synchronous SDK call (reattach, orphan cancel, teardown) may take.
SYNC_CALL_TIMEOUT_S = 120.0
TEARDOWN_TIMEOUT_S = 900.0
# A managed job missing from `sky jobs queue` this many polls in a row is reported lost.
MISSING_POLLS = 5
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
# States


class SkyState(enum.Enum):
    """Where one experiment is on SkyPilot."""

    LAUNCHING = "launching"  # request sent: provisioning, setup, queued on the cluster
    RUNNING = "running"
    PREEMPTED = "preempted"  # lost its instances (transient: recovery follows)
    RECOVERING = "recovering"  # relaunching the cluster (clusters) / SkyPilot recovers (jobs)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    def is_finished(self) -> bool:
        return self in (SkyState.SUCCEEDED, SkyState.FAILED, SkyState.TIMED_OUT, SkyState.CANCELLED)


_CLUSTER_STATUS = {
    "INIT": SkyState.LAUNCHING,
    "PENDING": SkyState.LAUNCHING,
    "SETTING_UP": SkyState.LAUNCHING,
    "RUNNING": SkyState.RUNNING,
    "SUCCEEDED": SkyState.SUCCEEDED,
    "FAILED": SkyState.FAILED,
    "FAILED_SETUP": SkyState.FAILED,
    "CANCELLED": SkyState.CANCELLED,
    # FAILED_DRIVER: the job's driver died with its node — treated as a preemption.
}
_MANAGED_STATUS = {
    "PENDING": SkyState.LAUNCHING,
    "SUBMITTED": SkyState.LAUNCHING,
    "STARTING": SkyState.LAUNCHING,
    "RUNNING": SkyState.RUNNING,
    "WINDING_DOWN": SkyState.RUNNING,
    "RECOVERING": SkyState.RECOVERING,
    "CANCELLING": SkyState.CANCELLED,
    "CANCELLED": SkyState.CANCELLED,
    "SUCCEEDED": SkyState.SUCCEEDED,
}


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status) or "")


def _field(record: Any, key: str) -> Any:
    """A field of a SkyPilot response record (pydantic model or dict)."""
    try:
        return record[key]
    except (KeyError, TypeError):
        return getattr(record, key, None)


@dataclass
class _Tracked:
    """Mutable bookkeeping of one experiment (internal; results go out as RunResult)."""

    job: Job
    tier: SkyTier
    cluster: str  # "" in jobs mode
    name: str
    submitted_at: float
    state: SkyState = SkyState.LAUNCHING
    job_id: int | None = None
    launch: Future[Any] | None = None
    first_running: float | None = None
    running_since: float | None = None
    attempts: int = 0  # (re)launches after the first: preemptions and launch failures
    recoveries: int = 0  # managed jobs: SkyPilot's recovery_count
    missing: int = 0
    cancel_requested: bool = False
    notes: list[str] = field(default_factory=list)
    history: list[SkyState] = field(default_factory=lambda: [SkyState.LAUNCHING])

    def move(self, state: SkyState) -> None:
        if state is not self.state:
            self.state = state
            self.history.append(state)

    def handle(self, mode: str) -> dict[str, Any]:
        return {
            "backend": "skypilot",
            "mode": mode,
            "cluster": self.cluster,
            "name": self.name,
            "job_id": self.job_id,
        }


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
        self._results: queue.Queue[RunResult] = queue.Queue()
        self._tracked: dict[int, _Tracked] = {}
        self._ready: set[str] = set()  # clusters known UP in this process (sky.exec works)
        self._launched: set[str] = set()  # clusters this process launched or adopted
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
            parse_pool(cfg.pool),
            state_dir=state_dir,
            tag=cfg.run.tag,
            prepare=cfg.workspace.prepare,
            log_max_bytes=cfg.run.log_max_bytes,
            sdk=sdk,
        )

    @property
    def mode(self) -> str:
        return self.opts.mode

    # -- protocol ------------------------------------------------------------------

    def capacity(self) -> int:
        return self.opts.capacity

    def submit(self, job: Job) -> str:
        if self._closed:
            raise BackendError("the skypilot backend is closed")
        tier = self._tier_of(job)
        cluster = cluster_name(self.opts, self.tag, tier.name, self.opts.slot_tier(job.slot)[1])
        t = _Tracked(
            job=job,
            tier=tier,
            cluster=cluster if self.mode == "clusters" else "",
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
                with contextlib.suppress(Exception):
                    t.launch.result(timeout=SYNC_CALL_TIMEOUT_S)
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
        try:
            info = json.loads(handle)
        except (TypeError, ValueError):
            return False
        if not isinstance(info, dict) or info.get("backend") != "skypilot":
            return False
        if info.get("mode") != self.mode or self._closed:
            return False
        tier = self._tier_of(job)
        job_id = info.get("job_id") or self._recorded_job_id(job.experiment_id)
        name = str(info.get("name") or job_name(self.opts, self.tag, job.experiment_id))
        cluster = str(info.get("cluster") or "")
        try:
            job_id, status = self._sync(lambda: self._lookup(cluster, name, job_id))
        except Exception as e:
            log.info("cannot reattach experiment %s: %s", job.experiment_id, e)
            return False
        if job_id is None:
            return False
        t = _Tracked(
            job=job, tier=tier, cluster=cluster, name=name, submitted_at=time.time(), job_id=job_id
        )
        if status is SkyState.RUNNING:
            t.move(SkyState.RUNNING)
            t.first_running = t.running_since = time.time()
        with self._lock:
            self._tracked[job.experiment_id] = t
            self.states[job.experiment_id] = t.history
            if cluster:
                self._ready.add(cluster)
                self._launched.add(cluster)
        self._save_state()
        self._ensure_driver()
        return True

    # -- teardown ----------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """``sky down`` every cluster this process launched or adopted; returns their names."""
        with self._lock:
            names = sorted(self._launched)
        downed = down_clusters(self.sdk, names)
        with self._lock:
            self._launched -= set(downed)
            self._ready -= set(downed)
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
        try:
            return self.sdk.Task.from_yaml_config(config)
        except Exception as e:
            raise BackendError(
                f"SkyPilot rejected the task of experiment {job.experiment_id}: {e}. "
                "Check [pool] in autoswarm.toml (see `autoswarm run --dry-run`)"
            ) from e

    def _start_launch(self, t: _Tracked, task: Any, *, relaunch: bool) -> None:
        sdk, opts = self.sdk, self.opts
        if self.mode == "jobs":

            def go() -> Any:
                return sdk.get(sdk.jobs.launch(task, name=t.name))
        elif t.cluster in self._ready and not relaunch:

            def go() -> Any:
                return sdk.get(sdk.exec(task, cluster_name=t.cluster))
        else:
            autostop = opts.idle_minutes_to_autostop or None

            def go() -> Any:
                if relaunch:  # a preempted cluster: clear its record, then provision anew
                    with contextlib.suppress(Exception):
                        sdk.get(sdk.down(t.cluster))
                return sdk.get(
                    sdk.launch(task, cluster_name=t.cluster, idle_minutes_to_autostop=autostop)
                )

            with self._lock:
                self._launched.add(t.cluster)
        t.launch = self._pool.submit(go)

    def _on_launched(self, t: _Tracked) -> None:
        fut, t.launch = t.launch, None
        if fut is None:
            return
        try:
            value = fut.result(timeout=0)
        except Exception as e:
            self._ready.discard(t.cluster)
            where = f"cluster {t.cluster}" if t.cluster else f"tier {t.tier.name}"
            t.notes.append(f"launch on {where} failed: {type(e).__name__}: {e}")
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
                    f"{t.attempts + 1} attempt(s): {e}. Check `sky check`, the tier's "
                    "accelerator and infra, and the cloud's quota",
                )
            return
        if self.mode == "jobs":
            ids = value[0] if isinstance(value, tuple) else value
            t.job_id = int(ids[0])
        else:
            t.job_id = int(value[0])
            self._ready.add(t.cluster)
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
            except Exception:  # keep following the jobs whatever one poll did
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
        if self.mode == "jobs":
            self._refresh_managed([t for t in active if t.job_id is not None])
        else:
            for t in active:
                if t.job_id is not None:
                    self._refresh_cluster_job(t)
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

    def _running(self, t: _Tracked) -> None:
        if t.state is not SkyState.RUNNING:
            t.move(SkyState.RUNNING)
            now = time.time()
            t.running_since = now
            if t.first_running is None:
                t.first_running = now

    def _refresh_cluster_job(self, t: _Tracked) -> None:
        exc = self.sdk.exceptions
        try:
            statuses = self.sdk.get(self.sdk.job_status(t.cluster, [t.job_id]))
        except (exc.ClusterNotUpError, exc.ClusterDoesNotExist) as e:
            self._preempted(t, f"cluster {t.cluster} is gone: {e}")
            return
        except Exception as e:  # the API server hiccuped: try again next poll
            log.warning("skypilot: status of %s on %s failed: %s", t.name, t.cluster, e)
            return
        name = _status_name(statuses.get(t.job_id))
        if not name or name == "FAILED_DRIVER":
            self._preempted(t, f"job {t.job_id} on {t.cluster} lost its node ({name or 'gone'})")
            return
        state = _CLUSTER_STATUS.get(name, SkyState.LAUNCHING)
        if state is SkyState.RUNNING:
            self._running(t)
        elif state.is_finished():
            why = "setup failed on the cluster (see the log)" if name == "FAILED_SETUP" else ""
            self._finish(t, state, error=why)

    def _preempted(self, t: _Tracked, why: str) -> None:
        t.move(SkyState.PREEMPTED)
        t.notes.append(why)
        t.running_since = None
        self._ready.discard(t.cluster)
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

    def _refresh_managed(self, items: list[_Tracked]) -> None:
        if not items:
            return
        try:
            reply = self.sdk.get(
                self.sdk.jobs.queue_v2(
                    refresh=False, skip_finished=False, job_ids=[t.job_id for t in items]
                )
            )
        except Exception as e:
            log.warning("skypilot: `sky jobs queue` failed: %s", e)
            return
        records = reply[0] if isinstance(reply, tuple) else reply
        by_id = {_field(r, "job_id"): r for r in records}
        for t in items:
            rec = by_id.get(t.job_id)
            if rec is None:
                t.missing += 1
                if t.missing >= MISSING_POLLS:
                    self._finish(
                        t,
                        SkyState.FAILED,
                        error=f"managed job {t.job_id} vanished from `sky jobs queue`",
                    )
                continue
            t.missing = 0
            count = int(_field(rec, "recovery_count") or 0)
            name = _status_name(_field(rec, "status"))
            if count > t.recoveries or name == "RECOVERING":
                if t.state not in (SkyState.PREEMPTED, SkyState.RECOVERING):
                    t.move(SkyState.PREEMPTED)
                    t.notes.append(f"managed job {t.job_id} preempted; SkyPilot recovers it")
                    t.move(SkyState.RECOVERING)
                    t.running_since = None
                t.recoveries = max(t.recoveries, count)
            state = _MANAGED_STATUS.get(
                name, SkyState.FAILED if name.startswith("FAILED") else None
            )
            if state is SkyState.RUNNING:
                self._running(t)
            elif state is not None and state.is_finished():
                reason = _field(rec, "failure_reason") or ""
                why = f"managed job ended {name}" + (f": {reason}" if reason else "")
                self._finish(t, state, error=why if name != "SUCCEEDED" else "")

    # -- internals: cancelling -----------------------------------------------------------

    def _cancel_remote(self, t: _Tracked) -> None:
        if t.job_id is None:
            return
        try:
            if self.mode == "jobs":
                self.sdk.get(self.sdk.jobs.cancel(job_ids=[t.job_id]))
            else:
                self.sdk.get(self.sdk.cancel(t.cluster, job_ids=[t.job_id]))
        except Exception as e:
            t.notes.append(f"cancel failed: {e}")

    def _cancel_orphan(self, experiment_id: int, handle: str) -> None:
        try:
            info = json.loads(handle)
        except (TypeError, ValueError):
            return
        if not isinstance(info, dict) or info.get("backend") != "skypilot":
            return
        job_id = info.get("job_id") or self._recorded_job_id(experiment_id)
        cluster, name = str(info.get("cluster") or ""), str(info.get("name") or "")
        sdk = self.sdk

        def go() -> None:
            if info.get("mode") == "jobs":
                if job_id is not None:
                    sdk.get(sdk.jobs.cancel(job_ids=[int(job_id)]))
                elif name:
                    sdk.get(sdk.jobs.cancel(name=name))
            elif cluster:
                jid, _ = self._lookup(cluster, name, job_id)
                if jid is not None:
                    sdk.get(sdk.cancel(cluster, job_ids=[jid]))

        try:
            self._sync(go)
        except Exception as e:
            log.warning("skypilot: could not cancel orphaned experiment %s: %s", experiment_id, e)
        self._save_state(drop_job=experiment_id)

    # -- internals: finishing ------------------------------------------------------------

    def _fetch_logs(self, t: _Tracked) -> str:
        if t.job_id is None:
            return ""
        buf = io.StringIO()
        try:
            if self.mode == "jobs":
                self.sdk.jobs.tail_logs(job_id=t.job_id, follow=False, output_stream=buf)
            else:
                self.sdk.tail_logs(t.cluster, t.job_id, follow=False, output_stream=buf)
        except Exception as e:
            t.notes.append(f"could not download the log: {e}")
        return _LINE_PREFIX.sub("", buf.getvalue())

    def _finish(self, t: _Tracked, state: SkyState, *, error: str = "") -> None:
        if t.state.is_finished():
            return
        text = self._fetch_logs(t)
        t.move(state)
        code, marker_timeout = read_exit(text)
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
        result = RunResult(
            experiment_id=t.job.experiment_id,
            exit_code=exit_code,
            timed_out=timed_out,
            started_at=t.first_running if t.first_running is not None else t.submitted_at,
            finished_at=now,
            log_path=t.job.log_path,
            metrics={}
            if state in (SkyState.CANCELLED, SkyState.TIMED_OUT)
            else parse_summary(text),
            error=error,
            cancelled=state is SkyState.CANCELLED,
        )
        with self._lock:
            self._tracked.pop(t.job.experiment_id, None)
        self._save_state(drop_job=t.job.experiment_id)
        self._results.put(result)

    # -- internals: SDK helpers ----------------------------------------------------------

    def _sync(self, fn: Callable[[], Any]) -> Any:
        """Run an SDK call in the pool, waiting at most SYNC_CALL_TIMEOUT_S."""
        fut = self._pool.submit(fn)
        try:
            return fut.result(timeout=SYNC_CALL_TIMEOUT_S)
        except FutureTimeout as e:
            raise BackendError(
                f"SkyPilot did not answer within {SYNC_CALL_TIMEOUT_S:g}s: check the API "
                "server with `sky api status`"
            ) from e

    def _lookup(
        self, cluster: str, name: str, job_id: int | None
    ) -> tuple[int | None, SkyState | None]:
        """(job id, state) of a job by id or, failing that, by name; (None, None) if gone."""
        sdk = self.sdk
        if self.mode == "jobs":
            kwargs: dict[str, Any] = {"refresh": False, "skip_finished": False}
            if job_id is not None:
                kwargs["job_ids"] = [int(job_id)]
            else:
                kwargs["name_match"] = name
            reply = sdk.get(sdk.jobs.queue_v2(**kwargs))
            records = reply[0] if isinstance(reply, tuple) else reply
            for r in records:
                if (job_id is not None and _field(r, "job_id") == int(job_id)) or (
                    job_id is None and _field(r, "job_name") == name
                ):
                    return int(_field(r, "job_id")), _MANAGED_STATUS.get(
                        _status_name(_field(r, "status"))
                    )
            return None, None
        if not cluster:
            return None, None
        try:
            if job_id is None:
                records = sdk.get(sdk.queue(cluster))
                ids = [int(_field(r, "job_id")) for r in records if _field(r, "job_name") == name]
                if not ids:
                    return None, None
                job_id = max(ids)
            statuses = sdk.get(sdk.job_status(cluster, [int(job_id)]))
        except (sdk.exceptions.ClusterNotUpError, sdk.exceptions.ClusterDoesNotExist):
            return None, None
        name_ = _status_name(statuses.get(int(job_id)))
        if not name_ or name_ == "FAILED_DRIVER":
            return None, None
        return int(job_id), _CLUSTER_STATUS.get(name_)

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
            for name in self._launched:
                clusters.setdefault(name, {"launched_at": time.time()})
            jobs = dict(state.get("jobs", {}))
            for eid, t in self._tracked.items():
                jobs[str(eid)] = t.handle(self.mode)
            if drop_job is not None:
                jobs.pop(str(drop_job), None)
            write_state(self.state_dir, {"clusters": clusters, "jobs": jobs})


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


def down_clusters(sdk: Any, names: Sequence[str]) -> list[str]:
    """``sky down`` ``names`` in parallel; returns those that are gone (downed or never existed)."""
    if not names:
        return []

    def one(name: str) -> str | None:
        try:
            sdk.get(sdk.down(name))
        except sdk.exceptions.ClusterDoesNotExist:
            pass
        except Exception as e:
            log.error("skypilot: `sky down %s` failed: %s; run it by hand", name, e)
            return None
        return name

    with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        done = list(pool.map(one, names, timeout=TEARDOWN_TIMEOUT_S))
    return [n for n in done if n is not None]


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
        if isinstance(rec, dict) and rec.get("mode") == "jobs":
            try:
                if rec.get("job_id") is not None:
                    sdk.get(sdk.jobs.cancel(job_ids=[int(rec["job_id"])]))
                elif rec.get("name"):
                    sdk.get(sdk.jobs.cancel(name=rec["name"]))
            except Exception as e:
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
