"""The process runner, and every user of it passing the same process contract.

The runner itself, the local backend, the Ray slot worker (without Ray: it is a plain
class) and the agent proposer each start processes through autoswarm.process; each
passes ProcessContract at its own surface. The Ray backend on a real cluster passes it
in tests/integration/test_ray_backend.py.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
import uuid
from dataclasses import FrozenInstanceError, replace
from pathlib import Path
from typing import Any

import pytest

from autoswarm.backends.local import LocalBackend
from autoswarm.backends.ray import SlotWorker, read_snapshot
from autoswarm.process import (
    DEFAULT_LOG_MAX_BYTES,
    CappedLog,
    Ending,
    ProcessResult,
    ProcessRunner,
    ProcessSpec,
    child_env,
)
from autoswarm.proposers.agent import AgentProposer
from autoswarm.testing.contract import (
    BackendLaunch,
    Launched,
    ProcessContract,
    ProcessOutcome,
    RunnerLaunch,
    contract_context,
)
from autoswarm.testing.synthetic import TRAIN_PY

# ---------------------------------------------------------------------------
# Every user passes the contract


class TestProcessRunner(ProcessContract):
    def launch(self, spec: ProcessSpec) -> Launched:
        return RunnerLaunch(spec)


class TestLocalBackendProcesses(ProcessContract):
    def launch(self, spec: ProcessSpec) -> Launched:
        backend = LocalBackend(1, gpus=[], kill_grace_s=0.5, log_max_bytes=self.log_max_bytes)
        return BackendLaunch(backend, spec)


class SlotWorkerLaunch:
    """A run on a Ray slot worker, called as Ray would call it (from its own threads)."""

    def __init__(self, spec: ProcessSpec) -> None:
        assert spec.timeout_s is not None
        self.worker = SlotWorker(f"contract-{uuid.uuid4().hex[:8]}", kill_grace_s=0.5)
        self.token = "1-contract"
        self.result: dict[str, Any] = {}
        args = (
            self.token,
            read_snapshot(spec.cwd),
            list(spec.argv),
            dict(spec.env),
            spec.timeout_s,
            spec.log_max_bytes,
            1,
        )
        self.thread = threading.Thread(
            target=lambda: self.result.update(self.worker.run(*args)), daemon=True
        )
        self.thread.start()

    def cancel(self) -> None:
        self.worker.cancel(self.token)

    def outcome(self, limit: float) -> ProcessOutcome:
        self.thread.join(limit)
        assert self.result, f"no result within {limit}s"
        r = self.result
        return ProcessOutcome(
            exit_code=r["exit_code"],
            timed_out=r["timed_out"],
            cancelled=r["cancelled"],
            duration_s=r["finished_at"] - r["started_at"],
            log=bytes(r["log"]).decode(errors="replace"),
            error=r["error"],
        )

    def close(self) -> None:
        self.worker.shutdown()


class TestRaySlotWorkerProcesses(ProcessContract):
    def launch(self, spec: ProcessSpec) -> Launched:
        return SlotWorkerLaunch(spec)


class AgentLaunch:
    """One attempt of an agent proposer whose command is the contract's process.

    The proposer reports an attempt as a proposal (the process exited 0 and edited
    train.py) or as a failure message; a cancel is its close().
    """

    def __init__(self, spec: ProcessSpec) -> None:
        assert spec.timeout_s is not None
        self.log_dir = spec.log_path.parent
        self.proposer = AgentProposer(
            command=spec.argv,
            editable=("train.py",),
            timeout=spec.timeout_s,
            environ=spec.env,
            max_failures=1,
            concurrency=1,
            log_dir=self.log_dir,
        )
        self.ctx = contract_context({"train.py": TRAIN_PY})
        self.started = time.monotonic()
        self.cancelled = False
        self.got = self.proposer.propose(self.ctx, 1)

    def cancel(self) -> None:
        self.cancelled = True
        self.proposer.close()

    def outcome(self, limit: float) -> ProcessOutcome:
        p = self.proposer
        deadline = time.monotonic() + limit
        while not (self.got or p.failures or self.cancelled) and time.monotonic() < deadline:
            time.sleep(0.05)
            self.got += p.propose(self.ctx, 1)
        duration = time.monotonic() - self.started
        log_file = self.log_dir / "agent-0001.log"
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        if self.got:
            meta = self.got[0].meta["agent"]
            assert self.got[0].files["train.py"] != TRAIN_PY
            return ProcessOutcome(
                exit_code=meta["exit_code"],
                timed_out=False,
                cancelled=False,
                duration_s=meta["seconds"],
                log=log,
            )
        if p.failures:
            failure = p.failures[0]
            code = re.search(r"exit code (-?\d+)", failure)
            timed_out = "timed out after" in failure
            return ProcessOutcome(
                exit_code=int(code.group(1)) if code else None,
                timed_out=timed_out,
                cancelled=False,
                duration_s=duration,
                log=log,
                error="" if code or timed_out else failure,
            )
        assert self.cancelled, f"the agent proposer neither proposed nor failed within {limit}s"
        assert p.failures == []  # being stopped is not a failure
        return ProcessOutcome(
            exit_code=None, timed_out=False, cancelled=True, duration_s=duration, log=log
        )

    def close(self) -> None:
        self.proposer.close()


class TestAgentProposerProcesses(ProcessContract):
    log_max_bytes = DEFAULT_LOG_MAX_BYTES  # an agent's log has the runner's default cap

    def launch(self, spec: ProcessSpec) -> Launched:
        return AgentLaunch(spec)


# ---------------------------------------------------------------------------
# The runner's own API


def spec_of(tmp_path: Path, code: str, **kw: Any) -> ProcessSpec:
    return ProcessSpec(
        argv=(sys.executable, "-c", code),
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        log_path=tmp_path / "out.log",
        **kw,
    )


@pytest.fixture
def runner():
    r = ProcessRunner()
    yield r
    r.close()


def test_result_is_a_frozen_record(tmp_path: Path, runner: ProcessRunner) -> None:
    r = runner.run(spec_of(tmp_path, "print('hi')"))
    assert isinstance(r, ProcessResult) and r.ending is Ending.EXITED
    assert r.exit_code == 0 and r.pid and not r.log_truncated and not r.error
    assert r.finished_at >= r.started_at and r.duration_s >= 0
    assert r.log_path.read_text() == "hi\n"
    with pytest.raises(FrozenInstanceError):
        r.exit_code = 1  # type: ignore[misc]


def test_timeout_is_a_sigkill_of_the_group(tmp_path: Path, runner: ProcessRunner) -> None:
    r = runner.run(spec_of(tmp_path, "import time; time.sleep(60)", timeout_s=0.5))
    assert r.ending is Ending.TIMED_OUT and r.timed_out and not r.cancelled
    assert r.exit_code == -signal.SIGKILL
    assert r.log_path.read_text().endswith("autoswarm: killed after the 0.5s timeout\n")


def test_cancel_escalates_to_sigkill_after_the_grace(tmp_path: Path, runner: ProcessRunner) -> None:
    code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    proc = runner.start(spec_of(tmp_path, code))
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "out.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    proc.cancel(grace_s=0.3)
    r = proc.wait(10)
    assert r is not None and r.ending is Ending.CANCELLED
    assert r.exit_code == -signal.SIGKILL and not r.timed_out
    assert 0.25 <= time.monotonic() - started < 5
    proc.cancel()  # finished: nothing happens


def test_on_exit_gets_the_result_once_it_is_done(tmp_path: Path, runner: ProcessRunner) -> None:
    seen: list[ProcessResult] = []
    event = threading.Event()

    def on_exit(res: ProcessResult) -> None:
        seen.append(res)
        event.set()

    proc = runner.start(spec_of(tmp_path, "import sys; sys.exit(4)"), on_exit=on_exit)
    assert event.wait(10)
    assert proc.done() and seen == [proc.result] and seen[0].exit_code == 4


def test_a_command_that_cannot_start(tmp_path: Path, runner: ProcessRunner) -> None:
    seen: list[ProcessResult] = []
    spec = ProcessSpec(
        argv=("autoswarm-no-such-command",),
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        log_path=tmp_path / "out.log",
    )
    proc = runner.start(spec, on_exit=seen.append)
    assert proc.done() and proc.pid is None
    r = proc.wait(0)
    assert r is not None and r.ending is Ending.NOT_STARTED and r.exit_code is None
    assert r.error.startswith("could not start autoswarm-no-such-command: ")
    assert "could not start" in r.log_path.read_text()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [r]
    # With die_with_parent (setpriv execs the command) a missing command reads the same.
    r2 = runner.run(replace(spec, die_with_parent=True))
    assert r2.ending is Ending.NOT_STARTED and r2.error == r.error


def test_log_cap_sets_truncated(tmp_path: Path, runner: ProcessRunner) -> None:
    code = "import sys; sys.stdout.write('y' * 200_000); print('END')"
    r = runner.run(spec_of(tmp_path, code, log_max_bytes=20_000))
    assert r.log_truncated and r.exit_code == 0
    text = r.log_path.read_text()
    assert len(text) <= 20_200 and text.endswith("END\n") and "bytes of log cut here]" in text


def test_environment_is_scrubbed_but_pass_env_gets_through(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "ANTHROPIC_API_KEY": "a", "OPENAI_API_KEY": "o", "HF_TOKEN": "h"}
    spec = ProcessSpec(
        argv=("x",), cwd=tmp_path, env=base, log_path=tmp_path / "l", pass_env=("OPENAI_API_KEY",)
    )
    assert child_env(spec) == {"PATH": "/bin", "OPENAI_API_KEY": "o"}
    base["PATH"] = "/changed"  # the spec holds its own frozen copy
    assert spec.env["PATH"] == "/bin"
    with pytest.raises(TypeError):
        spec.env["PATH"] = "x"  # type: ignore[index]


def test_spec_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="argv is empty"):
        ProcessSpec(argv=(), cwd=tmp_path, env={}, log_path=tmp_path / "l")
    with pytest.raises(ValueError, match="nice"):
        ProcessSpec(argv=("x",), cwd=tmp_path, env={}, log_path=tmp_path / "l", nice=20)


def test_nice_and_cpus_apply_to_the_process(tmp_path: Path, runner: ProcessRunner) -> None:
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    code = "import os; print('nice', os.nice(0)); print('cpus', sorted(os.sched_getaffinity(0)))"
    r = runner.run(spec_of(tmp_path, code, nice=5, cpus=tuple(cores[:1])))
    text = r.log_path.read_text()
    assert f"nice {min(19, os.nice(0) + 5)}" in text
    if cores:
        assert f"cpus {cores[:1]}" in text


def test_close_kills_what_runs_and_the_runner_can_start_again(tmp_path: Path) -> None:
    runner = ProcessRunner()
    procs = [runner.start(spec_of(tmp_path, "import time; time.sleep(60)")) for _ in range(3)]
    started = time.monotonic()
    runner.close()
    assert time.monotonic() - started < 10
    for p in procs:
        r = p.result
        assert r is not None and r.cancelled and r.exit_code == -signal.SIGKILL
    again = runner.run(spec_of(tmp_path, "print('again')"))
    assert again.exit_code == 0
    runner.close()
    runner.close()


def test_capped_log_keeps_head_and_tail(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "a.log", 20_000)
    log.write(b"HEAD\n")
    for _ in range(100):
        log.write(b"z" * 999 + b"\n")
    log.write(b"TAIL\n")
    log.close()
    text = (tmp_path / "a.log").read_text()
    assert log.truncated and text.startswith("HEAD\n") and text.endswith("TAIL\n")
    assert f"[autoswarm: {log.dropped} bytes of log cut here]" in text
    small = CappedLog(tmp_path / "b.log", 20_000)
    small.write(b"short\n")
    small.close()
    assert not small.truncated and (tmp_path / "b.log").read_text() == "short\n"


def test_a_grandchild_that_escaped_with_the_pipe_does_not_hold_the_result(tmp_path: Path) -> None:
    """Without a sandbox a setsid'ed grandchild outlives the group and keeps stdout open;
    the result still comes a few seconds after the main process exits."""
    import contextlib
    import uuid

    from autoswarm.doctor import marked

    marker = f"escaped-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import os, time\\nos.setsid()\\n"
        f"time.sleep(60)  # {marker}'])\n"
        "print('bye')\n"
    )
    spec = ProcessSpec(
        argv=(sys.executable, "-c", code),
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        log_path=tmp_path / "log",
    )
    started = time.monotonic()
    try:
        with ProcessRunner() as runner:
            res = runner.run(spec)
        assert res.exit_code == 0 and "bye" in res.log_path.read_text()
        assert time.monotonic() - started < 30  # not the grandchild's 60 s
    finally:
        for pid in marked(marker):  # only the grandchild this test started, by its id
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
