"""The SkyPilot backend's state machine, driven through the fake SkyPilot SDK.

The fake stands in for the cloud only: tasks are parsed by SkyPilot's real ``sky.Task``,
statuses and errors are SkyPilot's own. Run:
.venv/bin/pytest -q tests/unit/test_skypilot_backend.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autoswarm.backends.base import Backend, Reattachable
from autoswarm.backends.skymodes import sdk_errors
from autoswarm.backends.skypilot import (
    SkyPilotBackend,
    SkyState,
    down_recorded,
    read_state,
)
from autoswarm.backends.skytask import parse_pool
from autoswarm.config import PoolConfig, TierConfig
from autoswarm.errors import BackendCallError, BackendError, ConfigError
from autoswarm.testing.contract import BackendContract, ReattachableContract
from autoswarm.testing.fakesky import FakeOutcome, FakeSky
from autoswarm.types import Job, RunResult

pytest.importorskip("sky")
pytestmark = pytest.mark.skypilot

SUMMARY = "step 10 loss 2.0\n---\nval_bpb:          0.997900\npeak_vram_mb:     45060.2\n"


def _backend(
    tmp_path: Path,
    fake: FakeSky,
    *,
    mode: str = "clusters",
    slots: int = 2,
    **options: Any,
) -> SkyPilotBackend:
    opts = parse_pool(
        PoolConfig(
            backend="skypilot",
            options={"mode": mode, "poll_interval_s": 0.02, "timeout_slack_s": 0, **options},
            tiers=(TierConfig(name="h100", accelerator="H100:1", slots=slots),),
        )
    )
    return SkyPilotBackend(
        opts, state_dir=tmp_path / "state", tag="t", prepare=("{python}", "prepare.py"), sdk=fake
    )


def _job(tmp_path: Path, exp_id: int, slot: int = 0, timeout_s: float = 60.0) -> Job:
    workdir = tmp_path / "runs" / str(exp_id)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "train.py").write_text("print('hi')\n")
    return Job(
        experiment_id=exp_id,
        workdir=workdir,
        argv=(sys.executable, "train.py"),
        env={"AUTOSWARM_BUDGET": "1", "AUTOSWARM_EXPERIMENT": str(exp_id)},
        timeout_s=timeout_s,
        slot=slot,
        log_path=tmp_path / "logs" / f"{exp_id}.log",
        budget_s=1.0,
        tier="h100",
    )


def _wait(b: Backend, count: int, limit: float = 10.0) -> dict[int, RunResult]:
    got: dict[int, RunResult] = {}
    deadline = time.monotonic() + limit
    while len(got) < count and time.monotonic() < deadline:
        for r in b.poll(timeout=0.05):
            assert r.experiment_id not in got, "a job must be reported once"
            got[r.experiment_id] = r
    assert len(got) == count, f"only {sorted(got)} finished"
    return got


def _until(cond: Any, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# The contract every backend passes


class TestSkyPilotContract(BackendContract):
    """The scheduler's contract, with the cloud replaced by the fake SDK.

    The fake reads the contract's AUTOSWARM_CONTRACT_BEHAVIOUR from the task's envs (forwarded
    with ``forward_env``); a "hang" job never ends on its own and is stopped by the
    backend's timeout watchdog, as a real SkyPilot job would be.
    """

    @staticmethod
    def _outcome(task: Any) -> FakeOutcome:
        b = task.envs["AUTOSWARM_CONTRACT_BEHAVIOUR"]
        if b == "hang":
            return FakeOutcome(duration=None)
        if b == "fail":
            return FakeOutcome(duration=0.05, exit_code=3, log="ValueError: broken on purpose\n")
        return FakeOutcome(duration=0.05, log="---\nval_bpb: 1.234500\npeak_vram_mb: 10.0\n")

    def make_backend(self, slots: int) -> Backend:
        import tempfile

        opts = parse_pool(
            PoolConfig(
                backend="skypilot",
                options={
                    "poll_interval_s": 0.05,
                    "timeout_slack_s": 0,
                    "forward_env": ["AUTOSWARM_CONTRACT_BEHAVIOUR"],
                },
                tiers=(TierConfig(name="h100", accelerator="H100:1", slots=slots),),
            )
        )
        state = Path(tempfile.mkdtemp(prefix="autoswarm-sky-"))
        return SkyPilotBackend(opts, state_dir=state, sdk=FakeSky(self._outcome))


class TestSkyPilotReattachableClusters(ReattachableContract):
    """``--resume``'s contract on the fake cloud: one FakeSky and state directory per test."""

    mode = "clusters"

    @pytest.fixture(autouse=True)
    def _world(self, tmp_path: Path) -> None:
        self.fake = FakeSky(self._outcome)
        self.state = tmp_path / "state"

    @staticmethod
    def _outcome(task: Any) -> FakeOutcome:
        b = task.envs["AUTOSWARM_CONTRACT_BEHAVIOUR"]
        nap = float(task.envs["AUTOSWARM_CONTRACT_NAP"]) if b == "nap" else 0.05
        return FakeOutcome(duration=nap, log="---\nval_bpb: 1.234500\n")

    def make_backend(self, slots: int) -> Backend:
        opts = parse_pool(
            PoolConfig(
                backend="skypilot",
                options={
                    "mode": self.mode,
                    "poll_interval_s": 0.05,
                    "timeout_slack_s": 0,
                    "forward_env": ["AUTOSWARM_CONTRACT_BEHAVIOUR", "AUTOSWARM_CONTRACT_NAP"],
                },
                tiers=(TierConfig(name="h100", accelerator="H100:1", slots=slots),),
            )
        )
        return SkyPilotBackend(opts, state_dir=self.state, tag="t", sdk=self.fake)

    def abandon(self, backend: Backend) -> None:
        assert isinstance(backend, SkyPilotBackend)
        backend._stop.set()  # no close(): nothing cancelled or downed

    def until_running(self, backend: Backend, job: Job, limit: float = 30.0) -> None:
        assert isinstance(backend, SkyPilotBackend)
        _until(lambda: backend.states[job.experiment_id][-1] is SkyState.RUNNING, limit)


class TestSkyPilotReattachableJobs(TestSkyPilotReattachableClusters):
    mode = "jobs"

    def stale(self, handle: str) -> str:
        # Managed jobs keep their finished records (adopting one would collect its result):
        # a stale handle names a job the controller never had.
        return json.dumps({**json.loads(handle), "job_id": 9999, "name": "autoswarm-t-e9999"})


# ---------------------------------------------------------------------------
# Clusters mode


def test_launch_then_exec_success_with_metrics(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=0.05, log=SUMMARY))
    b = _backend(tmp_path, fake, slots=1)
    assert isinstance(b, Backend) and isinstance(b, Reattachable)
    try:
        handle = json.loads(b.submit(_job(tmp_path, 1)))
        assert handle == {
            "backend": "skypilot",
            "mode": "clusters",
            "cluster": "autoswarm-t-h100-0",
            "name": "autoswarm-t-e1",
            "job_id": None,
        }
        r1 = _wait(b, 1)[1]
        b.submit(_job(tmp_path, 2))
        r2 = _wait(b, 1)[2]
    finally:
        b.close()
    for r in (r1, r2):
        assert r.exit_code == 0 and not r.timed_out and not r.cancelled and not r.error
        assert r.metrics == {"val_bpb": 0.9979, "peak_vram_mb": 45060.2}
        assert "autoswarm: exit code 0" in r.log_path.read_text()
    # one provisioning (with setup), then `sky exec` on the same cluster
    assert [c["cluster_name"] for c in fake.called("launch")] == ["autoswarm-t-h100-0"]
    assert [c["cluster_name"] for c in fake.called("exec")] == ["autoswarm-t-h100-0"]
    # RUNNING is seen only if a status poll falls inside the job's 50 ms (not on a loaded
    # machine): the states are an ordered subset of the life, from launch to success.
    assert b.states[1][0] is SkyState.LAUNCHING and b.states[1][-1] is SkyState.SUCCEEDED
    assert b.states[1] in (
        [SkyState.LAUNCHING, SkyState.RUNNING, SkyState.SUCCEEDED],
        [SkyState.LAUNCHING, SkyState.SUCCEEDED],
    )
    assert all(c["follow"] is False for c in fake.called("tail_logs"))


def test_failure_is_data(tmp_path: Path) -> None:
    fake = FakeSky(
        lambda task: FakeOutcome(
            duration=0.02, exit_code=1, log="Traceback\nRuntimeError: CUDA out of memory\n"
        )
    )
    b = _backend(tmp_path, fake)
    try:
        b.submit(_job(tmp_path, 1))
        r = _wait(b, 1)[1]
    finally:
        b.close()
    assert r.exit_code == 1 and not r.metrics and not r.cancelled
    assert "CUDA out of memory" in r.log_path.read_text()
    assert b.states[1][-1] is SkyState.FAILED


def test_setup_failure_is_reported(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(setup_fails=True))
    b = _backend(tmp_path, fake)
    try:
        b.submit(_job(tmp_path, 1))
        r = _wait(b, 1)[1]
    finally:
        b.close()
    assert r.exit_code == 1 and "setup failed" in r.error


def test_cluster_preemption_relaunches_and_reruns(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=None))
    b = _backend(tmp_path, fake, slots=1)
    try:
        b.submit(_job(tmp_path, 1))
        _until(lambda: b.states[1][-1] is SkyState.RUNNING)
        first = fake.job_by_name("autoswarm-t-e1").job_id
        fake.preempt_cluster("autoswarm-t-h100-0")
        _until(lambda: fake.job_by_name("autoswarm-t-e1").job_id != first)
        _until(lambda: b.states[1][-1] is SkyState.RUNNING)
        fake.finish(fake.job_by_name("autoswarm-t-e1").job_id, log=SUMMARY)
        r = _wait(b, 1)[1]
    finally:
        b.close()
    assert r.exit_code == 0 and r.metrics["val_bpb"] == pytest.approx(0.9979)
    assert b.states[1] == [
        SkyState.LAUNCHING,
        SkyState.RUNNING,
        SkyState.PREEMPTED,
        SkyState.RECOVERING,
        SkyState.RUNNING,
        SkyState.SUCCEEDED,
    ]
    assert len(fake.called("launch")) == 2, "the preempted cluster is provisioned again"
    assert "is gone" in r.log_path.read_text()


def test_repeated_preemption_gives_up_with_a_reason(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=None))
    b = _backend(tmp_path, fake, slots=1, max_relaunches=1)
    try:
        b.submit(_job(tmp_path, 1))
        for _ in range(2):
            _until(lambda: b.states[1][-1] is SkyState.RUNNING)
            fake.preempt_cluster("autoswarm-t-h100-0")
            _until(lambda: b.states[1][-1] is not SkyState.RUNNING)
        r = _wait(b, 1)[1]
    finally:
        b.close()
    assert r.exit_code is None and not r.cancelled
    assert "gave up after 1 relaunch(es)" in r.error and "max_relaunches" in r.error


def test_launch_failure_is_retried(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=0.02, log=SUMMARY))
    fake.fail_next_launches(1)
    b = _backend(tmp_path, fake)
    try:
        b.submit(_job(tmp_path, 1))
        r = _wait(b, 1)[1]
    finally:
        b.close()
    assert r.exit_code == 0 and r.metrics
    assert "ResourcesUnavailableError" in r.log_path.read_text()


def test_launch_that_never_succeeds_is_a_crash_not_an_exception(tmp_path: Path) -> None:
    fake = FakeSky()
    fake.fail_next_launches(10)
    b = _backend(tmp_path, fake, max_relaunches=2)
    try:
        b.submit(_job(tmp_path, 1))
        r = _wait(b, 1)[1]
    finally:
        b.close()
    assert r.exit_code is None and "after 3 attempt(s)" in r.error and "sky check" in r.error


@pytest.mark.parametrize("mode", ["clusters", "jobs"])
def test_cancel(tmp_path: Path, mode: str) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=None))
    b = _backend(tmp_path, fake, mode=mode)
    try:
        b.submit(_job(tmp_path, 1))
        _until(lambda: b.states[1][-1] is SkyState.RUNNING)
        b.cancel(1)
        r = _wait(b, 1)[1]
        remote = fake.job_by_name("autoswarm-t-e1")
    finally:
        b.close()
    assert r.cancelled and not r.metrics
    calls = fake.called("jobs.cancel" if mode == "jobs" else "cancel")
    assert calls and calls[0]["job_ids"] == [remote.job_id]
    assert remote.status == "CANCELLED"


def test_poll_does_not_wait_for_slow_sdk_calls(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=0.01, log=SUMMARY), get_latency_s=0.4)
    b = _backend(tmp_path, fake)
    try:
        t0 = time.monotonic()
        b.submit(_job(tmp_path, 1))
        assert b.poll(timeout=0) == []
        assert time.monotonic() - t0 < 0.3, "submit and poll must not wait on SkyPilot"
        _wait(b, 1)
    finally:
        b.close()


def test_teardown_on_close(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=0.02, log=SUMMARY))
    b = _backend(tmp_path, fake, slots=2)
    b.submit(_job(tmp_path, 1, slot=0))
    b.submit(_job(tmp_path, 2, slot=1))
    _wait(b, 2)
    assert sorted(read_state(tmp_path / "state")["clusters"]) == [
        "autoswarm-t-h100-0",
        "autoswarm-t-h100-1",
    ]
    b.close()
    b.close()
    assert sorted(c["cluster_name"] for c in fake.called("down")) == [
        "autoswarm-t-h100-0",
        "autoswarm-t-h100-1",
    ]
    assert fake.clusters == {}
    assert read_state(tmp_path / "state") == {"clusters": {}, "jobs": {}}


def test_close_cancels_running_jobs_then_downs(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=None))
    b = _backend(tmp_path, fake, slots=1)
    b.submit(_job(tmp_path, 1))
    _until(lambda: b.states[1][-1] is SkyState.RUNNING)
    b.close()
    (r,) = b.poll(timeout=0)
    assert r.cancelled
    assert fake.called("cancel") and fake.called("down")


def test_kept_clusters_go_with_autoswarm_down(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=0.02, log=SUMMARY))
    b = _backend(tmp_path, fake, slots=1, keep_clusters=True)
    b.submit(_job(tmp_path, 1))
    _wait(b, 1)
    b.close()
    assert not fake.called("down") and "autoswarm-t-h100-0" in fake.clusters
    downed, failed = down_recorded(tmp_path / "state", sdk=fake)
    assert downed == ["autoswarm-t-h100-0"] and failed == []
    assert fake.clusters == {}
    assert down_recorded(tmp_path / "state", sdk=fake) == ([], [])


def test_slot_and_tier_mismatch_is_a_bug(tmp_path: Path) -> None:
    from dataclasses import replace

    from autoswarm.errors import BackendError

    b = _backend(tmp_path, FakeSky())
    try:
        with pytest.raises(BackendError, match="belongs to tier 'h100'"):
            b.submit(replace(_job(tmp_path, 1), tier="h200"))
        with pytest.raises(BackendError, match="slot 5 does not exist"):
            b.submit(replace(_job(tmp_path, 1), slot=5))
    finally:
        b.close()


# ---------------------------------------------------------------------------
# Jobs mode


def test_managed_job_preemption_and_recovery(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=None))
    b = _backend(tmp_path, fake, mode="jobs", use_spot=True, job_recovery={"strategy": "FAILOVER"})
    try:
        b.submit(_job(tmp_path, 1))
        _until(lambda: b.states[1][-1] is SkyState.RUNNING)
        (launch,) = fake.called("jobs.launch")
        (res,) = list(launch["task"].resources)
        assert res.use_spot and res.job_recovery == {"strategy": "FAILOVER"}
        job_id = fake.job_by_name("autoswarm-t-e1").job_id
        fake.preempt_managed(job_id, recover_after=0.2)
        _until(lambda: b.states[1][-1] is SkyState.RECOVERING)
        _until(lambda: b.states[1][-1] is SkyState.RUNNING)
        fake.finish(job_id, log=SUMMARY)
        r = _wait(b, 1)[1]
    finally:
        b.close()
    assert r.exit_code == 0 and r.metrics["val_bpb"] == pytest.approx(0.9979)
    assert b.states[1] == [
        SkyState.LAUNCHING,
        SkyState.RUNNING,
        SkyState.PREEMPTED,
        SkyState.RECOVERING,
        SkyState.RUNNING,
        SkyState.SUCCEEDED,
    ]
    assert len(fake.called("jobs.launch")) == 1, "SkyPilot recovers managed jobs itself"
    assert not fake.called("launch") and not fake.called("down")


def test_managed_job_failure(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=0.02, exit_code=2, log="boom\n"))
    b = _backend(tmp_path, fake, mode="jobs")
    try:
        b.submit(_job(tmp_path, 1))
        r = _wait(b, 1)[1]
    finally:
        b.close()
    assert r.exit_code == 2 and "managed job ended FAILED" in r.error
    assert "boom" in r.log_path.read_text()


# ---------------------------------------------------------------------------
# The SDK's failures are mapped once (skymodes.sdk_errors) and become data


def test_sdk_errors_maps_every_failure_to_one_type() -> None:
    import sky.exceptions

    fake = FakeSky()
    with (
        pytest.raises(BackendCallError) as gone,
        sdk_errors(fake, "`sky down c`", hint="run it by hand"),
    ):
        raise sky.exceptions.ClusterDoesNotExist("cluster c does not exist")
    assert gone.value.gone
    assert str(gone.value) == (
        "`sky down c` failed (ClusterDoesNotExist: cluster c does not exist): run it by hand"
    )
    with pytest.raises(BackendCallError) as failed, sdk_errors(fake, "`sky jobs queue`"):
        raise ConnectionError("refused\nand a long explanation")
    assert not failed.value.gone and failed.value.reason == "ConnectionError: refused"
    assert isinstance(failed.value, BackendError) and "`sky api status`" in str(failed.value)
    with (
        pytest.raises(ConfigError, match="autoswarm's own"),
        sdk_errors(fake, "x"),
    ):  # passes through as it is
        raise ConfigError("autoswarm's own")


@pytest.mark.parametrize("mode", ["clusters", "jobs"])
def test_failed_status_polls_are_tried_again(tmp_path: Path, mode: str) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=0.2, log=SUMMARY))
    poll = "jobs.queue_v2" if mode == "jobs" else "job_status"
    fake.fail_next(poll, 3)
    b = _backend(tmp_path, fake, mode=mode)
    try:
        b.submit(_job(tmp_path, 1))
        r = _wait(b, 1)[1]
    finally:
        b.close()
    assert r.exit_code == 0 and r.metrics["val_bpb"] == pytest.approx(0.9979) and not r.error
    assert len(fake.called(poll)) > 3
    assert b.states[1][-1] is SkyState.SUCCEEDED


@pytest.mark.parametrize("mode", ["clusters", "jobs"])
def test_failed_cancel_and_log_download_are_notes(tmp_path: Path, mode: str) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=None))
    b = _backend(tmp_path, fake, mode=mode)
    prefix = "jobs." if mode == "jobs" else ""
    try:
        b.submit(_job(tmp_path, 1))
        _until(lambda: b.states[1][-1] is SkyState.RUNNING)
        fake.fail_next(prefix + "cancel")
        fake.fail_next(prefix + "tail_logs")
        b.cancel(1)
        r = _wait(b, 1)[1]
    finally:
        b.close()
    assert r.cancelled and not r.metrics
    text = r.log_path.read_text()
    assert "autoswarm: cancel failed: ConnectionError: fake: could not reach the API server" in text
    assert "autoswarm: could not download the log: ConnectionError: fake:" in text


def test_a_cluster_that_will_not_go_down_stays_recorded(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=0.02, log=SUMMARY))
    b = _backend(tmp_path, fake, slots=1)
    b.submit(_job(tmp_path, 1))
    _wait(b, 1)
    fake.fail_next("down")
    b.close()  # logs the failure; does not raise
    assert list(read_state(tmp_path / "state")["clusters"]) == ["autoswarm-t-h100-0"]
    assert down_recorded(tmp_path / "state", sdk=fake) == (["autoswarm-t-h100-0"], [])
    assert fake.clusters == {}


# ---------------------------------------------------------------------------
# Resume: a new orchestrator re-attaches to jobs the dead one started


@pytest.mark.parametrize("mode", ["clusters", "jobs"])
def test_reattach_after_restart(tmp_path: Path, mode: str) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=None))
    first = _backend(tmp_path, fake, mode=mode)
    job = _job(tmp_path, 1)
    handle = first.submit(job)
    _until(lambda: first.states[1][-1] is SkyState.RUNNING)
    first._stop.set()  # the orchestrator dies: no close(), nothing cancelled or downed
    assert read_state(tmp_path / "state")["jobs"]["1"]["job_id"] is not None

    second = _backend(tmp_path, fake, mode=mode)
    try:
        assert second.reattach(job, handle), "the handle (without job id) + state file suffice"
        assert not second.reattach(_job(tmp_path, 9), json.dumps({"backend": "ray"}))
        gone = {"backend": "skypilot", "mode": mode, "cluster": "autoswarm-t-h100-1"}
        assert not second.reattach(_job(tmp_path, 8, slot=1), json.dumps({**gone, "job_id": 99}))
        fake.finish(fake.job_by_name("autoswarm-t-e1").job_id, log=SUMMARY)
        r = _wait(second, 1)[1]
    finally:
        second.close()
    assert r.exit_code == 0 and r.metrics["val_bpb"] == pytest.approx(0.9979)
    launches = fake.called("jobs.launch" if mode == "jobs" else "launch")
    assert len(launches) == 1, "nothing duplicated"
    if mode == "clusters":
        assert [c["cluster_name"] for c in fake.called("down")] == ["autoswarm-t-h100-0"]


@pytest.mark.parametrize("mode", ["clusters", "jobs"])
def test_reattach_while_the_api_server_is_down_is_refused(tmp_path: Path, mode: str) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=None))
    first = _backend(tmp_path, fake, mode=mode)
    job = _job(tmp_path, 1)
    handle = first.submit(job)
    _until(lambda: first.states[1][-1] is SkyState.RUNNING)
    first._stop.set()
    second = _backend(tmp_path, fake, mode=mode)
    try:
        fake.fail_next("jobs.queue_v2" if mode == "jobs" else "job_status")
        assert not second.reattach(job, handle), "a failed lookup is a refusal, not a crash"
        assert second.reattach(job, handle), "and the next try succeeds"
        fake.finish(fake.job_by_name("autoswarm-t-e1").job_id, log=SUMMARY)
        assert _wait(second, 1)[1].exit_code == 0
    finally:
        second.close()


def test_orphan_cancel_by_handle(tmp_path: Path) -> None:
    fake = FakeSky(lambda task: FakeOutcome(duration=None))
    first = _backend(tmp_path, fake, mode="jobs")
    handle = first.submit(_job(tmp_path, 1))
    _until(lambda: first.states[1][-1] is SkyState.RUNNING)
    first._stop.set()
    second = _backend(tmp_path, fake, mode="jobs")
    second.cancel(1, handle)
    assert fake.job_by_name("autoswarm-t-e1").status == "CANCELLED"
    second.close()


# ---------------------------------------------------------------------------
# CLI: --dry-run and down


def test_cli_dry_run_prints_task_yaml(tmp_path: Path) -> None:
    import yaml

    from autoswarm.cli import app

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "autoswarm.toml").write_text(
        '[run]\nbudget = 300\nbaseline_repeats = 2\n\n[pool]\nbackend = "skypilot"\n'
        '[pool.options]\ninfra = "k8s"\n'
        '[[pool.tiers]]\nname = "h100"\naccelerator = "H100:1"\nslots = 13\n'
        '[[pool.tiers]]\nname = "h200"\naccelerator = "H200:1"\nslots = 3\nrole = "validate"\n'
    )
    result = CliRunner().invoke(app, ["run", "--workspace", str(ws), "--dry-run"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(docs) == 2
    import sky

    for d in docs:
        task = sky.Task.from_yaml_config(d)
        assert {"H100": 1} in [r.accelerators for r in task.resources]
    assert "sky launch" in result.stdout
    assert not (ws / ".autoswarm" / "ledger.sqlite").exists(), "a dry run launches nothing"


def test_cli_down_with_nothing_recorded(tmp_path: Path) -> None:
    from autoswarm.cli import app
    from autoswarm.config import CONFIG_NAME, render_default_config

    (tmp_path / CONFIG_NAME).write_text(render_default_config(budget=1))
    result = CliRunner().invoke(app, ["down", "--workspace", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "nothing to tear down" in result.stdout
