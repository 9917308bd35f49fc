"""Contract suites: every Backend, every Proposer and every user of the process runner pass these.

Subclass in a test module and provide the factory::

    class TestLocalBackend(BackendContract):
        def make_backend(self, slots: int) -> Backend: return LocalBackend(slots)

Backend jobs say what to do through ``AUTOSWARM_CONTRACT_BEHAVIOUR`` (ok, fail, hang, nap) in
their environment; a real backend runs :data:`CONTRACT_SCRIPT`, a fake one reads
the variable (see :func:`fake_contract_outcome`).

:class:`ReattachableContract` is what a backend whose jobs outlive the orchestrator
(:class:`~autoswarm.backends.base.Reattachable`) adds: a fresh instance adopts a job an
abandoned one started, and refuses handles it cannot honour.

:class:`ProcessContract` is what every process autoswarm starts gets, checked at the
surface of whoever starts it (the runner itself, a backend, the Ray slot worker, the
agent proposer): subclass it and implement ``launch`` (a :class:`Launched` for a
:class:`~autoswarm.process.ProcessSpec`); :class:`RunnerLaunch` and
:class:`BackendLaunch` are the launches of the runner and of any backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from autoswarm.backends.base import Backend, Reattachable
from autoswarm.backends.fake import Outcome
from autoswarm.process import ProcessRunner, ProcessSpec
from autoswarm.proposers.base import Composite, Context, Proposer
from autoswarm.types import Direction, Experiment, Job, Kind, RunResult, Status

CONTRACT_SCRIPT = """\
import os, sys, time
b = os.environ["AUTOSWARM_CONTRACT_BEHAVIOUR"]
if os.environ.get("AUTOSWARM_CONTRACT_STARTED"):
    open(os.environ["AUTOSWARM_CONTRACT_STARTED"], "w").close()
if b == "hang":
    time.sleep(3600)
if b == "nap":
    time.sleep(float(os.environ.get("AUTOSWARM_CONTRACT_NAP", "2")))
if b == "fail":
    print("Traceback (most recent call last):\\nValueError: broken on purpose", flush=True)
    sys.exit(3)
print("---")
print("val_bpb: 1.234500")
print("peak_vram_mb: 10.0")
"""


def fake_contract_outcome(job: Job) -> Outcome:
    b = job.env["AUTOSWARM_CONTRACT_BEHAVIOUR"]
    if b == "hang":
        return Outcome(duration=3600.0)
    if b == "fail":
        return Outcome(duration=0.1, exit_code=3, log="ValueError: broken on purpose\n")
    duration = float(job.env.get("AUTOSWARM_CONTRACT_NAP", "2")) if b == "nap" else 0.1
    return Outcome(duration=duration, metrics={"val_bpb": 1.2345, "peak_vram_mb": 10.0})


def wait_results(backend: Backend, count: int, limit: float = 30.0) -> dict[int, RunResult]:
    """Poll ``backend`` until ``count`` results came (or ``limit`` s passed); each comes once."""
    got: dict[int, RunResult] = {}
    deadline = time.monotonic() + limit
    while len(got) < count and time.monotonic() < deadline:
        for r in backend.poll(timeout=0.2):
            assert r.experiment_id not in got, "a job must be reported once"
            got[r.experiment_id] = r
    return got


class BackendContract:
    """What the scheduler relies on from every backend."""

    timeout_s = 3.0

    def make_backend(self, slots: int) -> Backend:  # pragma: no cover - overridden
        raise NotImplementedError

    def _job(self, tmp_path: Path, exp_id: int, behaviour: str, slot: int = 0) -> Job:
        workdir = tmp_path / f"run{exp_id}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "job.py").write_text(CONTRACT_SCRIPT)
        return Job(
            experiment_id=exp_id,
            workdir=workdir,
            argv=(sys.executable, "job.py"),
            env={"AUTOSWARM_CONTRACT_BEHAVIOUR": behaviour, "PATH": "/usr/bin:/bin"},
            timeout_s=self.timeout_s,
            slot=slot,
            log_path=tmp_path / "logs" / f"{exp_id}.log",
            budget_s=1.0,
        )

    def _wait(self, backend: Backend, count: int, limit: float = 30.0) -> dict[int, RunResult]:
        return wait_results(backend, count, limit)

    def test_capacity_is_positive(self) -> None:
        b = self.make_backend(2)
        try:
            assert b.capacity() == 2
        finally:
            b.close()

    def test_success_failure_and_metrics(self, tmp_path: Path) -> None:
        b = self.make_backend(2)
        try:
            handle = b.submit(self._job(tmp_path, 1, "ok", slot=0))
            assert isinstance(handle, str)
            b.submit(self._job(tmp_path, 2, "fail", slot=1))
            got = self._wait(b, 2)
            assert set(got) == {1, 2}
            ok, bad = got[1], got[2]
            assert ok.exit_code == 0 and not ok.timed_out and not ok.cancelled
            assert ok.metrics["val_bpb"] == pytest.approx(1.2345)
            assert ok.finished_at >= ok.started_at
            assert bad.exit_code == 3 and not bad.metrics
            assert "broken on purpose" in bad.log_path.read_text()
        finally:
            b.close()

    def test_timeout_is_reported_not_raised(self, tmp_path: Path) -> None:
        b = self.make_backend(1)
        try:
            b.submit(self._job(tmp_path, 7, "hang"))
            got = self._wait(b, 1)
            assert got[7].timed_out and not got[7].metrics
            assert got[7].duration_s == pytest.approx(self.timeout_s, abs=2.0)
        finally:
            b.close()

    def test_cancel_yields_a_cancelled_result(self, tmp_path: Path) -> None:
        b = self.make_backend(1)
        try:
            b.submit(self._job(tmp_path, 9, "hang"))
            b.cancel(9)
            got = self._wait(b, 1)
            assert got[9].cancelled
        finally:
            b.close()

    def test_close_is_idempotent(self) -> None:
        b = self.make_backend(1)
        b.close()
        b.close()


class ReattachableContract:
    """What ``--resume`` relies on from a :class:`~autoswarm.backends.base.Reattachable` backend.

    A job whose handle the ledger recorded before the orchestrator died is adopted by a
    fresh instance, which then reports its result through ``poll`` exactly once; a
    handle it cannot honour (malformed, another backend's, a job that is gone) is
    refused with False, leaving nothing behind.

    Subclass and implement:

    * ``make_backend(slots)``: a fresh instance (a new orchestrator process) on the
      test's one remote world: every instance made in one test shares it (the same
      cluster, fake cloud, state directory, name prefix).
    * ``abandon(backend)``: the orchestrator dies: the instance stops following its jobs
      without ``close()``: nothing is cancelled, torn down or collected.

    and, where the defaults do not fit, ``until_running`` (default: the job's
    ``AUTOSWARM_CONTRACT_STARTED`` file appears, which :data:`CONTRACT_SCRIPT` writes) and
    ``stale`` (default: the handle unchanged).
    """

    nap_s = 2.0  # how long the adopted job runs (it must outlive the first instance)
    timeout_s = 60.0

    def make_backend(self, slots: int) -> Backend:  # pragma: no cover - overridden
        raise NotImplementedError

    def abandon(self, backend: Backend) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def until_running(self, backend: Backend, job: Job, limit: float = 30.0) -> None:
        """Wait until ``job`` runs remotely (so an abandoned orchestrator leaves it running)."""
        marker = Path(job.env["AUTOSWARM_CONTRACT_STARTED"])
        deadline = time.monotonic() + limit
        while not marker.exists():
            assert time.monotonic() < deadline, f"experiment {job.experiment_id} did not start"
            time.sleep(0.02)

    def stale(self, handle: str) -> str:
        """``handle`` of a job that ran to its end under an instance since closed, made stale.

        The default is the handle itself; a backend that can still adopt a finished job
        by that handle (and would rightly collect its result) names a job that never
        existed instead.
        """
        return handle

    def _job(self, tmp_path: Path, exp_id: int, behaviour: str, slot: int = 0) -> Job:
        workdir = tmp_path / f"run{exp_id}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "job.py").write_text(CONTRACT_SCRIPT)
        return Job(
            experiment_id=exp_id,
            workdir=workdir,
            argv=(sys.executable, "job.py"),
            env={
                "AUTOSWARM_CONTRACT_BEHAVIOUR": behaviour,
                "AUTOSWARM_CONTRACT_NAP": f"{self.nap_s:g}",
                "AUTOSWARM_CONTRACT_STARTED": str(tmp_path / f"started{exp_id}"),
                "PATH": "/usr/bin:/bin",
            },
            timeout_s=self.timeout_s,
            slot=slot,
            log_path=tmp_path / "logs" / f"{exp_id}.log",
            budget_s=1.0,
        )

    def _reattachable(self, backend: Backend) -> Reattachable:
        assert isinstance(backend, Reattachable), f"{type(backend).__name__} is not Reattachable"
        return backend

    def _wait(self, backend: Backend, count: int, limit: float = 60.0) -> dict[int, RunResult]:
        return wait_results(backend, count, limit)

    def test_is_reattachable(self) -> None:
        b = self.make_backend(1)
        try:
            self._reattachable(b)
        finally:
            b.close()

    def test_a_job_outlives_its_orchestrator_and_is_collected_by_the_next(
        self, tmp_path: Path
    ) -> None:
        first = self.make_backend(2)
        job = self._job(tmp_path, 1, "nap", slot=1)
        handle = first.submit(job)
        self.until_running(first, job)
        self.abandon(first)

        second = self.make_backend(2)
        try:
            assert self._reattachable(second).reattach(job, handle), "the recorded handle suffices"
            got = self._wait(second, 1)
            assert set(got) == {1}, f"no result for the adopted job: {got}"
            r = got[1]
            assert r.exit_code == 0 and not r.timed_out and not r.cancelled, r
            assert r.metrics["val_bpb"] == pytest.approx(1.2345)
            assert r.finished_at >= r.started_at
            later = second.poll(timeout=0.3)
            assert not [x for x in later if x.experiment_id == 1], "reported once"
        finally:
            second.close()

    def test_unknown_and_stale_handles_are_refused_cleanly(self, tmp_path: Path) -> None:
        first = self.make_backend(1)
        try:
            issued = first.submit(self._job(tmp_path, 1, "ok"))
            assert set(self._wait(first, 1)) == {1}
        finally:
            first.close()

        b = self.make_backend(1)
        try:
            r = self._reattachable(b)
            job = self._job(tmp_path, 1, "ok")  # --resume offers the experiment its handle
            for handle in (
                "",
                "not json",
                "[1, 2]",
                json.dumps({}),
                json.dumps({"backend": "no-such-backend", "experiment_id": 1}),
                self.stale(issued),
            ):
                assert r.reattach(job, handle) is False, f"adopted {handle!r}"
            # The refusals left nothing behind: nothing is reported, and the experiment
            # runs again in its slot under the same id (what the scheduler does next).
            assert b.poll(timeout=0.2) == []
            b.submit(job)
            got = self._wait(b, 1)
            assert set(got) == {1} and got[1].exit_code == 0, got
        finally:
            b.close()


def contract_context(files: Mapping[str, str], commit: str = "0" * 40) -> Context:
    return Context(
        best_commit=commit,
        best_files=files,
        best_value=1.0,
        noise_sigma=0.002,
        metric="val_bpb",
        direction=Direction.MINIMIZE,
    )


class ProposerContract:
    """What the scheduler relies on from every proposer."""

    editable = ("train.py",)

    def make_proposer(self) -> Proposer:  # pragma: no cover - overridden
        raise NotImplementedError

    def files(self) -> dict[str, str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def test_propose_respects_n_and_shape(self) -> None:
        p = self.make_proposer()
        try:
            ctx = contract_context(self.files())
            for n in (1, 3):
                props = p.propose(ctx, n)
                assert len(props) <= n
                for prop in props:
                    assert prop.parent == ctx.best_commit
                    assert prop.description and "\n" not in prop.description
                    assert set(prop.files) <= set(self.editable)
                    assert any(prop.files[f] != ctx.best_files.get(f) for f in prop.files)
                    # A composite proposer (auto, hybrid) hands out its parts' proposals
                    # under their own names, so the ledger says which part made what.
                    parts = p.parts if isinstance(p, Composite) else ()
                    assert prop.proposer in {p.name, *(q.name for q in parts)}
            assert p.propose(ctx, 0) == []
        finally:
            p.close()

    def test_batch_is_distinct(self) -> None:
        p = self.make_proposer()
        try:
            props = p.propose(contract_context(self.files()), 4)
            contents = [tuple(sorted(x.files.items())) for x in props]
            assert len(set(contents)) == len(contents)
        finally:
            p.close()

    def test_observe_accepts_every_final_state(self) -> None:
        p = self.make_proposer()
        try:
            ctx = contract_context(self.files())
            props = p.propose(ctx, 1)
            for i, status in enumerate(
                (Status.KEEP, Status.DISCARD, Status.CRASH, Status.REJECTED, Status.FORGED)
            ):
                p.observe(
                    Experiment(
                        id=i + 1,
                        run_id=1,
                        kind=Kind.CANDIDATE,
                        status=status,
                        parent=ctx.best_commit,
                        commit="1" * 40,
                        description=props[0].description if props else "x",
                        proposer=p.name,
                        metrics={"val_bpb": 0.9} if status is Status.KEEP else {},
                        meta=dict(props[0].meta) if props else {},
                    )
                )
            assert isinstance(p.exhausted, bool)
        finally:
            p.close()
            p.close()


# ---------------------------------------------------------------------------
# The process runner, and every user of it

PROCESS_SCRIPT = """\
import json, os, subprocess, sys, time
b = os.environ["AUTOSWARM_CONTRACT_BEHAVIOUR"]
# A child in the same process group: whatever ends this process must end it too.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
pids = os.environ["AUTOSWARM_CONTRACT_PIDS"]
with open(pids + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}\\n")
os.replace(pids + ".tmp", pids)
print("HEAD-MARKER")
print("ENV>" + json.dumps(sorted(os.environ)) + "<ENV", flush=True)
if os.path.exists("train.py"):  # an agent's scratch copy: edit it, as an agent would
    with open("train.py", "a") as f:
        f.write("# edited by the contract script\\n")
if b == "hang":
    time.sleep(3600)
if b == "flood":
    sys.stdout.write(("x" * 99 + "\\n") * int(os.environ["AUTOSWARM_CONTRACT_FLOOD_LINES"]))
if b == "fail":
    print("Traceback (most recent call last):\\nValueError: broken on purpose", flush=True)
    sys.exit(3)
print("---")
print("val_bpb: 1.234500")
"""

_SECRETS = {
    "OPENAI_API_KEY": "sk-contract-secret",
    "HF_TOKEN": "hf_contract_secret",
    "MY_SERVICE_PASSWORD": "contract-secret",
    # Names no denylist knows: only an allowlist keeps them out.
    "DATABASE_URL": "postgres://user:contract-secret@db/prod",
    "SLACK_WEBHOOK_URL": "https://hooks.example/contract-secret",
}


@dataclass(frozen=True, kw_only=True)
class ProcessOutcome:
    """What a user of the process runner reported about one process, in common terms.

    ``exit_code`` is None when that user does not report it (or it never started).
    """

    exit_code: int | None
    timed_out: bool
    cancelled: bool
    duration_s: float
    log: str
    error: str = ""


class Launched(Protocol):
    """One process started through some user of the runner."""

    def cancel(self) -> None:
        """Stop it the way that user stops a process."""
        ...

    def outcome(self, limit: float) -> ProcessOutcome:
        """Wait up to ``limit`` seconds for its end (AssertionError if it does not come)."""
        ...

    def close(self) -> None:
        """Release what the launch made (backend, proposer, runner)."""
        ...


class RunnerLaunch:
    """:class:`ProcessContract`'s launch on a fresh :class:`~autoswarm.process.ProcessRunner`."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.runner = ProcessRunner()
        self.proc = self.runner.start(spec)

    def cancel(self) -> None:
        self.proc.cancel(grace_s=1.0)

    def outcome(self, limit: float) -> ProcessOutcome:
        r = self.proc.wait(limit)
        assert r is not None, f"no result within {limit}s"
        return ProcessOutcome(
            exit_code=r.exit_code,
            timed_out=r.timed_out,
            cancelled=r.cancelled,
            duration_s=r.duration_s,
            log=r.log_path.read_text(errors="replace"),
            error=r.error,
        )

    def close(self) -> None:
        self.runner.close()


class BackendLaunch:
    """:class:`ProcessContract`'s launch as a job in slot 0 of ``backend`` (closed by close)."""

    def __init__(self, backend: Backend, spec: ProcessSpec) -> None:
        assert spec.timeout_s is not None
        self.backend = backend
        self.job = Job(
            experiment_id=1,
            workdir=spec.cwd,
            argv=spec.argv,
            env=dict(spec.env),
            timeout_s=spec.timeout_s,
            slot=0,
            log_path=spec.log_path,
            budget_s=1.0,
        )
        backend.submit(self.job)

    def cancel(self) -> None:
        self.backend.cancel(self.job.experiment_id)

    def outcome(self, limit: float) -> ProcessOutcome:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for r in self.backend.poll(timeout=0.1):
                assert r.experiment_id == self.job.experiment_id
                return ProcessOutcome(
                    exit_code=r.exit_code,
                    timed_out=r.timed_out,
                    cancelled=r.cancelled,
                    duration_s=r.duration_s,
                    log=r.log_path.read_text(errors="replace"),
                    error=r.error,
                )
        raise AssertionError(f"no result within {limit}s")

    def close(self) -> None:
        self.backend.close()


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _gone(pid: int, limit: float = 5.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


class ProcessContract:
    """What every process autoswarm starts gets, whoever starts it (see autoswarm.process)."""

    timeout_s = 1.5  # the hang test waits this long
    log_max_bytes = 50_000  # the cap the launch's user applies (override if it has its own)

    def launch(self, spec: ProcessSpec) -> Launched:  # pragma: no cover - overridden
        raise NotImplementedError

    def _spec(
        self,
        tmp_path: Path,
        behaviour: str,
        *,
        timeout_s: float = 60.0,
        env: Mapping[str, str] | None = None,
        argv: tuple[str, ...] | None = None,
    ) -> ProcessSpec:
        script = tmp_path / "contract_process.py"
        script.write_text(PROCESS_SCRIPT)
        workdir = tmp_path / "work"
        workdir.mkdir(exist_ok=True)
        return ProcessSpec(
            argv=argv or (sys.executable, str(script)),
            cwd=workdir,
            env={
                "PATH": "/usr/bin:/bin",
                "AUTOSWARM_CONTRACT_BEHAVIOUR": behaviour,
                "AUTOSWARM_CONTRACT_PIDS": str(tmp_path / "pids"),
                "AUTOSWARM_CONTRACT_FLOOD_LINES": str(4 * self.log_max_bytes // 100),
                **(env or {}),
            },
            log_path=tmp_path / "logs" / "process.log",
            timeout_s=timeout_s,
            log_max_bytes=self.log_max_bytes,
        )

    def _pids(self, tmp_path: Path, limit: float = 30.0) -> tuple[int, int]:
        """The process's pid and its child's, once it has written them."""
        path = tmp_path / "pids"
        deadline = time.monotonic() + limit
        while True:
            with contextlib.suppress(OSError, ValueError):
                pid, child = (int(x) for x in path.read_text().split())
                return pid, child
            if time.monotonic() >= deadline:
                raise AssertionError(f"the process did not start within {limit}s")
            time.sleep(0.02)

    def _run(self, spec: ProcessSpec, limit: float = 60.0) -> ProcessOutcome:
        launched = self.launch(spec)
        try:
            return launched.outcome(limit)
        finally:
            launched.close()

    @pytest.fixture(autouse=True)
    def _no_leftovers(self, tmp_path: Path) -> Iterator[None]:
        yield
        # Whatever a failing test left running must not outlive it.
        with contextlib.suppress(AssertionError):
            for pid in self._pids(tmp_path, limit=0.0):
                if _alive(pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)

    def test_exit_zero_and_the_children_it_left_are_killed(self, tmp_path: Path) -> None:
        out = self._run(self._spec(tmp_path, "ok"))
        assert out.exit_code == 0 and not out.timed_out and not out.cancelled, out
        assert not out.error and "val_bpb: 1.234500" in out.log
        pid, child = self._pids(tmp_path)
        assert _gone(pid) and _gone(child), "a child left behind by a finished process must die"

    def test_non_zero_exit(self, tmp_path: Path) -> None:
        out = self._run(self._spec(tmp_path, "fail"))
        assert out.exit_code == 3 and not out.timed_out and not out.cancelled, out
        assert "broken on purpose" in out.log

    def test_a_hung_process_and_its_child_are_killed_at_the_timeout(self, tmp_path: Path) -> None:
        out = self._run(self._spec(tmp_path, "hang", timeout_s=self.timeout_s))
        assert out.timed_out and not out.cancelled and out.exit_code != 0, out
        assert out.duration_s == pytest.approx(self.timeout_s, abs=2.0)
        assert f"killed after the {self.timeout_s:g}s timeout" in out.log
        pid, child = self._pids(tmp_path)
        assert _gone(pid), "the process survived its timeout"
        assert _gone(child), "the process's child survived the timeout"

    def test_a_log_over_the_cap_is_cut_with_a_marker(self, tmp_path: Path) -> None:
        out = self._run(self._spec(tmp_path, "flood"))
        assert out.exit_code == 0, out
        assert len(out.log.encode()) <= self.log_max_bytes + 200
        assert out.log.startswith("HEAD-MARKER\n")
        assert "bytes of log cut here]" in out.log
        assert out.log.endswith("---\nval_bpb: 1.234500\n")  # the tail is kept

    def test_the_environment_has_no_credentials(self, tmp_path: Path) -> None:
        out = self._run(
            self._spec(tmp_path, "ok", env={**_SECRETS, "AUTOSWARM_CONTRACT_VISIBLE": "1"})
        )
        assert out.exit_code == 0, out
        seen = set(json.loads(out.log.split("ENV>", 1)[1].split("<ENV", 1)[0]))
        assert not seen & set(_SECRETS), seen & set(_SECRETS)
        assert "AUTOSWARM_CONTRACT_VISIBLE" in seen and "PATH" in seen
        assert "contract-secret" not in out.log and "contract_secret" not in out.log

    def test_cancel_kills_the_process_and_its_child(self, tmp_path: Path) -> None:
        launched = self.launch(self._spec(tmp_path, "hang"))
        try:
            pid, child = self._pids(tmp_path)
            started = time.monotonic()
            launched.cancel()
            out = launched.outcome(30.0)
        finally:
            launched.close()
        assert out.cancelled and not out.timed_out, out
        assert time.monotonic() - started < 10
        assert _gone(pid) and _gone(child)

    def test_a_command_that_cannot_start_is_an_outcome(self, tmp_path: Path) -> None:
        missing = str(tmp_path / "no-such-command")
        out = self._run(self._spec(tmp_path, "ok", argv=(missing, "x")))
        assert out.exit_code is None and not out.timed_out, out
        assert f"could not start {missing}" in out.error


__all__ = [
    "CONTRACT_SCRIPT",
    "PROCESS_SCRIPT",
    "BackendContract",
    "BackendLaunch",
    "Launched",
    "ProcessContract",
    "ProcessOutcome",
    "ProposerContract",
    "ReattachableContract",
    "RunnerLaunch",
    "contract_context",
    "fake_contract_outcome",
    "wait_results",
]
