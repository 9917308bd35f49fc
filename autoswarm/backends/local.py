"""The local backend: N slots of subprocesses on this machine (the embedded default).

With CUDA GPUs each slot owns one GPU (``CUDA_VISIBLE_DEVICES``); on CPU the cores
are split between slots (thread-count variables, and CPU affinity where the OS has
it). Each job runs in its own process group with a hard timeout that kills the
whole group, and its output goes to a log file capped in size: the first part is
kept, then only the last ``tail`` bytes, because the summary block and the
traceback are always at the end.

Experiments run ``nice`` levels below the orchestrator (10 by default): on a
machine whose cores the experiments saturate (CPU training, or hundreds of
interpreters starting at once) the scheduler still gets the CPU it needs to
collect results and start the next jobs promptly. Between experiments it changes
nothing, since they all run at the same level.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from autoswarm.errors import BackendError
from autoswarm.metrics import parse_summary, read_tail
from autoswarm.sandbox import kill_group, kill_orphan, process_start_time
from autoswarm.types import Job, RunResult

# ---------------------------------------------------------------------------
# Hardware discovery


def detect_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def usable_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class SlotPlan:
    """What each slot gets: a GPU, or a set of CPU cores and a thread count."""

    gpu: str | None
    cores: tuple[int, ...]
    threads: int


def plan_slots(
    workers: int, *, threads_per_worker: int = 1, gpus: Sequence[str] | None = None
) -> list[SlotPlan]:
    """Split the machine between ``workers`` slots (0 = automatic).

    GPUs: one slot per GPU (asking for more slots than GPUs is an error). CPU: the
    usable cores are divided evenly; each slot gets its own cores and as many threads.
    """
    gpus = detect_gpus() if gpus is None else list(gpus)
    cores = usable_cores()
    if gpus:
        n = workers or len(gpus)
        if n > len(gpus):
            raise BackendError(
                f"{n} workers asked for but only {len(gpus)} GPU(s) are visible: "
                f"use --workers {len(gpus)} or fewer"
            )
        per = max(1, len(cores) // n)
        return [
            SlotPlan(
                gpu=gpus[i],
                cores=tuple(cores[i * per : (i + 1) * per]) or tuple(cores),
                threads=per,
            )
            for i in range(n)
        ]
    n = workers or max(1, len(cores) // threads_per_worker)
    per = max(1, len(cores) // n) if workers else threads_per_worker
    plans = []
    for i in range(n):
        chunk = tuple(cores[(i * per) % len(cores) : (i * per) % len(cores) + per])
        plans.append(
            SlotPlan(gpu=None, cores=chunk or tuple(cores), threads=max(1, len(chunk) or per))
        )
    return plans


# ---------------------------------------------------------------------------
# Capped log writer


class CappedLog:
    """Writes a stream to a file, keeping the first ``head`` bytes and the last ``tail`` bytes."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.tail_cap = max(8_192, max_bytes // 4)
        self.head_cap = max_bytes - self.tail_cap
        self.written = 0
        self.dropped = 0
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_len = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[bytes] = path.open("wb")

    def write(self, chunk: bytes) -> None:
        room = self.head_cap - self.written
        if room > 0:
            head, chunk = chunk[:room], chunk[room:]
            self._f.write(head)
            self._f.flush()
            self.written += len(head)
        if chunk:
            self._tail.append(chunk)
            self._tail_len += len(chunk)
            while self._tail_len - len(self._tail[0]) >= self.tail_cap:
                old = self._tail.popleft()
                self._tail_len -= len(old)
                self.dropped += len(old)

    def close(self) -> None:
        if self._tail:
            data = b"".join(self._tail)
            extra = max(0, len(data) - self.tail_cap)
            self.dropped += extra
            data = data[extra:]
            if self.dropped:
                self._f.write(f"\n[autoswarm: {self.dropped} bytes of log cut here]\n".encode())
            self._f.write(data)
        self._f.close()


# ---------------------------------------------------------------------------
# The backend


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen[bytes]
    started_at: float
    cancelled: threading.Event
    timed_out: threading.Event
    watched: threading.Event  # set when the watcher has delivered the result


class _Workers:
    """Daemon threads reused from job to job for the blocking waits (``waitpid``, log reads).

    Starting a thread per job would cost the scheduler an interpreter-lock handshake on
    the dispatch path; a task handed to an idle worker costs a queue put. Workers are
    daemons, so a log pipe held open by an escaped grandchild never blocks exit.
    """

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> threading.Event:
        """Run ``fn`` on a worker; the event is set when it returns."""
        done = threading.Event()
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._tasks.put((fn, done))
        if spawn:
            threading.Thread(target=self._work, daemon=True, name="autoswarm-worker").start()
        return done

    def _work(self) -> None:
        while True:
            fn, done = self._tasks.get()
            try:
                fn()
            except Exception:  # a bug: report it, keep the worker
                logging.getLogger(__name__).exception("autoswarm local backend worker failed")
            finally:
                done.set()
            with self._lock:
                self._idle += 1


class _Deadlines:
    """One thread that kills each job's process group when its timeout passes.

    Each job's watcher blocks in ``waitpid`` (no polling): ``Popen.wait(timeout=...)``
    would wake every job's thread every 50 ms to poll, and with hundreds of slots those
    wake-ups fight the scheduler for the interpreter lock and slow down dispatch.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Running]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="autoswarm-deadlines")
        self._thread.start()

    def add(self, running: _Running) -> None:
        deadline = time.monotonic() + running.job.timeout_s
        with self._cond:
            heapq.heappush(self._heap, (deadline, id(running), running))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, running = heapq.heappop(self._heap)
                    if running.proc.returncode is None:  # the watcher has not reaped it
                        running.timed_out.set()
                        kill_group(running.proc.pid, signal.SIGKILL)
                # Finished jobs stay in the heap until their deadline: popping them is cheap.
                self._cond.wait(timeout=self._heap[0][0] - now if self._heap else None)


class LocalBackend:
    """Subprocess slots on this machine. See the module docstring."""

    def __init__(
        self,
        workers: int = 0,
        *,
        threads_per_worker: int = 1,
        gpus: Sequence[str] | None = None,
        log_max_bytes: int = 2_000_000,
        kill_grace_s: float = 3.0,
        nice: int = 10,
    ) -> None:
        if not 0 <= nice <= 19:
            raise BackendError(f"nice must be between 0 and 19, got {nice}")
        self.nice = nice
        self.plans = plan_slots(workers, threads_per_worker=threads_per_worker, gpus=gpus)
        self.log_max_bytes = log_max_bytes
        self.kill_grace_s = kill_grace_s
        self._results: queue.Queue[RunResult] = queue.Queue()
        self._running: dict[int, _Running] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._deadlines = _Deadlines()
        self._workers = _Workers()

    # -- protocol ------------------------------------------------------------

    def capacity(self) -> int:
        return len(self.plans)

    def submit(self, job: Job) -> str:
        if self._closed:
            raise BackendError("the local backend is closed")
        if not 0 <= job.slot < len(self.plans):
            raise BackendError(f"slot {job.slot} does not exist (capacity {len(self.plans)})")
        plan = self.plans[job.slot]
        env = dict(job.env)
        env["PYTHONUNBUFFERED"] = "1"
        if plan.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = plan.gpu
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
        t = str(plan.threads)
        env.update(
            OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, AUTOSWARM_THREADS=t
        )
        log = CappedLog(job.log_path, self.log_max_bytes)
        started = time.time()
        try:
            proc = subprocess.Popen(
                list(job.argv),
                cwd=job.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session => own process group, pgid == pid
            )
        except OSError as e:
            log.write(f"autoswarm: could not start {job.argv[0]}: {e}\n".encode())
            log.close()
            self._results.put(
                RunResult(
                    experiment_id=job.experiment_id,
                    exit_code=None,
                    timed_out=False,
                    started_at=started,
                    finished_at=time.time(),
                    log_path=job.log_path,
                    error=f"could not start {job.argv[0]}: {e}",
                )
            )
            return "{}"
        if self.nice and hasattr(os, "setpriority"):
            # Relative to ours (lowering it further needs no privilege); the child is
            # still starting its interpreter, and what it starts inherits the level.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.nice(0) + self.nice))
        if plan.gpu is None and plan.cores and hasattr(os, "sched_setaffinity"):
            # Best effort: the child has not imported torch yet, so its threads inherit this.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, plan.cores)
        running = _Running(
            job, proc, started, threading.Event(), threading.Event(), threading.Event()
        )
        with self._lock:
            self._running[job.experiment_id] = running
        self._deadlines.add(running)
        running.watched = self._workers.submit(lambda: self._watch(running, log))
        return json.dumps(
            {"pid": proc.pid, "pgid": proc.pid, "start": process_start_time(proc.pid)}
        )

    def poll(self, timeout: float) -> list[RunResult]:
        out: list[RunResult] = []
        try:
            out.append(
                self._results.get(timeout=max(0.0, timeout))
                if timeout > 0
                else self._results.get_nowait()
            )
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def cancel(self, experiment_id: int, handle: str | None = None) -> None:
        with self._lock:
            running = self._running.get(experiment_id)
        if running is not None:
            running.cancelled.set()
            self._terminate(running.proc.pid)
            return
        if handle:
            try:
                info = json.loads(handle)
                kill_orphan(int(info["pid"]), int(info["pgid"]), str(info.get("start", "")))
            except (ValueError, KeyError, TypeError):
                pass

    def close(self) -> None:
        self._closed = True
        with self._lock:
            running = list(self._running.values())
        for r in running:
            r.cancelled.set()
            kill_group(r.proc.pid, signal.SIGKILL)
        for r in running:
            r.watched.wait(timeout=10)
        self._deadlines.close()

    # -- internals -----------------------------------------------------------

    def _terminate(self, pgid: int) -> None:
        """SIGTERM the group, then SIGKILL it if it is still there after a grace period."""
        kill_group(pgid, signal.SIGTERM)

        def _later() -> None:
            time.sleep(self.kill_grace_s)
            kill_group(pgid, signal.SIGKILL)

        threading.Thread(target=_later, daemon=True).start()

    def _watch(self, running: _Running, log: CappedLog) -> None:
        job, proc, started, cancelled = (
            running.job,
            running.proc,
            running.started_at,
            running.cancelled,
        )
        assert proc.stdout is not None
        stdout = proc.stdout
        pumped = self._workers.submit(lambda: _pump(stdout, log))
        proc.wait()  # blocking waitpid; _Deadlines kills the group at the timeout
        timed_out = running.timed_out.is_set()
        finished = time.time()
        # Children that outlived the main process (dataloader workers, a sleep) go too.
        kill_group(proc.pid, signal.SIGKILL)
        if not pumped.wait(timeout=5):  # a grandchild escaped the group and holds the pipe
            proc.stdout.close()
            pumped.wait(timeout=5)
        if timed_out:
            log.write(f"\nautoswarm: killed after the {job.timeout_s:g}s timeout\n".encode())
        log.close()
        with self._lock:
            self._running.pop(job.experiment_id, None)
        self._results.put(
            RunResult(
                experiment_id=job.experiment_id,
                exit_code=proc.returncode,
                timed_out=timed_out,
                started_at=started,
                finished_at=finished,
                log_path=job.log_path,
                metrics=parse_summary(read_tail(job.log_path)),
                cancelled=cancelled.is_set(),
            )
        )


def _pump(stream: IO[bytes], log: CappedLog) -> None:
    try:
        while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
            log.write(chunk)
    except (OSError, ValueError):
        pass


__all__ = ["CappedLog", "LocalBackend", "SlotPlan", "detect_gpus", "plan_slots"]
