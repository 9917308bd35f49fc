"""The local backend with real processes: hard kills, capped logs, environment, slots, orphans."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoswarm.backends.local import LocalBackend, usable_cores
from autoswarm.errors import BackendError
from autoswarm.metrics import parse_summary, read_tail
from autoswarm.sandbox import scrubbed_env
from autoswarm.types import Job, RunResult

REPO = Path(__file__).resolve().parents[2]


def make_job(
    tmp_path: Path,
    exp_id: int,
    script: str,
    *,
    env: dict[str, str] | None = None,
    slot: int = 0,
    timeout: float = 20.0,
) -> Job:
    workdir = tmp_path / f"run{exp_id}"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "job.py").write_text(script)
    return Job(
        experiment_id=exp_id,
        workdir=workdir,
        argv=(sys.executable, "job.py"),
        env=env if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        timeout_s=timeout,
        slot=slot,
        log_path=tmp_path / "logs" / f"{exp_id:05d}.log",
        budget_s=1.0,
    )


def wait_results(backend: LocalBackend, count: int, limit: float = 20.0) -> dict[int, RunResult]:
    got: dict[int, RunResult] = {}
    deadline = time.monotonic() + limit
    while len(got) < count and time.monotonic() < deadline:
        for r in backend.poll(timeout=0.1):
            got[r.experiment_id] = r
    assert len(got) == count, f"only {sorted(got)} finished within {limit}s"
    return got


def alive(pid: int) -> bool:
    """os.kill(pid, 0) succeeds and the process is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def gone(pid: int, limit: float = 3.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def backend():
    b = LocalBackend(2, gpus=[], kill_grace_s=0.3)
    yield b
    b.close()


def printed_env(log: Path) -> dict[str, str]:
    text = log.read_text()
    return json.loads(text.split("ENV>", 1)[1].split("<ENV", 1)[0])


PRINT_ENV = (
    "import json, os, time\ntime.sleep(0.2)\n"
    "print('ENV>' + json.dumps(dict(os.environ)) + '<ENV')\n"
    "print('AFFINITY', sorted(os.sched_getaffinity(0)))\n"
)


# ---------------------------------------------------------------------------
# Hard timeout


SPAWNS_A_CHILD = """\
import subprocess, time
child = subprocess.Popen(["sleep", "1000"])  # same process group as this job
open("child.pid", "w").write(str(child.pid))
print("child started", flush=True)
time.sleep(1000)
"""


def test_timeout_kills_the_whole_process_group(tmp_path: Path, backend: LocalBackend) -> None:
    job = make_job(tmp_path, 1, SPAWNS_A_CHILD, timeout=1.0)
    handle = json.loads(backend.submit(job))
    pid = handle["pid"]
    assert handle["pgid"] == pid and handle["start"]
    r = wait_results(backend, 1)[1]
    child = int((job.workdir / "child.pid").read_text())
    assert r.timed_out and r.exit_code == -signal.SIGKILL and not r.metrics
    assert r.duration_s == pytest.approx(1.0, abs=1.0)
    assert "killed after the 1s timeout" in job.log_path.read_text()
    assert gone(pid), "the job survived its timeout"
    assert gone(child), "the job's child survived the timeout"
    kill_quietly(pid)


def test_children_left_behind_by_a_finished_job_are_killed(
    tmp_path: Path, backend: LocalBackend
) -> None:
    script = SPAWNS_A_CHILD.replace("time.sleep(1000)", "print('---')\nprint('val_bpb: 1.5')")
    job = make_job(tmp_path, 2, script)
    backend.submit(job)
    r = wait_results(backend, 1)[2]
    assert r.exit_code == 0 and not r.timed_out and r.metrics == {"val_bpb": 1.5}
    assert gone(int((job.workdir / "child.pid").read_text()))


def test_cancel_escalates_to_sigkill(tmp_path: Path, backend: LocalBackend) -> None:
    script = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(1000)\n"
    )
    job = make_job(tmp_path, 3, script)
    pid = json.loads(backend.submit(job))["pid"]
    deadline = time.monotonic() + 5
    while "ready" not in job.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    backend.cancel(3)
    r = wait_results(backend, 1, limit=5.0)[3]
    assert r.cancelled and r.exit_code == -signal.SIGKILL and not r.timed_out
    assert gone(pid)


# ---------------------------------------------------------------------------
# Log cap


def test_log_cap_keeps_head_and_tail(tmp_path: Path) -> None:
    cap = 100_000
    b = LocalBackend(1, gpus=[], log_max_bytes=cap)
    try:
        script = (
            "import sys\nsys.stdout.write('HEAD-MARKER\\n')\n"
            "sys.stdout.write(('x' * 99 + '\\n') * 50_000)\n"  # 5 MB
            "print('---')\nprint('val_bpb:          0.997900')\nprint('peak_vram_mb:     45060.2')\n"
        )
        job = make_job(tmp_path, 4, script)
        b.submit(job)
        r = wait_results(b, 1)[4]
    finally:
        b.close()
    size = job.log_path.stat().st_size
    assert size <= cap + 200
    text = job.log_path.read_text()
    assert text.startswith("HEAD-MARKER\n")
    assert "bytes of log cut here]" in text
    assert r.metrics == {"val_bpb": 0.9979, "peak_vram_mb": 45060.2}
    assert parse_summary(read_tail(job.log_path))["val_bpb"] == 0.9979


# ---------------------------------------------------------------------------
# Environment


def test_job_environment_has_no_secrets(
    tmp_path: Path, backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-very-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-very-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret")
    env = scrubbed_env(os.environ, {"AUTOSWARM_BUDGET": "7", "AUTOSWARM_SEED": "43"})
    job = make_job(tmp_path, 5, PRINT_ENV, env=env)
    backend.submit(job)
    assert wait_results(backend, 1)[5].exit_code == 0
    seen = printed_env(job.log_path)
    log = job.log_path.read_text()
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "HF_TOKEN"):
        assert name not in seen
    assert "very-secret" not in log and "very_secret" not in log
    assert seen["AUTOSWARM_BUDGET"] == "7" and seen["AUTOSWARM_SEED"] == "43"
    assert seen["PATH"] == os.environ["PATH"]
    assert seen["PYTHONUNBUFFERED"] == "1"


def test_job_gets_only_the_job_env_not_the_parents(
    tmp_path: Path, backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-very-secret")
    monkeypatch.setenv("SOME_PARENT_VARIABLE", "1")
    env = {"PATH": "/usr/bin:/bin", "AUTOSWARM_ONLY_THIS": "x", "DATABASE_URL": "postgres://u:pw@h"}
    job = make_job(tmp_path, 6, PRINT_ENV, env=env)
    backend.submit(job)
    wait_results(backend, 1)
    seen = printed_env(job.log_path)
    assert "ANTHROPIC_API_KEY" not in seen and "SOME_PARENT_VARIABLE" not in seen
    assert seen["AUTOSWARM_ONLY_THIS"] == "x"
    assert "DATABASE_URL" not in seen  # not on the allowlist: a denylist would have let it by


def test_pass_env_lets_a_named_variable_through(tmp_path: Path) -> None:
    backend = LocalBackend(workers=1, pass_env=("WANDB_API_KEY",))
    try:
        env = {"PATH": "/usr/bin:/bin", "WANDB_API_KEY": "w-1", "OPENAI_API_KEY": "sk-2"}
        job = make_job(tmp_path, 7, PRINT_ENV, env=env)
        backend.submit(job)
        wait_results(backend, 1)
        seen = printed_env(job.log_path)
    finally:
        backend.close()
    assert seen["WANDB_API_KEY"] == "w-1" and "OPENAI_API_KEY" not in seen


def test_thread_variables_and_cores_per_slot(tmp_path: Path, backend: LocalBackend) -> None:
    cores = usable_cores()
    per = max(1, len(cores) // 2)
    jobs = [make_job(tmp_path, 10 + slot, PRINT_ENV, slot=slot) for slot in (0, 1)]
    for job in jobs:
        backend.submit(job)
    wait_results(backend, 2)
    for slot, job in enumerate(jobs):
        plan = backend.plans[slot]
        assert plan.threads == per and plan.gpu is None
        seen = printed_env(job.log_path)
        for name in (
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "OPENBLAS_NUM_THREADS",
            "AUTOSWARM_THREADS",
        ):
            assert seen[name] == str(per), name
        assert seen["CUDA_VISIBLE_DEVICES"] == ""  # a CPU slot must not grab a GPU
        if hasattr(os, "sched_setaffinity"):
            assert f"AFFINITY {sorted(plan.cores)}" in job.log_path.read_text()
    if len(cores) >= 2:
        assert not set(backend.plans[0].cores) & set(backend.plans[1].cores)


def test_cuda_visible_devices_per_slot(tmp_path: Path) -> None:
    b = LocalBackend(2, gpus=["3", "5"])
    try:
        jobs = [make_job(tmp_path, 20 + slot, PRINT_ENV, slot=slot) for slot in (0, 1)]
        for job in jobs:
            b.submit(job)
        wait_results(b, 2)
    finally:
        b.close()
    assert [printed_env(j.log_path)["CUDA_VISIBLE_DEVICES"] for j in jobs] == ["3", "5"]


def test_gpu_slot_planning() -> None:
    assert LocalBackend(0, gpus=["3", "5"]).capacity() == 2
    with pytest.raises(BackendError, match="use --workers 2 or fewer"):
        LocalBackend(3, gpus=["3", "5"])


def test_submit_to_a_missing_slot_or_closed_backend(tmp_path: Path) -> None:
    b = LocalBackend(1, gpus=[])
    with pytest.raises(BackendError, match="slot 1 does not exist"):
        b.submit(make_job(tmp_path, 1, "pass\n", slot=1))
    b.close()
    with pytest.raises(BackendError, match="closed"):
        b.submit(make_job(tmp_path, 2, "pass\n"))


def test_a_command_that_cannot_start_is_a_result(tmp_path: Path, backend: LocalBackend) -> None:
    job = make_job(tmp_path, 30, "pass\n")
    job = Job(**{**job.__dict__, "argv": ("/nonexistent/python", "job.py")})
    assert backend.submit(job) == "{}"
    r = wait_results(backend, 1)[30]
    assert r.exit_code is None and "could not start /nonexistent/python" in r.error
    assert "could not start" in job.log_path.read_text()


# ---------------------------------------------------------------------------
# Orphans


ORCHESTRATOR = """\
import os, sys
from pathlib import Path
from autoswarm.backends.local import LocalBackend
from autoswarm.types import Job
tmp = Path(sys.argv[1])
b = LocalBackend(1, gpus=[])
handle = b.submit(Job(experiment_id=1, workdir=tmp, argv=(sys.executable, "-c", "import time; time.sleep(1000)"),
                      env={"PATH": "/usr/bin:/bin"}, timeout_s=1000, slot=0, log_path=tmp / "job.log", budget_s=1))
print(handle, flush=True)
os._exit(0)  # the orchestrator dies without cleaning up
"""


def orphan(tmp_path: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", ORCHESTRATOR, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=True,
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert alive(int(info["pid"])), "the job must outlive its orchestrator"
    return info


def test_cancel_kills_an_orphan_from_a_previous_backend(tmp_path: Path) -> None:
    info = orphan(tmp_path)
    pid = int(info["pid"])
    try:
        b = LocalBackend(1, gpus=[])
        b.cancel(1, json.dumps(info))
        assert gone(pid), "the orphan survived cancel()"
        assert b.poll(timeout=0.05) == []  # nothing of this process to report
        b.close()
    finally:
        kill_quietly(pid)


def test_cancel_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    info = orphan(tmp_path)
    pid = int(info["pid"])
    try:
        forged = {**info, "start": str(int(str(info["start"])) + 1)}
        b = LocalBackend(1, gpus=[])
        b.cancel(1, json.dumps(forged))
        b.cancel(1, "not json")  # a damaged handle is ignored, not raised
        time.sleep(0.1)
        assert alive(pid)
        b.close()
    finally:
        kill_quietly(pid)


# ---------------------------------------------------------------------------
# Priority: the scheduler keeps the CPU it needs when experiments saturate the cores


@pytest.mark.parametrize("nice", [0, 10])
def test_experiments_run_nice_levels_below_the_orchestrator(tmp_path: Path, nice: int) -> None:
    backend = LocalBackend(1, gpus=[], nice=nice)
    try:
        job = make_job(tmp_path, 1, "import os\nprint('nice', os.nice(0))\n")
        backend.submit(job)
        wait_results(backend, 1)
    finally:
        backend.close()
    assert f"nice {min(19, os.nice(0) + nice)}" in job.log_path.read_text()


def test_nice_out_of_range_is_refused() -> None:
    with pytest.raises(BackendError, match="nice"):
        LocalBackend(1, gpus=[], nice=20)


def test_many_jobs_with_timeouts_finish_on_time(tmp_path: Path) -> None:
    """One deadline thread serves every job: each is killed at its own timeout, no later."""
    backend = LocalBackend(8, gpus=[])
    try:
        for i in range(8):
            timeout = 1.0 + 0.5 * (i % 2)
            backend.submit(
                make_job(tmp_path, i, "import time\ntime.sleep(60)\n", slot=i, timeout=timeout)
            )
        got = wait_results(backend, 8, limit=15)
    finally:
        backend.close()
    for i, r in got.items():
        assert r.timed_out
        assert r.duration_s == pytest.approx(1.0 + 0.5 * (i % 2), abs=0.8)


def test_more_cpu_slots_than_cores_is_said() -> None:
    """64 workers on 2 cores were planned without a word."""
    from autoswarm.backends.local import oversubscribed, plan_slots

    plans = plan_slots(64, gpus=[])
    note = oversubscribed(plans, 2)
    assert note.startswith("note: 64 slots share 2 CPU core(s)") and "--workers 2" in note
    assert oversubscribed(plan_slots(2, gpus=[]), 2) == ""
    assert oversubscribed(plan_slots(1, gpus=["0"]), 0) == ""
