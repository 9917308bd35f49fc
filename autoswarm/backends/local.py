"""The local backend: N slots of subprocesses on this machine (the embedded default).

With CUDA GPUs each slot owns one GPU (``CUDA_VISIBLE_DEVICES``); on CPU the cores
are split between slots (thread-count variables, and CPU affinity where the OS has
it). Each job is started by :mod:`autoswarm.process`: an allowlisted environment, the
run's sandbox (bubblewrap: own PID and mount namespaces, only the job's run directory
writable; see :mod:`autoswarm.sandbox`) where it works, its own process group with a
hard timeout that kills the whole group, and its output in a log file capped in size
(the first part is kept, then only the last part, because the summary block and the
traceback are always at the end).

Experiments run ``nice`` levels below the orchestrator (10 by default): on a
machine whose cores the experiments saturate (CPU training, or hundreds of
interpreters starting at once) the scheduler still gets the CPU it needs to
collect results and start the next jobs promptly. Between experiments it changes
nothing, since they all run at the same level.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

from autoswarm.backends.base import drain
from autoswarm.errors import BackendError
from autoswarm.evaluation import (
    eval_dir,
    evaluation_env,
    evaluation_view,
    outcome,
    remove_evaluator,
    should_evaluate,
    training_env,
    training_view,
    write_evaluator,
)
from autoswarm.metrics import parse_summary, read_tail
from autoswarm.process import ProcessResult, ProcessRunner, ProcessSpec, RunningProcess
from autoswarm.sandbox import Sandbox, kill_orphan
from autoswarm.types import EvalOutcome, Job, RunResult

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


def oversubscribed(plans: Sequence[SlotPlan], cores: int) -> str:
    """A note when CPU slots outnumber the cores ('' when they do not, or on GPUs)."""
    cpu = [p for p in plans if p.gpu is None]
    if cores <= 0 or len(cpu) <= cores:
        return ""
    return (
        f"note: {len(cpu)} slots share {cores} CPU core(s): each experiment gets about "
        f"1/{len(cpu) / cores:.3g} of a core, and its budget buys that fraction of the steps; "
        f"--workers {cores} gives each slot a core of its own"
    )


# ---------------------------------------------------------------------------
# The backend


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
        sandbox: Sandbox | None = None,
        pass_env: Sequence[str] = (),
    ) -> None:
        if not 0 <= nice <= 19:
            raise BackendError(f"nice must be between 0 and 19, got {nice}")
        self.nice = nice
        self.sandbox = sandbox  # None: allowlisted environment and own session only
        self.pass_env = tuple(pass_env)
        self.plans = plan_slots(workers, threads_per_worker=threads_per_worker, gpus=gpus)
        self.log_max_bytes = log_max_bytes
        self.kill_grace_s = kill_grace_s
        self._results: queue.Queue[RunResult] = queue.Queue()
        self._running: dict[int, RunningProcess] = {}  # training, then its evaluation
        self._cancels: set[int] = set()  # cancelled while running
        self._lock = threading.Lock()
        self._closed = False
        self._runner = ProcessRunner()

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
        env["CUDA_VISIBLE_DEVICES"] = plan.gpu if plan.gpu is not None else ""
        t = str(plan.threads)
        env.update(
            OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, AUTOSWARM_THREADS=t
        )
        env.update(training_env(job))
        spec = ProcessSpec(
            argv=tuple(job.argv),
            cwd=job.workdir,
            env=env,
            log_path=job.log_path,
            timeout_s=job.timeout_s,
            log_max_bytes=self.log_max_bytes,
            nice=self.nice,
            cpus=plan.cores if plan.gpu is None else (),
            pass_env=self.pass_env,
            sandbox=(
                training_view(
                    self.sandbox, job.workdir, job.evaluation.sealed if job.evaluation else (), env
                )
                if self.sandbox
                else None
            ),
        )
        proc = self._runner.start(spec, on_exit=lambda res: self._trained(job, spec, res))
        with self._lock:
            # Only while it runs: done() turns true before on_exit, so a job that has
            # finished already is not added here, and one added is popped by _finished.
            if not proc.done():
                self._running[job.experiment_id] = proc
        if proc.pid is None:
            return "{}"
        return json.dumps({"pid": proc.pid, "pgid": proc.pgid, "start": proc.start_time})

    def poll(self, timeout: float) -> list[RunResult]:
        return drain(self._results, timeout)

    def cancel(self, experiment_id: int, handle: str | None = None) -> None:
        with self._lock:
            proc = self._running.get(experiment_id)
            if proc is not None:
                self._cancels.add(experiment_id)  # also stops its evaluation from starting
        if proc is not None:
            proc.cancel(grace_s=self.kill_grace_s)
            return
        if handle:
            try:
                info = json.loads(handle)
                kill_orphan(int(info["pid"]), int(info["pgid"]), str(info.get("start", "")))
            except (ValueError, KeyError, TypeError):
                pass

    def close(self) -> None:
        self._closed = True
        self._runner.close()

    # -- internals -----------------------------------------------------------

    def _trained(self, job: Job, spec: ProcessSpec, res: ProcessResult) -> None:
        """Training ended: start the locked evaluation, or report the result now."""
        if self._closed or not should_evaluate(job, res):
            self._finished(job, res)
            return
        assert job.evaluation is not None
        directory = eval_dir(job)
        try:
            write_evaluator(job.evaluation, directory)
        except OSError as e:
            failed = EvalOutcome(
                exit_code=None, timed_out=False, seconds=0.0, error=f"cannot write its files: {e}"
            )
            self._finished(job, res, failed)
            return
        ev_spec = replace(
            spec,
            argv=job.evaluation.argv,
            cwd=directory,
            env=evaluation_env(spec.env, job.workdir, job.evaluation.model),
            log_path=job.eval_log_path,
            timeout_s=job.evaluation.timeout_s,
            sandbox=evaluation_view(self.sandbox, job.workdir, directory) if self.sandbox else None,
        )

        def evaluated(ev: ProcessResult) -> None:
            remove_evaluator(directory)
            self._finished(job, res, outcome(ev, job.eval_log_path), ev.finished_at)

        with self._lock:  # a cancel() either came first (nothing starts) or finds it
            cancelled = job.experiment_id in self._cancels
            if not cancelled:
                proc = self._runner.start(ev_spec, on_exit=evaluated)
                if not proc.done():
                    self._running[job.experiment_id] = proc
        if cancelled:
            remove_evaluator(directory)
            self._finished(job, replace(res, cancelled=True))

    def _finished(
        self,
        job: Job,
        res: ProcessResult,
        evaluation: EvalOutcome | None = None,
        finished_at: float | None = None,
    ) -> None:
        with self._lock:
            self._running.pop(job.experiment_id, None)
            self._cancels.discard(job.experiment_id)
        self._results.put(
            RunResult(
                experiment_id=job.experiment_id,
                exit_code=res.exit_code,
                timed_out=res.timed_out,
                started_at=res.started_at,
                finished_at=res.finished_at if finished_at is None else finished_at,
                log_path=job.log_path,
                metrics=parse_summary(read_tail(job.log_path)) if res.pid is not None else {},
                error=res.error,
                cancelled=res.cancelled or (evaluation is not None and evaluation.cancelled),
                evaluation=evaluation,
            )
        )


__all__ = ["LocalBackend", "SlotPlan", "detect_gpus", "oversubscribed", "plan_slots"]
