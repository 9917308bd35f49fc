"""The SkyPilot backend's two modes behind one small interface, and its one error boundary.

Internal to :mod:`autoswarm.backends.skypilot`. What differs between ``clusters`` and
``jobs`` is which SDK calls launch, poll, cancel, fetch logs, look up and tear down an
experiment; everything else (the state machine, relaunch budgets, the timeout
watchdog, the log and the result, the state file) is the backend's and the same for
both. So a mode is a :class:`Mode`, chosen once by :func:`make_mode`:

* :class:`ClustersMode` — one long-lived cluster per slot: ``sky.launch`` provisions it
  (with setup) and ``sky.exec`` reuses it; it knows which clusters are UP and which this
  process owns (teardown). A cluster that is gone is reported as a preemption, and the
  backend relaunches.
* :class:`JobsMode` — each experiment is a managed job (``sky.jobs.*``); SkyPilot's
  controller recovers preemptions, which the mode reports as RECOVERING. It owns no
  cluster.

A mode translates what SkyPilot says into :class:`Seen` facts and never moves an
experiment's state itself; the backend applies them.

Every SDK call goes through :func:`sdk_errors`, the one place where what SkyPilot
raises becomes autoswarm's :class:`~autoswarm.errors.BackendCallError` (httpx's
``map_httpcore_exceptions`` is the model).
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from autoswarm.backends.skytask import MODES, SkyOptions, SkyTier
from autoswarm.errors import AutoswarmError, BackendCallError
from autoswarm.types import Job

log = logging.getLogger("autoswarm.backends.skypilot")

# A managed job missing from `sky jobs queue` this many polls in a row is reported lost.
MISSING_POLLS = 5
TEARDOWN_TIMEOUT_S = 900.0
API_HINT = "check the API server with `sky api status` and the cloud with `sky check`"


# ---------------------------------------------------------------------------
# The error boundary


@contextlib.contextmanager
def sdk_errors(sdk: Any, what: str, *, hint: str = API_HINT) -> Iterator[None]:
    """Map whatever a SkyPilot SDK call in the block raises to :class:`BackendCallError`.

    ``ClusterNotUpError`` and ``ClusterDoesNotExist`` are answers ("that cluster is gone",
    ``gone=True``); everything else is a failed call. autoswarm's own errors (a nested
    boundary's BackendCallError) pass through unchanged.
    """
    try:
        yield
    except AutoswarmError:
        raise  # a nested boundary's BackendCallError, or autoswarm's own error: as it is
    except (sdk.exceptions.ClusterNotUpError, sdk.exceptions.ClusterDoesNotExist) as e:
        raise BackendCallError(what, e, hint=hint, gone=True) from e
    except Exception as e:
        # The one broad except of the SkyPilot backend's calls: `sky.get` re-raises
        # whatever the API server raised (deserialized: any type), the client raises
        # requests' and pydantic's errors, and SkyPilot's 50-odd exceptions share no
        # base class. Each is a failed call the backend turns into data, never a crash.
        raise BackendCallError(what, e, hint=hint) from e


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


def _records(reply: Any) -> Any:
    """The records of a ``sky.jobs.queue_v2`` reply (a tuple in 0.14, a list before)."""
    return reply[0] if isinstance(reply, tuple) else reply


@dataclass
class Tracked:
    """Mutable bookkeeping of one experiment (internal; results go out as RunResult)."""

    job: Job
    tier: SkyTier
    cluster: str  # "" in jobs mode
    name: str
    submitted_at: float
    state: SkyState = SkyState.LAUNCHING
    job_id: int | None = None
    launch: Future[Any] | None = None  # the launch, while it is in flight
    first_running: float | None = None
    running_since: float | None = None
    attempts: int = 0  # (re)launches after the first: preemptions and launch failures
    recoveries: int = 0  # managed jobs: SkyPilot's recovery_count
    missing: int = 0  # managed jobs: polls in a row without a record
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


@dataclass(frozen=True)
class Handle:
    """A parsed experiment handle (what :meth:`Tracked.handle` wrote, as JSON)."""

    mode: str
    cluster: str
    name: str
    job_id: int | None

    @classmethod
    def parse(cls, text: str | None) -> Handle | None:
        """The handle, or None if ``text`` is not a SkyPilot handle of a known mode."""
        try:
            return cls.of(json.loads(text or ""))
        except (TypeError, ValueError):
            return None

    @classmethod
    def of(cls, info: Any) -> Handle | None:
        """The handle a decoded record (a dict of the state file) is, or None."""
        if not isinstance(info, dict) or info.get("backend") != "skypilot":
            return None
        if info.get("mode") not in MODES:
            return None
        jid = info.get("job_id")
        return cls(
            mode=str(info["mode"]),
            cluster=str(info.get("cluster") or ""),
            name=str(info.get("name") or ""),
            job_id=int(jid) if isinstance(jid, int) and not isinstance(jid, bool) else None,
        )


@dataclass(frozen=True)
class Seen:
    """What one status poll saw of one experiment; the backend applies it.

    ``state`` is RUNNING; PREEMPTED (its cluster is gone: the backend relaunches);
    RECOVERING (SkyPilot recovers it: the backend waits); or a finished state.
    ``why`` is the reason (a preemption's, a failure's).
    """

    state: SkyState
    why: str = ""


# ---------------------------------------------------------------------------
# The interface


class Mode(Protocol):
    """The SDK calls of one mode. Calls raise only :class:`BackendCallError`."""

    name: str

    def cluster(self, slot_cluster: str) -> str:
        """The cluster an experiment of a slot runs on ("" if the mode owns none)."""
        ...

    def launch(self, t: Tracked, task: Any, *, relaunch: bool) -> Callable[[], Any]:
        """The call that starts ``t`` (run in the backend's pool; returns its reply)."""
        ...

    def launched(self, t: Tracked, reply: Any) -> None:
        """Record what a launch of ``t`` returned (its job id)."""
        ...

    def lost(self, t: Tracked) -> None:
        """``t``'s launch failed or its cluster went away: do not reuse that cluster."""
        ...

    def observe(self, items: Sequence[Tracked]) -> list[tuple[Tracked, Seen]]:
        """One status poll of experiments with a job id; a failed poll sees nothing."""
        ...

    def cancel(self, t: Tracked) -> None:
        """Cancel ``t``'s job."""
        ...

    def logs(self, t: Tracked, out: io.StringIO) -> None:
        """Write ``t``'s log (so far) to ``out``."""
        ...

    def lookup(self, h: Handle) -> tuple[int | None, SkyState | None]:
        """(job id, state) of the job ``h`` names, by id or else by name; (None, None) if gone."""
        ...

    def adopt(self, t: Tracked) -> None:
        """``t``, started by an earlier orchestrator, is this process's now (``--resume``)."""
        ...

    def cancel_orphan(self, h: Handle) -> None:
        """Cancel the job ``h`` names (an earlier orchestrator's)."""
        ...

    def release(self, h: Handle) -> None:
        """What ``autoswarm down`` does to a recorded job before the clusters go down."""
        ...

    def clusters(self) -> set[str]:
        """The clusters this process launched or adopted (the state file, teardown)."""
        ...

    def teardown(self) -> list[str]:
        """``sky down`` this process's clusters; the names of those now gone."""
        ...


def make_mode(name: str, sdk: Any, opts: SkyOptions | None = None) -> Mode:
    """The :class:`Mode` called ``name`` ("clusters" or "jobs")."""
    return _MODE_CLASSES[name](sdk, opts)


# ---------------------------------------------------------------------------
# clusters: one long-lived cluster per slot


class ClustersMode:
    """``sky.launch`` once per slot's cluster, then ``sky.exec``; relaunch when it is gone."""

    name = "clusters"

    def __init__(self, sdk: Any, opts: SkyOptions | None = None) -> None:
        self.sdk = sdk
        self.autostop = (opts.idle_minutes_to_autostop if opts else 0) or None
        self._ready: set[str] = set()  # clusters known UP in this process (sky.exec works)
        self._launched: set[str] = set()  # clusters this process launched or adopted
        self._lock = threading.RLock()

    def cluster(self, slot_cluster: str) -> str:
        return slot_cluster

    def launch(self, t: Tracked, task: Any, *, relaunch: bool) -> Callable[[], Any]:
        sdk, cluster, autostop = self.sdk, t.cluster, self.autostop
        with self._lock:
            reuse = cluster in self._ready and not relaunch
            if not reuse:
                self._launched.add(cluster)

        def reuse_it() -> Any:
            with sdk_errors(sdk, f"`sky exec` on {cluster}"):
                return sdk.get(sdk.exec(task, cluster_name=cluster))

        def provision() -> Any:
            if relaunch:  # a preempted cluster: clear its record, then provision anew
                with (
                    contextlib.suppress(BackendCallError),
                    sdk_errors(sdk, f"`sky down {cluster}`"),
                ):
                    sdk.get(sdk.down(cluster))
            with sdk_errors(sdk, f"`sky launch` of {cluster}"):
                return sdk.get(
                    sdk.launch(task, cluster_name=cluster, idle_minutes_to_autostop=autostop)
                )

        return reuse_it if reuse else provision

    def launched(self, t: Tracked, reply: Any) -> None:
        t.job_id = int(reply[0])
        with self._lock:
            self._ready.add(t.cluster)

    def lost(self, t: Tracked) -> None:
        with self._lock:
            self._ready.discard(t.cluster)

    def observe(self, items: Sequence[Tracked]) -> list[tuple[Tracked, Seen]]:
        seen: list[tuple[Tracked, Seen]] = []
        for t in items:
            try:
                with sdk_errors(self.sdk, f"the status of {t.name} on {t.cluster}"):
                    statuses = self.sdk.get(self.sdk.job_status(t.cluster, [t.job_id]))
            except BackendCallError as e:
                if e.gone:
                    seen.append(
                        (t, Seen(SkyState.PREEMPTED, f"cluster {t.cluster} is gone: {e.reason}"))
                    )
                else:  # the API server hiccuped: try again next poll
                    log.warning("skypilot: %s", e)
                continue
            name = _status_name(statuses.get(t.job_id))
            if not name or name == "FAILED_DRIVER":
                why = f"job {t.job_id} on {t.cluster} lost its node ({name or 'gone'})"
                seen.append((t, Seen(SkyState.PREEMPTED, why)))
                continue
            state = _CLUSTER_STATUS.get(name, SkyState.LAUNCHING)
            if state is SkyState.RUNNING or state.is_finished():
                why = "setup failed on the cluster (see the log)" if name == "FAILED_SETUP" else ""
                seen.append((t, Seen(state, why)))
        return seen

    def cancel(self, t: Tracked) -> None:
        with sdk_errors(self.sdk, f"`sky cancel {t.cluster} {t.job_id}`"):
            self.sdk.get(self.sdk.cancel(t.cluster, job_ids=[t.job_id]))

    def logs(self, t: Tracked, out: io.StringIO) -> None:
        with sdk_errors(self.sdk, f"the log of job {t.job_id} on {t.cluster}"):
            self.sdk.tail_logs(t.cluster, t.job_id, follow=False, output_stream=out)

    def lookup(self, h: Handle) -> tuple[int | None, SkyState | None]:
        if not h.cluster:
            return None, None
        sdk, job_id = self.sdk, h.job_id
        try:
            with sdk_errors(sdk, f"the job {h.name} on {h.cluster}"):
                if job_id is None:
                    records = sdk.get(sdk.queue(h.cluster))
                    ids = [
                        int(_field(r, "job_id")) for r in records if _field(r, "job_name") == h.name
                    ]
                    if not ids:
                        return None, None
                    job_id = max(ids)
                statuses = sdk.get(sdk.job_status(h.cluster, [job_id]))
        except BackendCallError as e:
            if e.gone:
                return None, None
            raise
        name = _status_name(statuses.get(job_id))
        if not name or name == "FAILED_DRIVER":
            return None, None
        return job_id, _CLUSTER_STATUS.get(name)

    def adopt(self, t: Tracked) -> None:
        if t.cluster:
            with self._lock:
                self._ready.add(t.cluster)
                self._launched.add(t.cluster)

    def cancel_orphan(self, h: Handle) -> None:
        jid, _ = self.lookup(h)
        if jid is not None:
            with sdk_errors(self.sdk, f"`sky cancel {h.cluster} {jid}`"):
                self.sdk.get(self.sdk.cancel(h.cluster, job_ids=[jid]))

    def release(self, h: Handle) -> None:
        pass  # its cluster goes down with the others, and the job with it

    def clusters(self) -> set[str]:
        with self._lock:
            return set(self._launched)

    def teardown(self) -> list[str]:
        downed = down_clusters(self.sdk, sorted(self.clusters()))
        with self._lock:
            self._launched -= set(downed)
            self._ready -= set(downed)
        return downed


# ---------------------------------------------------------------------------
# jobs: managed jobs, recovered by SkyPilot's controller


class JobsMode:
    """``sky.jobs.launch`` per experiment; SkyPilot recovers preemptions itself."""

    name = "jobs"

    def __init__(self, sdk: Any, opts: SkyOptions | None = None) -> None:
        self.sdk = sdk

    def cluster(self, slot_cluster: str) -> str:
        return ""

    def launch(self, t: Tracked, task: Any, *, relaunch: bool) -> Callable[[], Any]:
        sdk, name = self.sdk, t.name

        def go() -> Any:
            with sdk_errors(sdk, f"`sky jobs launch` of {name}"):
                return sdk.get(sdk.jobs.launch(task, name=name))

        return go

    def launched(self, t: Tracked, reply: Any) -> None:
        ids = reply[0] if isinstance(reply, tuple) else reply
        t.job_id = int(ids[0])

    def lost(self, t: Tracked) -> None:
        pass  # no cluster of ours to forget

    def observe(self, items: Sequence[Tracked]) -> list[tuple[Tracked, Seen]]:
        if not items:
            return []
        try:
            with sdk_errors(self.sdk, "`sky jobs queue`"):
                reply = self.sdk.get(
                    self.sdk.jobs.queue_v2(
                        refresh=False, skip_finished=False, job_ids=[t.job_id for t in items]
                    )
                )
        except BackendCallError as e:  # try again next poll
            log.warning("skypilot: %s", e)
            return []
        by_id = {_field(r, "job_id"): r for r in _records(reply)}
        seen: list[tuple[Tracked, Seen]] = []
        for t in items:
            rec = by_id.get(t.job_id)
            if rec is None:
                t.missing += 1
                if t.missing >= MISSING_POLLS:
                    why = f"managed job {t.job_id} vanished from `sky jobs queue`"
                    seen.append((t, Seen(SkyState.FAILED, why)))
                continue
            t.missing = 0
            count = int(_field(rec, "recovery_count") or 0)
            name = _status_name(_field(rec, "status"))
            if count > t.recoveries or name == "RECOVERING":
                why = f"managed job {t.job_id} preempted; SkyPilot recovers it"
                seen.append((t, Seen(SkyState.RECOVERING, why)))
                t.recoveries = max(t.recoveries, count)
            state = _MANAGED_STATUS.get(
                name, SkyState.FAILED if name.startswith("FAILED") else None
            )
            if state is SkyState.RUNNING:
                seen.append((t, Seen(state)))
            elif state is not None and state.is_finished():
                reason = _field(rec, "failure_reason") or ""
                why = f"managed job ended {name}" + (f": {reason}" if reason else "")
                seen.append((t, Seen(state, why if name != "SUCCEEDED" else "")))
        return seen

    def cancel(self, t: Tracked) -> None:
        with sdk_errors(self.sdk, f"`sky jobs cancel {t.job_id}`"):
            self.sdk.get(self.sdk.jobs.cancel(job_ids=[t.job_id]))

    def logs(self, t: Tracked, out: io.StringIO) -> None:
        with sdk_errors(self.sdk, f"the log of managed job {t.job_id}"):
            self.sdk.jobs.tail_logs(job_id=t.job_id, follow=False, output_stream=out)

    def lookup(self, h: Handle) -> tuple[int | None, SkyState | None]:
        kwargs: dict[str, Any] = {"refresh": False, "skip_finished": False}
        if h.job_id is not None:
            kwargs["job_ids"] = [h.job_id]
        else:
            kwargs["name_match"] = h.name
        with sdk_errors(self.sdk, f"`sky jobs queue` for {h.name or h.job_id}"):
            reply = self.sdk.get(self.sdk.jobs.queue_v2(**kwargs))
            for r in _records(reply):
                if (h.job_id is not None and _field(r, "job_id") == h.job_id) or (
                    h.job_id is None and _field(r, "job_name") == h.name
                ):
                    return int(_field(r, "job_id")), _MANAGED_STATUS.get(
                        _status_name(_field(r, "status"))
                    )
        return None, None

    def adopt(self, t: Tracked) -> None:
        pass  # nothing of ours but the job

    def cancel_orphan(self, h: Handle) -> None:
        with sdk_errors(self.sdk, f"`sky jobs cancel {h.job_id or h.name}`"):
            if h.job_id is not None:
                self.sdk.get(self.sdk.jobs.cancel(job_ids=[h.job_id]))
            elif h.name:
                self.sdk.get(self.sdk.jobs.cancel(name=h.name))

    def release(self, h: Handle) -> None:
        self.cancel_orphan(h)  # a managed job has no cluster of ours to go down with

    def clusters(self) -> set[str]:
        return set()

    def teardown(self) -> list[str]:
        return []


_MODE_CLASSES: dict[str, Callable[[Any, SkyOptions | None], Mode]] = {
    ClustersMode.name: ClustersMode,
    JobsMode.name: JobsMode,
}


# ---------------------------------------------------------------------------
# Teardown


def down_clusters(sdk: Any, names: Sequence[str]) -> list[str]:
    """``sky down`` ``names`` in parallel; returns those that are gone (downed or never existed)."""
    if not names:
        return []

    def one(name: str) -> str | None:
        try:
            with sdk_errors(sdk, f"`sky down {name}`", hint="run it by hand"):
                sdk.get(sdk.down(name))
        except BackendCallError as e:
            if not e.gone:
                log.error("skypilot: %s", e)
                return None
        return name

    with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        done = list(pool.map(one, names, timeout=TEARDOWN_TIMEOUT_S))
    return [n for n in done if n is not None]


__all__ = [
    "API_HINT",
    "MISSING_POLLS",
    "ClustersMode",
    "Handle",
    "JobsMode",
    "Mode",
    "Seen",
    "SkyState",
    "Tracked",
    "down_clusters",
    "make_mode",
    "sdk_errors",
]
