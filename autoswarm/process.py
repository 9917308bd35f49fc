"""The one way autoswarm starts an untrusted process, times it out, kills it and logs it.

Experiments (train.py on the local backend and in a Ray slot actor) and coding-agent
CLIs all run code nobody reviewed. All of them start here, and get the same treatment:

- an argv list (never a shell), a working directory and an environment built from an
  allowlist (:func:`autoswarm.sandbox.allowed_env`), plus the names a caller lets
  through on purpose (an agent CLI's own API key, ``[sandbox] pass_env``);
- with a :class:`~autoswarm.sandbox.Sandbox`, bubblewrap around it: its own PID and
  mount namespaces, only its run directory writable (see :mod:`autoswarm.sandbox`);
- their own session, hence their own process group, so that a kill takes the children
  too; when the main process exits, whatever it left in its group is killed;
- a hard timeout that SIGKILLs the whole group; a cancel sends SIGTERM, then SIGKILL
  after a grace period;
- stdout and stderr together in a log file capped in size (:class:`CappedLog`): the
  first part is kept, then only the last part, because the summary block and the
  traceback are always at the end;
- at the end a frozen :class:`ProcessResult`: exit code, timed out, cancelled, times,
  log path, whether the log was cut. A process that cannot start is a result too.

How to use it::

    runner = ProcessRunner()
    spec = ProcessSpec(argv=("python", "train.py"), cwd=work, env=os.environ,
                       log_path=work / "run.log", timeout_s=300)
    result = runner.run(spec)                        # blocking, or:
    proc = runner.start(spec, on_exit=print)         # at once; later proc.wait() / proc.cancel()
    runner.close()                                   # kills what still runs

:func:`spawn` is the only place where a process is created: the sandbox of a later
issue (bubblewrap and the like) goes there.

Threads: each process has a watcher that blocks in ``waitpid`` and a pump that copies
its pipe into the log, both on daemon threads the runner reuses from process to
process, and one thread per runner enforces every deadline. A thread per process would
cost the caller an interpreter-lock handshake on its dispatch path, and
``Popen.wait(timeout=...)`` wakes every 50 ms to poll: with hundreds of slots both
fight the scheduler for the interpreter lock.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import functools
import heapq
import itertools
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO

from autoswarm.sandbox import (
    Sandbox,
    allowed_env,
    bwrap_argv,
    find_bwrap,
    kill_group,
    process_start_time,
)

DEFAULT_LOG_MAX_BYTES = 2_000_000  # the default of [run] log_max_bytes

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Capped log


class CappedLog:
    """Writes a stream to a file, keeping the first ``head`` bytes and the last ``tail`` bytes.

    The tail is a quarter of ``max_bytes`` (at least 8 KiB). What is dropped in between
    is replaced, on :meth:`close`, by a line ``[autoswarm: N bytes of log cut here]``.
    """

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

    @property
    def truncated(self) -> bool:
        """True once bytes were dropped (final after :meth:`close`)."""
        return self.dropped > 0

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
# What to run, and what came of it


class Ending(enum.Enum):
    """How a process ended."""

    EXITED = "exited"  # by itself, with any exit code
    CANCELLED = "cancelled"  # killed on purpose (cancel, close)
    TIMED_OUT = "timed_out"  # killed at its hard timeout
    NOT_STARTED = "not_started"  # could not be started (ProcessResult.error says why)


@dataclass(frozen=True, kw_only=True)
class ProcessSpec:
    """What to run and how. See the module docstring for what every process gets.

    Args:
        argv: the command, ``argv[0]`` looked up on the ``PATH`` of ``env``.
        cwd: its working directory.
        env: its environment before scrubbing; credential-like names are removed.
        log_path: where stdout and stderr go (created, parents too).
        timeout_s: hard timeout in seconds from the start; None for none.
        log_max_bytes: the log's cap (head and tail kept).
        pass_env: credential-like names of ``env`` that are passed on anyway.
        nice: how many ``nice`` levels below the caller it runs (0-19).
        cpus: the CPU cores it may run on (empty: the caller's).
        die_with_parent: kill it when the caller's process dies (Linux, through
            ``setpriv --pdeathsig``), so that a killed Ray worker leaves no orphan.
        sandbox: run it inside this bubblewrap view (None: environment and session
            only). An exit status of 128 + N from inside is reported as killed by
            signal N, as from a process run directly.
    """

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    log_path: Path
    timeout_s: float | None = None
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    pass_env: tuple[str, ...] = ()
    nice: int = 0
    cpus: tuple[int, ...] = ()
    die_with_parent: bool = False
    sandbox: Sandbox | None = None

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("a process needs a command: argv is empty")
        if not 0 <= self.nice <= 19:
            raise ValueError(f"nice must be between 0 and 19, got {self.nice}")
        # Frozen copies: a caller that changes its dict (or os.environ) later changes nothing.
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))


@dataclass(frozen=True, kw_only=True)
class ProcessResult:
    """What happened to one process. Failures are fields, never exceptions."""

    argv: tuple[str, ...]
    pid: int | None  # None when it never started
    exit_code: int | None  # negative: killed by that signal; None: never started
    timed_out: bool  # killed at its timeout
    cancelled: bool  # a cancel (or close) was asked for while it ran
    started_at: float  # wall clock, time.time()
    finished_at: float
    duration_s: float  # monotonic clock
    log_path: Path
    log_truncated: bool  # the log went over its cap and its middle was cut
    error: str = ""  # why it could not be started

    @property
    def ending(self) -> Ending:
        """One state, in the order a reader cares: not started, cancelled, timed out, exited."""
        if self.pid is None:
            return Ending.NOT_STARTED
        if self.cancelled:
            return Ending.CANCELLED
        if self.timed_out:
            return Ending.TIMED_OUT
        return Ending.EXITED


# ---------------------------------------------------------------------------
# The spawn: the only place a process is created


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv") if sys.platform == "linux" else None


def child_env(spec: ProcessSpec) -> dict[str, str]:
    """The environment ``spec``'s process gets: the allowlist, plus ``spec.pass_env``."""
    return allowed_env(spec.env, spec.pass_env)


def spawn(spec: ProcessSpec) -> subprocess.Popen[bytes]:
    """Start ``spec``'s process in its own session, stdout and stderr on one pipe.

    Raises:
        OSError: it could not be started (no such command, bad working directory).
    """
    env = child_env(spec)
    argv = list(spec.argv)
    setpriv = _setpriv() if spec.die_with_parent else None
    if setpriv or spec.sandbox is not None:
        # A wrapper would start, then fail to exec a missing command: say so as Popen would.
        where = os.path.join(spec.cwd, argv[0]) if os.sep in argv[0] else None
        found = where if where else shutil.which(argv[0], path=env.get("PATH", os.defpath))
        if not found or not os.access(found, os.X_OK):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    if spec.sandbox is not None:
        bwrap, why = find_bwrap()
        if bwrap is None:  # never silently weaker: the caller asked for the sandbox
            raise OSError(errno.ENOSYS, f"cannot start the sandbox: {why}")
        # bwrap's own environment is the child's: /proc/1/environ inside shows nothing more.
        argv = bwrap_argv(bwrap, spec.sandbox, argv, spec.cwd)
    if setpriv:
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    proc = subprocess.Popen(
        argv,
        cwd=spec.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own session => own process group, pgid == pid
    )
    if spec.nice and hasattr(os, "setpriority"):
        # Relative to ours (lowering it further needs no privilege); the child is still
        # starting its interpreter, and what it starts inherits the level.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.nice(0) + spec.nice))
    if spec.cpus and hasattr(os, "sched_setaffinity"):
        # Best effort: the child has not imported torch yet, so its threads inherit this.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(proc.pid, spec.cpus)
    return proc


# ---------------------------------------------------------------------------
# A started process


class RunningProcess:
    """A process :meth:`ProcessRunner.start` started: ask, wait, cancel.

    ``pid`` is None when it could not be started (it is then done at once). ``pgid``
    equals ``pid``; ``start_time`` is the kernel's start time of ``pid``, stored with it
    so that a later orchestrator kills this group and never a reused pid
    (:func:`autoswarm.sandbox.kill_orphan`).
    """

    def __init__(self, spec: ProcessSpec, runner: ProcessRunner) -> None:
        self.spec = spec
        self.pid: int | None = None
        self.start_time = ""
        self._runner = runner
        self._proc: subprocess.Popen[bytes] | None = None
        self._timed_out = False
        self._cancelled = False
        self._result: ProcessResult | None = None
        self._done = threading.Event()
        self._watched = threading.Event()  # the watcher returned (its on_exit too)

    @property
    def pgid(self) -> int | None:
        return self.pid

    @property
    def result(self) -> ProcessResult | None:
        """The result once it has finished, else None."""
        return self._result

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> ProcessResult | None:
        """The result, waiting up to ``timeout`` seconds (None: as long as it takes)."""
        self._done.wait(timeout)
        return self._result

    def cancel(self, grace_s: float = 3.0) -> None:
        """SIGTERM the group, then SIGKILL it after ``grace_s`` (at once if ``grace_s <= 0``).

        Its result says ``cancelled``. Nothing happens once it has finished.
        """
        proc = self._proc
        if proc is None or self._done.is_set():
            return
        self._cancelled = True
        if proc.returncode is not None:  # reaped: the watcher kills what is left
            return
        if grace_s <= 0:
            kill_group(proc.pid, signal.SIGKILL)
            return
        kill_group(proc.pid, signal.SIGTERM)
        self._runner._deadlines().add(time.monotonic() + grace_s, _Deadline.KILL, self)

    # -- called by the runner's threads ----------------------------------------

    def _at_deadline(self, kind: _Deadline) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:  # the watcher has reaped it
            return
        if kind is _Deadline.TIMEOUT:
            self._timed_out = True
        kill_group(proc.pid, signal.SIGKILL)

    def _finish(self, result: ProcessResult) -> None:
        self._result = result
        self._done.set()


# ---------------------------------------------------------------------------
# The runner's threads


class _Workers:
    """Daemon threads reused from task to task for the blocking waits (``waitpid``, pipe reads).

    Workers are daemons, so a pipe held open by an escaped grandchild never blocks exit.
    """

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[[], None], threading.Event] | None] = (
            queue.SimpleQueue()
        )
        self._idle = 0
        self._threads = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> threading.Event:
        """Run ``fn`` on a worker; the event is set when it returns."""
        done = threading.Event()
        with self._lock:
            spawn_one = self._idle == 0
            if spawn_one:
                self._threads += 1
            else:
                self._idle -= 1
        self._tasks.put((fn, done))
        if spawn_one:
            threading.Thread(target=self._work, daemon=True, name="autoswarm-process").start()
        return done

    def close(self) -> None:
        """Let every worker exit once the tasks already queued are done."""
        with self._lock:
            n = self._threads
        for _ in range(n):
            self._tasks.put(None)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            fn, done = task
            try:
                fn()
            except Exception:  # a bug: report it, keep the worker
                log.exception("autoswarm process runner worker failed")
            finally:
                done.set()
            with self._lock:
                self._idle += 1


class _Deadline(enum.Enum):
    TIMEOUT = "timeout"  # the hard timeout: SIGKILL, and the result says timed out
    KILL = "kill"  # a cancel's grace period is over: SIGKILL


class _Deadlines:
    """One thread that SIGKILLs each process group when its deadline passes."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Deadline, RunningProcess]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="autoswarm-deadlines")
        self._thread.start()

    def add(self, when: float, kind: _Deadline, proc: RunningProcess) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._order), kind, proc))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, kind, proc = heapq.heappop(self._heap)
                    proc._at_deadline(kind)
                # Finished processes stay in the heap until their deadline: popping is cheap.
                self._cond.wait(timeout=self._heap[0][0] - now if self._heap else None)


def _pump(stream: IO[bytes], out: CappedLog, wake: int) -> None:
    """Copy ``stream`` into ``out`` until EOF, or until a byte arrives on the fd ``wake``.

    A grandchild that escaped the process group can hold the pipe open for as long as
    it lives; the watcher then writes to ``wake`` and this returns at once (a read
    blocked on the pipe could not be interrupted, and closing the stream under it
    blocks on the stream's lock).
    """
    fd = stream.fileno()
    try:
        while True:
            ready, _, _ = select.select([fd, wake], [], [])
            if wake in ready:
                return
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            out.write(chunk)
    except (OSError, ValueError):  # the pipe broke under us
        pass


# ---------------------------------------------------------------------------
# The runner


class ProcessRunner:
    """Starts processes as :class:`ProcessSpec` says and reports a :class:`ProcessResult`.

    Thread-safe. Its threads start with the first process; :meth:`close` kills what still
    runs and stops them (a later :meth:`start` starts them again).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[RunningProcess] = set()
        self._workers_: _Workers | None = None
        self._deadlines_: _Deadlines | None = None

    def __enter__(self) -> ProcessRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(
        self, spec: ProcessSpec, *, on_exit: Callable[[ProcessResult], None] | None = None
    ) -> RunningProcess:
        """Start ``spec`` now and return at once.

        ``on_exit`` is called with the result on one of the runner's threads, after
        :meth:`RunningProcess.done` became true; also when the process could not start.

        Raises:
            OSError: the log file cannot be created (the orchestrator's disk, not the process).
        """
        out = CappedLog(spec.log_path, spec.log_max_bytes)
        p = RunningProcess(spec, self)
        started, t0 = time.time(), time.monotonic()
        try:
            proc = spawn(spec)
        except OSError as e:
            self._not_started(p, out, e, started, t0, on_exit)
            return p
        except BaseException:  # a bug or an interrupt, not the process's doing
            out.close()
            raise
        p._proc, p.pid, p.start_time = proc, proc.pid, process_start_time(proc.pid)
        assert proc.stdout is not None
        stdout = proc.stdout
        # One critical section with close(): it either sees this process (and kills it)
        # or comes later, so the threads its watch needs are never closed under it.
        with self._lock:
            self._live.add(p)
            if spec.timeout_s is not None:
                self._deadlines_locked().add(t0 + spec.timeout_s, _Deadline.TIMEOUT, p)
            workers = self._workers_locked()
            wake_r, wake_w = os.pipe()
            pumped = workers.submit(lambda: _pump(stdout, out, wake_r))
            workers.submit(
                lambda: self._watch(p, out, pumped, (wake_r, wake_w), started, t0, on_exit)
            )
        return p

    def run(self, spec: ProcessSpec) -> ProcessResult:
        """Start ``spec`` and wait for its end."""
        result = self.start(spec).wait()
        assert result is not None
        return result

    def close(self) -> None:
        """SIGKILL every process still running, wait for their results, stop the threads."""
        with self._lock:
            live = list(self._live)
            workers, self._workers_ = self._workers_, None
            deadlines, self._deadlines_ = self._deadlines_, None
        for p in live:
            p.cancel(grace_s=0)
        for p in live:
            p._watched.wait(timeout=10)
        if deadlines is not None:
            deadlines.close()
        if workers is not None:
            workers.close()

    # -- internals -------------------------------------------------------------

    def _workers_locked(self) -> _Workers:
        if self._workers_ is None:
            self._workers_ = _Workers()
        return self._workers_

    def _deadlines_locked(self) -> _Deadlines:
        if self._deadlines_ is None:
            self._deadlines_ = _Deadlines()
        return self._deadlines_

    def _deadlines(self) -> _Deadlines:
        with self._lock:
            return self._deadlines_locked()

    def _not_started(
        self,
        p: RunningProcess,
        out: CappedLog,
        e: OSError,
        started: float,
        t0: float,
        on_exit: Callable[[ProcessResult], None] | None,
    ) -> None:
        argv0 = p.spec.argv[0]
        out.write(f"autoswarm: could not start {argv0}: {e}\n".encode())
        out.close()
        result = ProcessResult(
            argv=p.spec.argv,
            pid=None,
            exit_code=None,
            timed_out=False,
            cancelled=False,
            started_at=started,
            finished_at=time.time(),
            duration_s=time.monotonic() - t0,
            log_path=p.spec.log_path,
            log_truncated=False,
            error=f"could not start {argv0}: {e}",
        )
        p._finish(result)
        if on_exit is None:
            p._watched.set()
            return
        with self._lock:
            self._workers_locked().submit(lambda: self._deliver(p, result, on_exit))

    def _watch(
        self,
        p: RunningProcess,
        out: CappedLog,
        pumped: threading.Event,
        wake: tuple[int, int],
        started: float,
        t0: float,
        on_exit: Callable[[ProcessResult], None] | None,
    ) -> None:
        proc = p._proc
        assert proc is not None and proc.stdout is not None
        proc.wait()  # blocking waitpid; the deadline thread kills the group at the timeout
        timed_out = p._timed_out
        finished, duration = time.time(), time.monotonic() - t0
        # Children that outlived the main process (dataloader workers, a sleep) go too.
        kill_group(proc.pid, signal.SIGKILL)
        if not pumped.wait(timeout=5):  # a grandchild escaped the group and holds the pipe
            os.write(wake[1], b"x")
            pumped.wait()
        for fd in wake:
            os.close(fd)
        with contextlib.suppress(OSError, RuntimeError):
            proc.stdout.close()  # now, not when its deadline entry lets go of the process
        try:
            if timed_out:
                out.write(f"\nautoswarm: killed after the {p.spec.timeout_s:g}s timeout\n".encode())
            out.close()
        except OSError as e:  # the orchestrator's disk (full?): the result must still come
            log.warning("cannot finish the log %s: %s", p.spec.log_path, e)
        code = proc.returncode
        if p.spec.sandbox is not None and code is not None and 128 < code <= 128 + 64:
            code = 128 - code  # bwrap reports a child killed by signal N as 128 + N
        result = ProcessResult(
            argv=p.spec.argv,
            pid=proc.pid,
            exit_code=code,
            timed_out=timed_out,
            cancelled=p._cancelled,
            started_at=started,
            finished_at=finished,
            duration_s=duration,
            log_path=p.spec.log_path,
            log_truncated=out.truncated,
        )
        with self._lock:
            self._live.discard(p)
        p._finish(result)
        self._deliver(p, result, on_exit)

    @staticmethod
    def _deliver(
        p: RunningProcess, result: ProcessResult, on_exit: Callable[[ProcessResult], None] | None
    ) -> None:
        try:
            if on_exit is not None:
                on_exit(result)
        finally:
            p._watched.set()


__all__ = [
    "DEFAULT_LOG_MAX_BYTES",
    "CappedLog",
    "Ending",
    "ProcessResult",
    "ProcessRunner",
    "ProcessSpec",
    "RunningProcess",
    "child_env",
    "spawn",
]
