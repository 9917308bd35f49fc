"""The Ray backend: one long-lived Ray actor per slot runs train.py as a subprocess.

Why an actor per slot: Ray starts a fresh worker process for every GPU task (about a
quarter of a second, plus imports); a slot actor is started once, holds its tier's
resources (GPUs, accelerator type, custom resources such as ``h100``) for the whole
run, and only forks train.py for each experiment. The actors are *named* and
*detached* in a namespace, so an orchestrator that died and was restarted with
``autoswarm run --resume`` finds them again (``ray.get_actor``) and adopts the
experiments still running there (:meth:`RayBackend.reattach`).

What one experiment does::

    orchestrator                                   slot actor (any node)
    read job.workdir's files ── run(token, files, argv, env) ──▶ write them to a local dir
                                                     start train.py (autoswarm.process):
                                                     own process group, scrubbed env (Job.env),
                                                     CUDA_VISIBLE_DEVICES = the GPUs Ray
                                                     assigned, hard timeout, capped log,
                                                     killed if the actor dies
    write Job.log_path, parse metrics ◀── result (exit code, times, log bytes) ──┘

The snapshot travels with the job (small text files), so nodes need no shared disk.
A lost worker, actor or node (``RayActorError`` and friends) does not lose the
experiment: it runs again on the slot's restarted actor, up to ``max_retries`` times,
and only then comes back as a :class:`~autoswarm.types.RunResult` with ``error``.

Every call into Ray from the orchestrator goes through one error boundary,
:func:`ray_errors`, which maps what Ray raises to
:class:`~autoswarm.errors.BackendCallError` (httpx's ``map_httpcore_exceptions`` is the
model); the backend then decides what the failure means (a lost worker: run again; a
failed cancel of what may be gone: nothing). The slot actor has its own boundary in
:meth:`SlotWorker._execute`: a fault of the slot becomes the experiment's error.

Configuration (``autoswarm.toml``)::

    [pool]
    backend = "ray"
    [pool.options]
    address = "10.0.0.1:6379"   # or "auto"; absent = start a local Ray in this process
    namespace = "autoswarm"
    [[pool.tiers]]
    name = "h100"
    accelerator = "H100:1"      # num_gpus per slot; accelerator_type "H100" unless resources given
    slots = 12
    options = { resources = { h100 = 1 }, cpus = 8 }

Nodes need the same Python environment as the orchestrator (autoswarm and train.py's
packages installed), as Ray itself requires. If ``argv[0]`` is an absolute interpreter
path that does not exist on a node, the actor's own interpreter runs train.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from autoswarm.config import Config, TierConfig
from autoswarm.errors import AutoswarmError, BackendCallError, BackendError, ConfigError
from autoswarm.evaluation import (
    eval_outcome,
    evaluation_env,
    evaluation_view,
    remove_evaluator,
    should_run,
    training_view,
    write_evaluator,
)
from autoswarm.metrics import parse_summary, read_tail
from autoswarm.process import ProcessRunner, ProcessSpec, RunningProcess
from autoswarm.sandbox import Sandbox, SandboxMode, choose, experiment_view, sandbox_settings
from autoswarm.types import Evaluation, Job, RunResult

# The snapshot is a handful of source files; anything this large is a mistake (data
# committed into the workspace) that would clog Ray's object store.
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024

# Finished results an actor keeps for a restarted orchestrator to collect.
_KEEP_FINISHED = 64

log = logging.getLogger(__name__)

RAY_HINT = "check the cluster with `ray status`"


# ---------------------------------------------------------------------------
# The error boundary


@contextlib.contextmanager
def ray_errors(what: str, *, hint: str = RAY_HINT) -> Iterator[None]:
    """Map whatever a Ray call in the block raises to :class:`BackendCallError`.

    ``gone`` is set when the actor, worker, node or object the call needed is lost.
    autoswarm's own errors (a nested boundary's BackendCallError) pass through unchanged.
    """
    try:
        yield
    except AutoswarmError:
        raise
    except Exception as e:
        # The one broad except of the Ray backend's calls: besides its RayError family,
        # Ray raises ValueError (no actor of that name), ConnectionError and gRPC errors
        # (a lost GCS), RuntimeError (init); each is a failed call, which the backend
        # turns into data (a re-run, an error result) or a BackendError, never a crash.
        raise BackendCallError(what, e, hint=hint, gone=_lost_error(e)) from e


@contextlib.contextmanager
def _best_effort(what: str) -> Iterator[None]:
    """A Ray call whose failure changes nothing (cancelling or cleaning up what may be gone)."""
    try:
        with ray_errors(what):
            yield
    except BackendCallError as e:
        log.debug("ray: %s", e)


def _lost_error(e: BaseException) -> bool:
    try:
        from ray import exceptions as rx
    except ImportError:  # pragma: no cover - SlotWorker used without Ray
        return False
    return isinstance(
        e, rx.RayActorError | rx.WorkerCrashedError | rx.NodeDiedError | rx.ObjectLostError
    )


# ---------------------------------------------------------------------------
# Snapshots: a job's workdir as data


class SnapshotError(Exception):
    """A workdir cannot travel (too large, unreadable)."""


def read_snapshot(workdir: Path, limit: int = MAX_SNAPSHOT_BYTES) -> list[tuple[str, bytes, bool]]:
    """The files under ``workdir`` as ``(relative path, bytes, executable)``.

    Raises:
        SnapshotError: the files are larger than ``limit`` bytes in all, or unreadable.
    """
    files: list[tuple[str, bytes, bool]] = []
    total = 0
    try:
        for dirpath, dirnames, filenames in os.walk(workdir):
            dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__"))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                data = path.read_bytes()
                total += len(data)
                if total > limit:
                    raise SnapshotError(
                        f"the snapshot in {workdir} is over {limit // 2**20} MiB; keep data out of "
                        "the workspace's git tree (prepare.py can download it on each node)"
                    )
                files.append((path.relative_to(workdir).as_posix(), data, os.access(path, os.X_OK)))
    except OSError as e:
        raise SnapshotError(f"cannot read the snapshot in {workdir}: {e}") from e
    return files


def write_snapshot(files: Sequence[tuple[str, bytes, bool]], dest: Path) -> None:
    """Write what :func:`read_snapshot` read into ``dest`` (created; paths stay inside it)."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    for rel, data, executable in files:
        target = (dest / rel).resolve()
        if root not in target.parents:
            raise SnapshotError(f"snapshot path {rel!r} leaves its directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if executable:
            target.chmod(0o755)


# ---------------------------------------------------------------------------
# The slot actor (runs inside a Ray worker process; usable without Ray too)


@dataclass
class _ActorRun:
    token: str
    done: threading.Event = field(default_factory=threading.Event)
    proc: RunningProcess | None = None
    cancelled: bool = False
    result: dict[str, Any] | None = None


def _assigned_gpus() -> list[str]:
    """GPU ids Ray assigned to this actor ([] outside Ray or without GPUs)."""
    with _best_effort("asking Ray for this actor's GPUs"):
        import ray

        if ray.is_initialized():
            return [str(g) for g in ray.get_gpu_ids()]
    return []


class SlotWorker:
    """One slot: runs one experiment at a time as a subprocess, keyed by a submission token.

    Ray calls these methods from a small thread pool (a threaded actor), so ``cancel``
    and ``state`` answer while ``run`` waits for train.py.
    """

    def __init__(self, name: str, kill_grace_s: float = 3.0) -> None:
        self.name = name
        self.kill_grace_s = kill_grace_s
        self.root = Path(tempfile.gettempdir()) / "autoswarm-ray" / f"{name}-{os.getpid()}"
        self._runs: dict[str, _ActorRun] = {}
        self._cancel_early: set[str] = set()  # cancelled before their run() arrived
        self._lock = threading.Lock()
        self._runner = ProcessRunner()
        # What an earlier actor of this slot left here when its process was killed.
        for stale in self.root.parent.glob(f"{name}-*"):
            pid = stale.name.rpartition("-")[2]
            if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(stale, ignore_errors=True)

    # -- what the orchestrator calls -----------------------------------------

    def info(self) -> dict[str, Any]:
        """Where this slot lives: process id, host and assigned GPUs."""
        return {"pid": os.getpid(), "host": socket.gethostname(), "gpus": _assigned_gpus()}

    def run(
        self,
        token: str,
        files: Sequence[tuple[str, bytes, bool]],
        argv: Sequence[str],
        env: Mapping[str, str],
        timeout_s: float,
        log_max_bytes: int,
        threads: int,
        sandbox: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run one experiment to its end and return what happened (see :meth:`_execute`).

        ``sandbox`` is the run's ``[sandbox]`` table (:func:`sandbox_settings`): this node
        decides what it can honour (bubblewrap, or the allowlisted environment only), and
        the result's ``sandbox`` says which. ``evaluation``: the job's locked evaluation
        (:func:`evaluation_settings`), run here after training as the local backend does;
        the result's ``evaluation`` holds what it did and its log.

        Calling it again with the same token (a retry after a transient error) waits for
        the same run instead of starting a second one.
        """
        with self._lock:
            r = self._runs.get(token)
            fresh = r is None
            if r is None:
                r = self._runs[token] = _ActorRun(token)
                r.cancelled = token in self._cancel_early
                self._cancel_early.discard(token)
        if fresh:
            # A thread of its own, so the subprocess does not depend on this Ray call.
            threading.Thread(
                target=self._execute,
                args=(
                    r,
                    files,
                    argv,
                    env,
                    timeout_s,
                    log_max_bytes,
                    threads,
                    sandbox if sandbox is not None else {"mode": "off"},
                    evaluation,
                ),
                daemon=True,
                name=f"autoswarm-{token}",
            ).start()
        r.done.wait()
        assert r.result is not None
        return r.result

    def state(self, token: str) -> str:
        """'running', 'done' or 'unknown' (never seen here, or already forgotten)."""
        with self._lock:
            r = self._runs.get(token)
        if r is None:
            return "unknown"
        return "done" if r.done.is_set() else "running"

    def wait(self, token: str) -> dict[str, Any] | None:
        """The result of ``token`` once it has finished; None if it is unknown here."""
        with self._lock:
            r = self._runs.get(token)
        if r is None:
            return None
        r.done.wait()
        return r.result

    def cancel(self, token: str) -> bool:
        """Stop ``token``'s process group (SIGTERM, SIGKILL after a grace period)."""
        with self._lock:
            r = self._runs.get(token)
            if r is None:
                self._cancel_early.add(token)
                return False
            r.cancelled = True
            proc = r.proc
        if proc is not None:
            proc.cancel(grace_s=self.kill_grace_s)
        return True

    def forget(self, token: str) -> None:
        """Drop a finished result the orchestrator has collected."""
        with self._lock:
            r = self._runs.get(token)
            if r is not None and r.done.is_set():
                del self._runs[token]

    def shutdown(self) -> None:
        """Kill every running process group now (the orchestrator is closing)."""
        with self._lock:
            runs = list(self._runs.values())
            for r in runs:
                r.cancelled = True
        for r in runs:
            if r.proc is not None:
                r.proc.cancel(grace_s=0)
        for r in runs:
            r.done.wait(timeout=5)
        self._runner.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the subprocess ------------------------------------------------------

    def _command(self, argv: Sequence[str]) -> tuple[str, ...]:
        cmd = list(argv)
        if (
            cmd
            and os.path.isabs(cmd[0])
            and not os.path.exists(cmd[0])
            and Path(cmd[0]).name.startswith("python")
        ):
            cmd[0] = sys.executable  # the orchestrator's interpreter is not on this node
        return tuple(cmd)

    def _view(self, settings: Mapping[str, Any]) -> tuple[Sandbox | None, str]:
        """This node's sandbox for ``settings`` and the line that says what it is ("" off).

        Raises:
            OSError: ``mode = "bwrap"`` and bubblewrap cannot run on this node (the
                experiment then does not start, and its error says why).
        """
        mode = SandboxMode(settings.get("mode", "auto"))
        if mode is SandboxMode.OFF:
            return None, ""  # nothing to say: the run's first lines said it
        try:
            choice = choose(mode)
        except RuntimeError as e:
            raise OSError(f'[sandbox] mode = "bwrap" but on {socket.gethostname()} {e}') from None
        if choice.bwrap is None:
            return None, choice.line
        view = experiment_view(
            workspace=self.root,
            state_dir=self.root,
            read_only=settings.get("read_only", ()),
            hide=settings.get("hide", ()),
            network=bool(settings.get("network", False)),
            memory_bytes=int(settings.get("memory_bytes", 0)),
            open_files=int(settings.get("open_files", 0)),
            processes=int(settings.get("processes", 0)),
        )
        return view, choice.line

    def _execute(
        self,
        r: _ActorRun,
        files: Sequence[tuple[str, bytes, bool]],
        argv: Sequence[str],
        env: Mapping[str, str],
        timeout_s: float,
        log_max_bytes: int,
        threads: int,
        sandbox: Mapping[str, Any],
        evaluation: Mapping[str, Any] | None = None,
    ) -> None:
        started = time.time()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in r.token)
        workdir = self.root / safe
        log_path = self.root / f"{safe}.log"
        ev = _evaluation_of(evaluation)
        ev_dir, ev_log = self.root / f"{safe}.eval", self.root / f"{safe}.eval.log"
        result: dict[str, Any] = {
            "exit_code": None,
            "timed_out": False,
            "started_at": started,
            "finished_at": started,
            "error": "",
            "cancelled": False,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        try:
            shutil.rmtree(workdir, ignore_errors=True)
            write_snapshot(files, workdir)
            full_env = dict(env)
            t = str(max(1, threads))
            full_env.update(
                PYTHONUNBUFFERED="1",
                CUDA_VISIBLE_DEVICES=",".join(_assigned_gpus()),
                OMP_NUM_THREADS=t,
                MKL_NUM_THREADS=t,
                OPENBLAS_NUM_THREADS=t,
                AUTOSWARM_THREADS=t,
            )
            if ev is not None:
                full_env["AUTOSWARM_MODEL"] = str(workdir / ev.model)
            view, result["sandbox"] = self._view(sandbox)
            sealed = ev.sealed if ev is not None else ()
            spec = ProcessSpec(
                argv=self._command(argv),
                cwd=workdir,
                env=full_env,
                log_path=log_path,
                timeout_s=timeout_s,
                log_max_bytes=log_max_bytes,
                # If this actor's process dies (killed worker, lost node), train.py dies
                # with it instead of running on as an orphan.
                die_with_parent=True,
                pass_env=tuple(sandbox.get("pass_env", ())),
                sandbox=(
                    training_view(view, workdir, sealed, full_env) if view is not None else None
                ),
            )
            # Under the lock: a cancel() either comes first (nothing starts) or finds r.proc.
            with self._lock:
                if r.cancelled:
                    raise _Cancelled
                r.proc = self._runner.start(spec)
            res = r.proc.wait()
            assert res is not None
            result.update(
                exit_code=res.exit_code,
                timed_out=res.timed_out,
                started_at=res.started_at,
                finished_at=res.finished_at,
                error=f"{res.error} (on {result['host']})" if res.error else "",
            )
            if ev is not None and should_run(res):
                write_evaluator(ev, ev_dir)
                ev_spec = replace(
                    spec,
                    argv=self._command(ev.argv),
                    cwd=ev_dir,
                    env=evaluation_env(full_env, workdir, ev.model),
                    log_path=ev_log,
                    timeout_s=ev.timeout_s,
                    sandbox=evaluation_view(view, workdir, ev_dir) if view is not None else None,
                )
                with self._lock:
                    if r.cancelled:
                        raise _Cancelled
                    r.proc = self._runner.start(ev_spec)
                eres = r.proc.wait()
                assert eres is not None
                result["finished_at"] = eres.finished_at
                result["evaluation"] = {
                    "exit_code": eres.exit_code,
                    "timed_out": eres.timed_out,
                    "seconds": eres.duration_s,
                    "error": eres.error,
                    "cancelled": eres.cancelled,
                    "log": ev_log.read_bytes() if ev_log.exists() else b"",
                }
        except _Cancelled:
            result["finished_at"] = time.time()
        except Exception as e:
            # The slot actor's boundary: whatever fails here (the snapshot cannot be
            # written, the runner cannot start, a full disk) is a fault of this slot, not
            # of the experiment, and must still become a result: run() waits for one.
            result["finished_at"] = time.time()
            result["error"] = f"the Ray slot {self.name} failed: {e!r}"
        finally:
            try:
                result["log"] = log_path.read_bytes()
            except OSError:
                result["log"] = b""
            shutil.rmtree(workdir, ignore_errors=True)
            remove_evaluator(ev_dir)
            with contextlib.suppress(OSError):
                log_path.unlink()
                ev_log.unlink()
            with self._lock:
                result["cancelled"] = r.cancelled
                r.result = result
                done = [k for k, v in self._runs.items() if v.done.is_set()]
                for k in done[: max(0, len(done) - _KEEP_FINISHED)]:
                    del self._runs[k]
            r.done.set()


class _Cancelled(Exception):
    """Internal: stop before (or instead of) starting the process."""


def evaluation_settings(ev: Evaluation | None) -> dict[str, Any] | None:
    """A job's locked evaluation as plain data, for a slot actor on any node."""
    if ev is None:
        return None
    return {
        "argv": list(ev.argv),
        "files": [(path, data) for path, data in ev.files],
        "sealed": list(ev.sealed),
        "timeout_s": ev.timeout_s,
        "model": ev.model,
    }


def _evaluation_of(settings: Mapping[str, Any] | None) -> Evaluation | None:
    if not settings:
        return None
    return Evaluation(
        argv=tuple(settings["argv"]),
        files=tuple((str(p), bytes(d)) for p, d in settings["files"]),
        sealed=tuple(settings.get("sealed", ())),
        timeout_s=float(settings.get("timeout_s", 600.0)),
        model=str(settings.get("model", "model.pt2")),
    )


# ---------------------------------------------------------------------------
# Tiers → Ray resources


_TIER_OPTIONS = {"resources", "cpus", "accelerator_type"}
_POOL_OPTIONS = {
    "address",
    "namespace",
    "name_prefix",
    "max_retries",
    "start_timeout_s",
    "result_grace_s",
}


@dataclass(frozen=True, kw_only=True)
class SlotSpec:
    """What one slot's actor holds on the cluster."""

    tier: str
    num_cpus: float
    num_gpus: float
    resources: Mapping[str, float]
    accelerator_type: str  # "" = any

    def describe(self) -> str:
        parts = [f"{self.num_cpus:g} CPU"]
        if self.num_gpus:
            parts.append(f"{self.num_gpus:g} GPU")
        if self.accelerator_type:
            parts.append(f"accelerator_type {self.accelerator_type}")
        parts += [f"{k}={v:g}" for k, v in self.resources.items()]
        return ", ".join(parts)


def slot_spec(tier: TierConfig) -> SlotSpec:
    """The Ray resources of one slot of ``tier`` (its ``options`` checked).

    ``options.resources`` are custom resources per slot (``{h100 = 1}``); ``options.cpus``
    the CPUs per slot (default 1, also the thread count); ``options.accelerator_type``
    Ray's accelerator type, by default the tier's accelerator name unless custom
    resources already pin the slot.

    Raises:
        ConfigError: unknown or malformed tier options.
    """
    where = f"[[pool.tiers]] {tier.name!r} options"
    opts = dict(tier.options)
    unknown = sorted(set(opts) - _TIER_OPTIONS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} for the ray backend; "
            f"known keys: {', '.join(sorted(_TIER_OPTIONS))}"
        )
    resources = opts.get("resources", {})
    if not isinstance(resources, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        for k, v in resources.items()
    ):
        raise ConfigError(
            f"{where}: resources must be a table of positive numbers, e.g. resources = {{ h100 = 1 }}"
        )
    cpus = opts.get("cpus", 1)
    if not isinstance(cpus, int | float) or isinstance(cpus, bool) or cpus < 0:
        raise ConfigError(f"{where}: cpus must be a number >= 0, got {cpus!r}")
    acc = opts.get("accelerator_type")
    if acc is None:
        acc = tier.accelerator_type if tier.accelerator and not resources else ""
    if not isinstance(acc, str):
        raise ConfigError(f'{where}: accelerator_type must be a string such as "H100"')
    return SlotSpec(
        tier=tier.name,
        num_cpus=float(cpus),
        num_gpus=tier.gpus_per_slot,
        resources={k: float(v) for k, v in resources.items()},
        accelerator_type=acc,
    )


# ---------------------------------------------------------------------------
# One connection to Ray per process, shared by every RayBackend in it


_CONN_LOCK = threading.Lock()
_CONN_USERS = 0
_CONN_OWNED = False


def _connect(address: str | None, namespace: str, local_needs: SlotSpec | None) -> None:
    global _CONN_USERS, _CONN_OWNED
    import ray

    with _CONN_LOCK:
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "namespace": namespace,
                "logging_level": logging.WARNING,
                "log_to_driver": False,
            }
            if address:
                kwargs["address"] = address
            else:
                assert local_needs is not None
                kwargs.update(
                    num_cpus=max(os.cpu_count() or 1, int(local_needs.num_cpus + 0.999)),
                    resources=dict(local_needs.resources) or None,
                    include_dashboard=False,
                )
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            with ray_errors(
                f"connecting to {where}",
                hint="start one with `ray start --head` and set [pool.options] address = "
                '"HOST:PORT" (or "auto"), or leave address out',
            ):
                ray.init(**kwargs)
            _CONN_OWNED = True
        _CONN_USERS += 1


def _disconnect() -> None:
    global _CONN_USERS, _CONN_OWNED
    import ray

    with _CONN_LOCK:
        _CONN_USERS = max(0, _CONN_USERS - 1)
        if _CONN_USERS == 0 and _CONN_OWNED:
            ray.shutdown()
            _CONN_OWNED = False


_ACTOR_CLASS: Any = None


def _actor_class() -> Any:
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        _ACTOR_CLASS = ray.remote(SlotWorker)
    return _ACTOR_CLASS


# ---------------------------------------------------------------------------
# The backend


@dataclass
class _Pending:
    job: Job
    token: str
    actor: Any  # the slot actor's handle
    actor_name: str
    files: list[tuple[str, bytes, bool]] | None  # None: adopted, cannot be re-run
    ref: Any
    submitted_at: float
    deadline: float
    attempts: int = 0  # lost workers so far
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)


class RayBackend:
    """Slots as named, detached Ray actors. See the module docstring.

    Args:
        slot_tiers: the tier of every slot, slot ids in order (``PoolConfig.slot_tiers``).
        address: Ray cluster to join (``host:port`` or ``auto``); None starts Ray locally.
        namespace: Ray namespace of the actors.
        name_prefix: actor names are ``{name_prefix}-slot{i}``; a restarted orchestrator
            must use the same prefix to find its actors (``from_config`` derives it
            from the workspace). Default: a fresh random prefix.
        max_retries: how often an experiment whose worker was lost runs again.
        log_max_bytes: cap of each experiment's log (head and tail kept).
        kill_grace_s: seconds between SIGTERM and SIGKILL when cancelling.
        start_timeout_s: how long the slot actors may take to be placed and start.
        result_grace_s: a job without a result ``timeout + result_grace_s`` seconds after
            it was sent (an actor that cannot be placed again) ends with an error.
    """

    def __init__(
        self,
        slot_tiers: Sequence[TierConfig],
        *,
        address: str | None = None,
        namespace: str = "autoswarm",
        name_prefix: str | None = None,
        max_retries: int = 2,
        log_max_bytes: int = 2_000_000,
        kill_grace_s: float = 3.0,
        start_timeout_s: float = 180.0,
        result_grace_s: float = 120.0,
        sandbox: Mapping[str, Any] | None = None,
    ) -> None:
        if not slot_tiers:
            raise ConfigError("the ray backend needs at least one slot: add [[pool.tiers]]")
        self.specs = [slot_spec(t) for t in slot_tiers]
        self.namespace = namespace
        self.name_prefix = name_prefix or f"autoswarm-{uuid.uuid4().hex[:10]}"
        self.max_retries = max_retries
        self.log_max_bytes = log_max_bytes
        self.kill_grace_s = kill_grace_s
        self.result_grace_s = result_grace_s
        # The [sandbox] table (sandbox_settings), sent with every run: each node applies
        # what it can. None: no sandbox (tests of the backend itself).
        self.sandbox = dict(sandbox) if sandbox is not None else {"mode": "off"}
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._by_ref: dict[Any, int] = {}
        self._done: list[RunResult] = []
        self._closed = False
        needs = SlotSpec(
            tier="",
            num_cpus=sum(s.num_cpus for s in self.specs),
            num_gpus=sum(s.num_gpus for s in self.specs),
            resources={
                k: sum(s.resources.get(k, 0.0) for s in self.specs)
                for k in {k for s in self.specs for k in s.resources}
            },
            accelerator_type="",
        )
        self._actors: list[Any] = []
        _connect(address, namespace, needs)
        try:
            for i in range(len(self.specs)):
                self._actors.append(self._create(i))
            self._infos = self._wait_ready(start_timeout_s)
        except BaseException:
            self._kill_actors()
            _disconnect()
            raise

    @classmethod
    def from_config(cls, cfg: Config, *, state_dir: Path) -> RayBackend:
        """The backend ``[pool] backend = "ray"`` describes (see the module docstring)."""
        opts = dict(cfg.pool.options)
        unknown = sorted(set(opts) - _POOL_OPTIONS)
        if unknown:
            raise ConfigError(
                f"[pool.options]: unknown key(s) {', '.join(unknown)} for the ray backend; "
                f"known keys: {', '.join(sorted(_POOL_OPTIONS))}"
            )
        for key in ("address", "namespace", "name_prefix"):
            if key in opts and not isinstance(opts[key], str):
                raise ConfigError(f'[pool.options] {key} must be a string, e.g. {key} = "..."')
        for key in ("max_retries", "start_timeout_s", "result_grace_s"):
            value = opts.get(key, 0)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"[pool.options] {key} must be a number >= 0, got {value!r}")
        digest = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]
        return cls(
            cfg.pool.slot_tiers(cfg.run.workers),
            address=opts.get("address") or None,
            namespace=opts.get("namespace", "autoswarm"),
            name_prefix=opts.get("name_prefix") or f"autoswarm-{digest}",
            max_retries=int(opts.get("max_retries", 2)),
            log_max_bytes=cfg.run.log_max_bytes,
            start_timeout_s=float(opts.get("start_timeout_s", 180.0)),
            result_grace_s=float(opts.get("result_grace_s", 120.0)),
            sandbox=sandbox_settings(cfg.sandbox),
        )

    # -- actors --------------------------------------------------------------

    def actor_name(self, slot: int) -> str:
        return f"{self.name_prefix}-slot{slot}"

    def _create(self, slot: int) -> Any:
        """The slot's actor: the live one of that name, else a new one."""
        spec = self.specs[slot]
        opts: dict[str, Any] = {
            "name": self.actor_name(slot),
            "namespace": self.namespace,
            "lifetime": "detached",  # outlives this orchestrator, for --resume
            "get_if_exists": True,
            "max_restarts": -1,  # a killed worker or lost node: Ray starts the actor again
            "max_task_retries": 0,  # ... and we decide what to re-run
            "max_concurrency": 16,  # run() blocks one thread; cancel/state use others
            "num_cpus": spec.num_cpus,
            "num_gpus": spec.num_gpus,
        }
        if spec.resources:
            opts["resources"] = dict(spec.resources)
        if spec.accelerator_type:
            opts["accelerator_type"] = spec.accelerator_type
        return _actor_class().options(**opts).remote(self.actor_name(slot), self.kill_grace_s)

    def _wait_ready(self, timeout_s: float) -> list[dict[str, Any]]:
        import ray

        with ray_errors("starting the Ray slot actors"):
            refs = [a.info.remote() for a in self._actors]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            done = set(ready)
            missing = [i for i, ref in enumerate(refs) if ref not in done]
            s = self.specs[missing[0]]
            raise BackendError(
                f"{len(missing)} of {len(refs)} Ray slot actors did not start within "
                f"{timeout_s:g}s (first: slot {missing[0]}, tier {s.tier!r}, needs {s.describe()}): "
                "the cluster has no room for them; check `ray status`, add nodes with those "
                "resources, or lower the tiers' slots"
            )
        with ray_errors("starting the Ray slot actors", hint=f"{RAY_HINT} and the actors' logs"):
            infos: list[dict[str, Any]] = ray.get(refs)
        return infos

    def _actor_for(self, slot: int) -> Any:
        """The slot's actor after a loss: Ray's restarted one, or a new one if it is gone."""
        import ray

        try:
            actor = ray.get_actor(self.actor_name(slot), namespace=self.namespace)
        except ValueError:
            actor = self._create(slot)
        self._actors[slot] = actor
        return actor

    def worker_pid(self, slot: int, timeout_s: float = 60.0) -> int:
        """Process id of the slot's actor now (to observe or kill it in tests)."""
        import ray

        info: dict[str, Any] = ray.get(self._actors[slot].info.remote(), timeout=timeout_s)
        return int(info["pid"])

    def slot_info(self, slot: int) -> Mapping[str, Any]:
        """What the slot's actor reported when it started: pid, host, gpus."""
        return dict(self._infos[slot])

    # -- protocol ------------------------------------------------------------

    def capacity(self) -> int:
        return len(self.specs)

    def submit(self, job: Job) -> str:
        if self._closed:
            raise BackendError("the ray backend is closed")
        if not 0 <= job.slot < len(self.specs):
            raise BackendError(f"slot {job.slot} does not exist (capacity {len(self.specs)})")
        token = f"{job.experiment_id}-{uuid.uuid4().hex[:12]}"
        name = self.actor_name(job.slot)
        handle = json.dumps(
            {
                "backend": "ray",
                "actor": name,
                "namespace": self.namespace,
                "experiment_id": job.experiment_id,
                "token": token,
            }
        )
        now = time.time()
        try:
            files = read_snapshot(job.workdir)
        except SnapshotError as e:
            self._finish_now(job, now, error=str(e))
            return handle
        actor = self._actors[job.slot]
        p = _Pending(
            job=job,
            token=token,
            actor=actor,
            actor_name=name,
            files=files,
            ref=None,
            submitted_at=now,
            deadline=now + job.timeout_s + self.result_grace_s,
        )
        with self._lock:
            self._pending[job.experiment_id] = p
            try:
                self._send(p)
            except BackendCallError:
                del self._pending[job.experiment_id]
                raise
        return handle

    def poll(self, timeout: float) -> list[RunResult]:
        import ray

        with self._lock:
            out, self._done = self._done, []
            refs = list(self._by_ref)
        if refs:
            wait_s = 0.0 if out else max(0.0, timeout)
            with ray_errors(  # the driver lost the cluster (GCS down, network)
                "waiting for results from the Ray cluster",
                hint="the slot actors are detached and keep running: once the cluster answers "
                "again, resume with `autoswarm run --resume` to re-attach to them",
            ):
                ready, _ = ray.wait(refs, num_returns=1, timeout=wait_s)
                if ready:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self._collect(ref)
        elif not out and timeout > 0:
            time.sleep(timeout)
        self._expire()
        with self._lock:
            out += self._done
            self._done = []
        return out

    def cancel(self, experiment_id: int, handle: str | None = None) -> None:
        with self._lock:
            p = self._pending.get(experiment_id)
            if p is not None:
                p.cancelled = True
        if p is not None:
            with _best_effort(f"cancelling experiment {experiment_id} on {p.actor_name}"):
                p.actor.cancel.remote(p.token)
            return
        ours = _parse_handle(handle)
        if ours is None:
            return  # not a handle of this backend
        name, ns, token = ours
        import ray

        # Best effort: if it fails, the actor (and so the process) is gone.
        with _best_effort(f"cancelling orphaned experiment {experiment_id} on {name}"):
            actor = ray.get_actor(name, namespace=ns)
            ray.get(actor.cancel.remote(token), timeout=30)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kill_actors()
        with self._lock:
            self._pending.clear()
            self._by_ref.clear()
        _disconnect()

    # -- Reattachable --------------------------------------------------------

    def reattach(self, job: Job, handle: str) -> bool:
        """Adopt an experiment a previous orchestrator started; its result comes via poll."""
        import ray

        ours = _parse_handle(handle)
        if ours is None:
            return False
        name, ns, token = ours
        try:
            with ray_errors(f"re-attaching to experiment {job.experiment_id} on {name}"):
                actor = ray.get_actor(name, namespace=ns)
                state: Any = ray.get(actor.state.remote(token), timeout=60)
        except BackendCallError:
            return False  # the actor is gone (or never was)
        if state not in ("running", "done"):
            return False
        try:
            files: list[tuple[str, bytes, bool]] | None = read_snapshot(job.workdir)
        except SnapshotError:
            files = None  # cannot re-run it if its worker is lost; it ends with an error
        if files == []:
            files = None
        now = time.time()
        p = _Pending(
            job=job,
            token=token,
            actor=actor,
            actor_name=name,
            files=files,
            ref=actor.wait.remote(token),
            submitted_at=now,
            deadline=now + job.timeout_s + self.result_grace_s,
            notes=[f"autoswarm: re-attached to {name} after an orchestrator restart"],
        )
        with self._lock:
            self._pending[job.experiment_id] = p
            self._by_ref[p.ref] = job.experiment_id
        return True

    # -- internals -----------------------------------------------------------

    def _send(self, p: _Pending) -> None:
        """Start (or restart) ``p`` on its actor. Caller holds the lock."""
        assert p.files is not None
        job = p.job
        with ray_errors(f"sending experiment {job.experiment_id} to Ray slot {p.actor_name}"):
            p.ref = p.actor.run.remote(
                p.token,
                p.files,
                list(job.argv),
                dict(job.env),
                job.timeout_s,
                self.log_max_bytes,
                max(1, int(self.specs[job.slot].num_cpus)),
                self.sandbox,
                evaluation_settings(job.evaluation),
            )
        self._by_ref[p.ref] = job.experiment_id

    def _collect(self, ref: Any) -> None:
        import ray

        with self._lock:
            exp_id = self._by_ref.pop(ref, None)
            p = self._pending.get(exp_id) if exp_id is not None else None
        if p is None or p.ref != ref:
            return  # a late answer for something already finished
        try:
            with ray_errors(f"the result of experiment {p.job.experiment_id}"):
                res = ray.get(ref, timeout=60)
        except BackendCallError as e:
            self._lost(p, e.reason)
            return
        if res is None:  # adopted, but the actor restarted and forgot it
            self._lost(p, "the slot actor restarted and no longer knows the experiment")
            return
        with _best_effort(f"clearing experiment {p.job.experiment_id} on {p.actor_name}"):
            p.actor.forget.remote(p.token)
        self._finish(p, res)

    def _lost(self, p: _Pending, why: str) -> None:
        """The worker, actor or node of ``p`` is gone: run it again, or give up."""
        p.attempts += 1
        note = f"autoswarm: attempt {p.attempts} lost its Ray worker ({why})"
        if p.cancelled:
            p.notes.append(note)
            self._finish(p, None, error="")
            return
        if p.attempts > self.max_retries or p.files is None:
            p.notes.append(note + "; giving up")
            self._finish(
                p,
                None,
                error=f"lost its Ray worker {p.attempts} time(s), last: {why}; check the "
                "cluster with `ray status`, or raise [pool.options] max_retries"
                if p.files is not None
                else f"lost its Ray worker after a re-attach ({why}); the experiment did not finish",
            )
            return
        p.notes.append(note + "; running it again on the slot's restarted actor")
        try:
            with ray_errors(f"re-running experiment {p.job.experiment_id} on Ray"):
                actor = self._actor_for(p.job.slot)
                with self._lock:
                    p.actor = actor
                    p.actor_name = self.actor_name(p.job.slot)
                    p.deadline = time.time() + p.job.timeout_s + self.result_grace_s
                    self._send(p)
        except BackendCallError as e:  # the cluster itself is unreachable
            self._finish(p, None, error=f"cannot re-run it on Ray ({e.reason}): {why}")

    def _expire(self) -> None:
        """Jobs whose result never came (an actor that cannot be placed again) end here."""
        now = time.time()
        with self._lock:
            late = [p for p in self._pending.values() if now > p.deadline]
        for p in late:
            with self._lock:
                self._by_ref.pop(p.ref, None)
            with _best_effort(f"cancelling experiment {p.job.experiment_id} on {p.actor_name}"):
                p.actor.cancel.remote(p.token)
            self._finish(
                p,
                None,
                error=f"no result from Ray slot {p.actor_name} within the "
                f"{p.job.timeout_s + self.result_grace_s:g}s timeout plus grace; its actor may "
                "have no room on the cluster (check `ray status`)",
            )

    def _finish(self, p: _Pending, res: Mapping[str, Any] | None, *, error: str = "") -> None:
        job = p.job
        with self._lock:
            if self._pending.get(job.experiment_id) is not p:
                return
            del self._pending[job.experiment_id]
        res = res or {}
        notes = list(p.notes)
        if res.get("sandbox"):  # how the node contained it (bubblewrap, or why not)
            notes.append(f"autoswarm: on {res.get('host', '?')}, {res['sandbox']}")
        header = "".join(n + "\n" for n in notes).encode()
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        job.log_path.write_bytes(header + bytes(res.get("log", b"")))
        # After a lost worker the slot was busy since the first attempt was sent.
        started = p.submitted_at if p.attempts else float(res.get("started_at", p.submitted_at))
        evaluation = None
        if ev := res.get("evaluation"):
            job.eval_log_path.write_bytes(bytes(ev.get("log", b"")))
            evaluation = eval_outcome(
                exit_code=ev.get("exit_code"),
                timed_out=bool(ev.get("timed_out")),
                seconds=float(ev.get("seconds", 0.0)),
                error=str(ev.get("error", "")),
                cancelled=bool(ev.get("cancelled")),
                log=read_tail(job.eval_log_path),
                started=ev.get("exit_code") is not None,
            )
        result = RunResult(
            experiment_id=job.experiment_id,
            exit_code=res.get("exit_code"),
            timed_out=bool(res.get("timed_out", False)),
            started_at=started,
            finished_at=float(res.get("finished_at", time.time())),
            log_path=job.log_path,
            metrics=parse_summary(read_tail(job.log_path)),
            error=error or str(res.get("error", "")),
            cancelled=p.cancelled or bool(res.get("cancelled", False)),
            evaluation=evaluation,
        )
        with self._lock:
            self._done.append(result)

    def _finish_now(self, job: Job, now: float, *, error: str) -> None:
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        job.log_path.write_text(f"autoswarm: {error}\n")
        with self._lock:
            self._done.append(
                RunResult(
                    experiment_id=job.experiment_id,
                    exit_code=None,
                    timed_out=False,
                    started_at=now,
                    finished_at=now,
                    log_path=job.log_path,
                    error=error,
                )
            )

    def _kill_actors(self) -> None:
        """Stop every slot's processes, then the actors themselves."""
        import ray

        actors = list(self._actors)
        with _best_effort("stopping the slot actors' processes"):
            ray.wait([a.shutdown.remote() for a in actors], num_returns=len(actors), timeout=10)
        for a in actors:
            with _best_effort("killing a slot actor"):
                ray.kill(a)


def _parse_handle(handle: str | None) -> tuple[str, str, str] | None:
    """(actor name, namespace, token) of a handle :meth:`RayBackend.submit` issued, or None."""
    try:
        info = json.loads(handle or "")
        return str(info["actor"]), str(info["namespace"]), str(info["token"])
    except (ValueError, KeyError, TypeError):
        return None


__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "RAY_HINT",
    "RayBackend",
    "SlotSpec",
    "SlotWorker",
    "evaluation_settings",
    "ray_errors",
    "read_snapshot",
    "slot_spec",
]
