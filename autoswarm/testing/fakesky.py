"""A fake of the SkyPilot SDK surface the SkyPilot backend uses, for tests without a cloud.

It stands in for the *cloud* only: tasks are real ``sky.Task`` objects (``FakeSky.Task``
is SkyPilot's class, so every task the backend launches goes through SkyPilot's own
parser), statuses are SkyPilot's own enums and records, errors are SkyPilot's own
exceptions. What it fakes is what happens on the clusters: a job "runs" for the
duration its :class:`FakeOutcome` says (on the real clock), then prints the outcome's
log followed by the exit markers the backend's run script prints.

Every SDK call is recorded in :attr:`FakeSky.calls`, and a test drives the cloud:

    fake = FakeSky(lambda task: FakeOutcome(duration=0.1, log="---\\nval_bpb: 1.0\\n"))
    fake.preempt_cluster("autoswarm-h100-0")      # a spot cluster disappears
    fake.preempt_managed(job_id, recover_after=0.2)  # a managed job recovers by itself
    fake.finish(job_id, exit_code=0, log="...")   # end a job whose duration is None
    fake.fail_next("job_status", 2)               # the API server fails the next 2 polls

Like SkyPilot 0.14's client SDK, calls return request ids that :meth:`FakeSky.get`
resolves; a failed request raises from ``get``.
"""

from __future__ import annotations

import io
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoswarm.backends.skytask import exit_marker


@dataclass(frozen=True)
class FakeOutcome:
    """What a job does on the fake cloud.

    Attributes:
        duration: seconds it runs; None = until the test calls :meth:`FakeSky.finish`.
        exit_code: exit code of the training command (0 = SUCCEEDED, else FAILED).
        log: what the training command prints (the summary block, a traceback, ...).
        setup_fails: the task's setup fails (FAILED_SETUP).
    """

    duration: float | None = 0.05
    exit_code: int = 0
    log: str = ""
    setup_fails: bool = False


def _ok_outcome(task: Any) -> FakeOutcome:
    return FakeOutcome(duration=0.05, log="---\nval_bpb: 1.000000\n")


@dataclass
class _FakeJob:
    job_id: int
    name: str
    cluster: str  # "" for a managed job
    task: Any
    outcome: FakeOutcome
    submitted_at: float
    started_at: float
    status: str = "RUNNING"  # fixed once finished, else computed from the clock
    log: str = ""
    recovery_count: int = 0
    recovering_until: float | None = None
    finished_code: int | None = None

    def refresh(self, now: float) -> None:
        if self.status not in ("RUNNING", "RECOVERING", "PENDING", "STARTING"):
            return
        if self.recovering_until is not None:
            if now < self.recovering_until:
                self.status = "RECOVERING"
                return
            self.started_at = self.recovering_until
            self.recovering_until = None
        self.status = "RUNNING"
        if self.outcome.setup_fails:
            self._end("FAILED_SETUP", 1, "setup failed: fake error\n")
            return
        d = self.outcome.duration
        if d is not None and now >= self.started_at + d:
            self._end(
                "SUCCEEDED" if self.outcome.exit_code == 0 else "FAILED",
                self.outcome.exit_code,
                self.outcome.log,
            )

    def _end(self, status: str, code: int, text: str) -> None:
        self.status = status
        self.finished_code = code
        sep = "" if not text or text.endswith("\n") else "\n"
        self.log = text + sep + exit_marker(code)


@dataclass
class _FakeCluster:
    name: str
    up: bool = True
    launches: int = 0
    setups: int = 0
    jobs: dict[int, _FakeJob] = field(default_factory=dict)


class _FakeJobs:
    """``sky.jobs``: managed jobs."""

    def __init__(self, sky: FakeSky) -> None:
        self._sky = sky

    def launch(self, task: Any, name: str | None = None, **kwargs: Any) -> str:
        s = self._sky
        with s._lock:
            s._record("jobs.launch", name=name, task=task)
            if s._launch_failures:
                s._launch_failures -= 1
                return s._fail(s.exceptions.ResourcesUnavailableError("fake: no capacity"))
            job = s._new_job(task, name or task.name or "", cluster="")
            s.managed[job.job_id] = job
            return s._ok(([job.job_id], None))

    def queue_v2(
        self,
        refresh: bool,
        skip_finished: bool = False,
        all_users: bool = False,
        job_ids: list[int] | None = None,
        **kwargs: Any,
    ) -> str:
        from sky import ManagedJobStatus
        from sky.schemas.api.responses import ManagedJobRecord

        s = self._sky
        with s._lock:
            s._record("jobs.queue_v2", job_ids=job_ids, name_match=kwargs.get("name_match"))
            if failure := s._injected("jobs.queue_v2"):
                return s._fail(failure)
            now = time.monotonic()
            records = []
            for job in s.managed.values():
                if job_ids is not None and job.job_id not in job_ids:
                    continue
                name_match = kwargs.get("name_match")
                if name_match and name_match not in job.name:
                    continue
                job.refresh(now)
                records.append(
                    ManagedJobRecord(
                        _job_id=job.job_id,
                        job_id=job.job_id,
                        job_name=job.name,
                        task_name=job.name,
                        status=ManagedJobStatus(job.status),
                        recovery_count=job.recovery_count,
                        submitted_at=job.submitted_at,
                    )
                )
            return s._ok((records, len(records), {}, len(s.managed)))

    def cancel(
        self, name: str | None = None, job_ids: list[int] | None = None, **kwargs: Any
    ) -> str:
        s = self._sky
        with s._lock:
            s._record("jobs.cancel", name=name, job_ids=job_ids)
            if failure := s._injected("jobs.cancel"):
                return s._fail(failure)
            for job in s.managed.values():
                if (job_ids and job.job_id in job_ids) or (name and job.name == name):
                    job.refresh(time.monotonic())
                    if job.status in ("RUNNING", "RECOVERING", "PENDING", "STARTING"):
                        job.status = "CANCELLED"
                        job.log = "cancelled\n"
            return s._ok(None)

    def tail_logs(
        self,
        name: str | None = None,
        job_id: int | None = None,
        follow: bool = True,
        controller: bool = False,
        refresh: bool = False,
        tail: int | None = None,
        output_stream: io.TextIOBase | None = None,
        **kwargs: Any,
    ) -> int | None:
        s = self._sky
        with s._lock:
            s._record("jobs.tail_logs", job_id=job_id, follow=follow)
            if failure := s._injected("jobs.tail_logs"):
                raise failure
            job = s.managed.get(job_id or -1)
            if job is None:
                return 102
            job.refresh(time.monotonic())
            if output_stream is not None:
                output_stream.write(job.log)
            return 0 if job.status == "SUCCEEDED" else 100


class FakeSky:
    """The subset of the ``sky`` module the backend calls. See the module docstring."""

    def __init__(
        self, outcome: Callable[[Any], FakeOutcome] = _ok_outcome, *, get_latency_s: float = 0.0
    ) -> None:
        import sky
        import sky.exceptions

        self.Task = sky.Task
        self.exceptions = sky.exceptions
        self.outcome = outcome
        self.get_latency_s = get_latency_s
        self.jobs = _FakeJobs(self)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.clusters: dict[str, _FakeCluster] = {}
        self.managed: dict[int, _FakeJob] = {}
        self._lock = threading.RLock()
        self._requests: dict[str, tuple[bool, Any]] = {}
        self._rid = itertools.count(1)
        self._job_ids = itertools.count(1)
        self._launch_failures = 0
        self._failures: dict[str, list[BaseException]] = {}

    # -- bookkeeping ---------------------------------------------------------------

    def _record(self, fn: str, **kwargs: Any) -> None:
        self.calls.append((fn, kwargs))

    def _ok(self, value: Any) -> str:
        rid = f"req-{next(self._rid)}"
        self._requests[rid] = (True, value)
        return rid

    def _fail(self, exc: BaseException) -> str:
        rid = f"req-{next(self._rid)}"
        self._requests[rid] = (False, exc)
        return rid

    def _new_job(self, task: Any, name: str, *, cluster: str) -> _FakeJob:
        now = time.monotonic()
        return _FakeJob(
            job_id=next(self._job_ids),
            name=name,
            cluster=cluster,
            task=task,
            outcome=self.outcome(task),
            submitted_at=time.time(),
            started_at=now,
        )

    def _injected(self, fn: str) -> BaseException | None:
        """The failure :meth:`fail_next` queued for the next call of ``fn``, if any."""
        queued = self._failures.get(fn)
        return queued.pop(0) if queued else None

    def called(self, fn: str) -> list[dict[str, Any]]:
        """The keyword arguments of every recorded call of ``fn`` (e.g. ``"exec"``)."""
        with self._lock:
            return [kw for name, kw in self.calls if name == fn]

    # -- the SDK -------------------------------------------------------------------

    def get(self, request_id: str) -> Any:
        if self.get_latency_s:
            time.sleep(self.get_latency_s)
        with self._lock:
            ok, value = self._requests.pop(request_id)
        if not ok:
            raise value
        return value

    def launch(self, task: Any, cluster_name: str | None = None, **kwargs: Any) -> str:
        with self._lock:
            self._record("launch", cluster_name=cluster_name, task=task, **kwargs)
            if self._launch_failures:
                self._launch_failures -= 1
                return self._fail(self.exceptions.ResourcesUnavailableError("fake: no capacity"))
            name = cluster_name or f"sky-{next(self._rid)}"
            c = self.clusters.get(name)
            if c is None or not c.up:
                c = _FakeCluster(name=name, jobs=c.jobs if c else {})
                self.clusters[name] = c
                c.launches += 1
            c.setups += 1
            job = self._new_job(task, task.name or "", cluster=name)
            c.jobs[job.job_id] = job
            return self._ok((job.job_id, None))

    def exec(self, task: Any, cluster_name: str | None = None, **kwargs: Any) -> str:
        with self._lock:
            self._record("exec", cluster_name=cluster_name, task=task)
            c = self.clusters.get(cluster_name or "")
            if c is None:
                return self._fail(self.exceptions.ClusterDoesNotExist(f"{cluster_name} not found"))
            if not c.up:
                return self._fail(self.exceptions.ClusterNotUpError(f"{cluster_name} is not up"))
            job = self._new_job(task, task.name or "", cluster=c.name)
            c.jobs[job.job_id] = job
            return self._ok((job.job_id, None))

    def _cluster(self, name: str) -> _FakeCluster | BaseException:
        c = self.clusters.get(name)
        if c is None:
            return self.exceptions.ClusterDoesNotExist(f"cluster {name} does not exist")
        if not c.up:
            return self.exceptions.ClusterNotUpError(f"cluster {name} is not up")
        return c

    def job_status(self, cluster_name: str, job_ids: list[int] | None = None) -> str:
        from sky import JobStatus

        with self._lock:
            self._record("job_status", cluster_name=cluster_name, job_ids=job_ids)
            if failure := self._injected("job_status"):
                return self._fail(failure)
            c = self._cluster(cluster_name)
            if isinstance(c, BaseException):
                return self._fail(c)
            now = time.monotonic()
            out: dict[int | None, Any] = {}
            for jid in job_ids or []:
                job = c.jobs.get(jid)
                if job is None:
                    out[jid] = None
                    continue
                job.refresh(now)
                out[jid] = JobStatus(job.status)
            return self._ok(out)

    def queue(self, cluster_name: str, skip_finished: bool = False, all_users: bool = False) -> str:
        from sky import JobStatus
        from sky.schemas.api.responses import ClusterJobRecord

        with self._lock:
            self._record("queue", cluster_name=cluster_name)
            c = self._cluster(cluster_name)
            if isinstance(c, BaseException):
                return self._fail(c)
            now = time.monotonic()
            records = []
            for job in c.jobs.values():
                job.refresh(now)
                records.append(
                    ClusterJobRecord(
                        job_id=job.job_id,
                        job_name=job.name,
                        username="fake",
                        user_hash="fake",
                        submitted_at=job.submitted_at,
                        resources="fake",
                        status=JobStatus(job.status),
                        log_path="",
                    )
                )
            return self._ok(records)

    def tail_logs(
        self,
        cluster_name: str,
        job_id: int | None,
        follow: bool,
        tail: int = 0,
        output_stream: io.TextIOBase | None = None,
        **kwargs: Any,
    ) -> int:
        with self._lock:
            self._record("tail_logs", cluster_name=cluster_name, job_id=job_id, follow=follow)
            if failure := self._injected("tail_logs"):
                raise failure
            c = self._cluster(cluster_name)
            if isinstance(c, BaseException):
                raise c
            job = c.jobs.get(job_id or -1)
            if job is None:
                return 102
            job.refresh(time.monotonic())
            if output_stream is not None:
                output_stream.write(job.log)
            return 0 if job.status == "SUCCEEDED" else 100

    def cancel(self, cluster_name: str, job_ids: list[int] | None = None, **kwargs: Any) -> str:
        with self._lock:
            self._record("cancel", cluster_name=cluster_name, job_ids=job_ids)
            if failure := self._injected("cancel"):
                return self._fail(failure)
            c = self._cluster(cluster_name)
            if isinstance(c, BaseException):
                return self._fail(c)
            for jid in job_ids or []:
                job = c.jobs.get(jid)
                if job is not None:
                    job.refresh(time.monotonic())
                    if job.status in ("RUNNING", "PENDING"):
                        job.status = "CANCELLED"
                        job.log = "cancelled\n"
            return self._ok(None)

    def down(self, cluster_name: str, purge: bool = False, **kwargs: Any) -> str:
        with self._lock:
            self._record("down", cluster_name=cluster_name)
            if failure := self._injected("down"):
                return self._fail(failure)
            c = self.clusters.pop(cluster_name, None)
            if c is None:
                return self._fail(self.exceptions.ClusterDoesNotExist(f"{cluster_name} not found"))
            return self._ok(None)

    # -- driving the cloud from a test -----------------------------------------

    def fail_next_launches(self, n: int) -> None:
        """The next ``n`` launches (cluster or managed) fail with ResourcesUnavailableError."""
        with self._lock:
            self._launch_failures = n

    def fail_next(self, fn: str, n: int = 1, error: BaseException | None = None) -> None:
        """The next ``n`` calls of ``fn`` fail with ``error`` (default: the API server is down).

        ``fn`` is one of job_status, tail_logs, cancel, down, jobs.queue_v2, jobs.cancel,
        jobs.tail_logs. Like the real client, a request's failure raises from ``get``
        (the log calls, which answer directly, raise at once).
        """
        with self._lock:
            self._failures.setdefault(fn, []).extend(
                error or ConnectionError("fake: could not reach the API server") for _ in range(n)
            )

    def preempt_cluster(self, name: str) -> None:
        """The cluster's instances are taken back: it is no longer UP and its jobs are gone."""
        with self._lock:
            c = self.clusters[name]
            c.up = False
            for job in c.jobs.values():
                job.refresh(time.monotonic())
                if job.status == "RUNNING":
                    job.status = "FAILED_DRIVER"

    def preempt_managed(self, job_id: int, *, recover_after: float = 0.1) -> None:
        """A managed job loses its spot instance; SkyPilot recovers it after ``recover_after`` s."""
        with self._lock:
            job = self.managed[job_id]
            job.recovery_count += 1
            job.recovering_until = time.monotonic() + recover_after
            job.status = "RECOVERING"

    def finish(self, job_id: int, *, exit_code: int = 0, log: str = "") -> None:
        """End a running job (cluster or managed) now."""
        with self._lock:
            job = self.managed.get(job_id) or next(
                c.jobs[job_id] for c in self.clusters.values() if job_id in c.jobs
            )
            job._end("SUCCEEDED" if exit_code == 0 else "FAILED", exit_code, log)

    def job_by_name(self, name: str) -> _FakeJob:
        """The newest job (cluster or managed) with this name."""
        with self._lock:
            found = [j for j in self.managed.values() if j.name == name] + [
                j for c in self.clusters.values() for j in c.jobs.values() if j.name == name
            ]
            if not found:
                raise KeyError(name)
            return max(found, key=lambda j: j.job_id)


__all__ = ["FakeOutcome", "FakeSky"]
