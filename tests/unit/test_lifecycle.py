"""The run's lifecycle: recovering a job whose handle the orchestrator never recorded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoswarm.sandbox import kill_strays
from autoswarm.testing.proposers import ScriptedProposer, replace_in
from autoswarm.types import Kind, Status
from tests.conftest import Harness

pytestmark = pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc")

LR = ("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04"))


def _stray(workdir: Path, exp_id: int | None) -> subprocess.Popen[bytes]:
    """A process as a backend starts one: in the run directory, its own group."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if exp_id is not None:
        env["AUTOSWARM_EXPERIMENT"] = str(exp_id)
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        cwd=workdir,
        env=env,
        start_new_session=True,
    )


def _gone(p: subprocess.Popen[bytes]) -> bool:
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_kill_strays_kills_only_the_experiments_own_process(tmp_path: Path) -> None:
    mine = _stray(tmp_path / "runs" / "00007", 7)
    other_id = _stray(tmp_path / "runs" / "00007", 8)  # same directory, another id
    no_id = _stray(tmp_path / "runs" / "00007", None)  # e.g. a shell someone left there
    elsewhere = _stray(tmp_path / "runs" / "00009", 7)
    try:
        time.sleep(0.2)  # let them chdir
        assert kill_strays(tmp_path / "runs" / "00007", 7) == 1
        assert _gone(mine)
        assert other_id.poll() is None and no_id.poll() is None and elsewhere.poll() is None
    finally:
        for p in (mine, other_id, no_id, elsewhere):
            p.kill()
            p.wait()


def test_resume_kills_a_job_submitted_but_never_recorded(harness: Harness) -> None:
    # The orchestrator died between Backend.submit and Ledger.set_handle: the row is
    # RUNNING without a handle, and its process runs on in the run directory.
    sched, _, ledger = harness.scheduler(ScriptedProposer([LR]), slots=1)
    out = sched.run(tag="t")
    lr = next(e for e in ledger.experiments(out.run.id) if e.description == LR[0])
    ledger.requeue(lr.id, reason="test")
    ledger.mark_running(lr.id, slot=0, started_at=harness.clock.now(), log_path="x")
    assert ledger.handle(lr.id) is None and ledger.get(lr.id).status is Status.RUNNING
    ledger.close()
    stray = _stray(sched.ws.run_dir(lr.id), lr.id)
    try:
        time.sleep(0.2)
        sched2, backend2, ledger2 = harness.scheduler(ScriptedProposer([]), slots=1)
        sched2.run(tag="t", resume=True)
        assert _gone(stray), "the unrecorded job was killed on resume"
        assert backend2.cancelled[0][0] == lr.id  # the backend was asked too, by id
        assert [j.experiment_id for j in backend2.submitted][:1] == [lr.id]  # re-run once
        again = ledger2.get(lr.id)
        assert again.kind is Kind.CANDIDATE and again.status.is_finished()
        ledger2.close()
    finally:
        stray.kill()
        stray.wait()
