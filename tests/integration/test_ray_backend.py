"""The Ray backend on a real local Ray cluster that this module starts (and stops by pid).

One head node with 32 logical CPUs, 16 logical GPUs and two tier resources (12 ``h100``,
4 ``h200``) is shared by every test here. What is shown: the backend and process
contracts, 16 slots in two tiers pinned to their resources and GPUs, a killed worker
retried on the slot's restarted actor, cancel (own jobs and orphans), timeouts that kill
the whole process group, and a restarted orchestrator re-attaching to a job started by
one that died.

Run: .venv/bin/pytest -q tests/integration/test_ray_backend.py
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from autoswarm.backends.base import Backend, Reattachable  # noqa: E402
from autoswarm.backends.factory import make_backend  # noqa: E402
from autoswarm.backends.ray import (  # noqa: E402
    RayBackend,
    ray_errors,
    read_snapshot,
    slot_spec,
    write_snapshot,
)
from autoswarm.bench.systems import run_local  # noqa: E402
from autoswarm.config import Config, PoolConfig, RunConfig, TierConfig  # noqa: E402
from autoswarm.errors import BackendCallError, ConfigError  # noqa: E402
from autoswarm.process import ProcessSpec  # noqa: E402
from autoswarm.testing.contract import (  # noqa: E402
    BackendContract,
    BackendLaunch,
    Launched,
    ProcessContract,
    ReattachableContract,
)
from autoswarm.testing.raycluster import LocalRayCluster  # noqa: E402
from autoswarm.types import Job, RunResult  # noqa: E402

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]

H100 = TierConfig(name="h100", accelerator="H100:1", slots=12, options={"resources": {"h100": 1}})
H200 = TierConfig(name="h200", accelerator="H200:1", slots=4, options={"resources": {"h200": 1}})
CPU = TierConfig(name="cpu")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    c = LocalRayCluster.start(num_cpus=32, num_gpus=16, resources={"h100": 12, "h200": 4})
    try:
        # The test process is the driver; backends share this connection.
        ray.init(address=c.address, log_to_driver=False, logging_level=logging.WARNING)
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.stop()
    assert not c.pids(), "the test cluster must be gone"


@pytest.fixture(scope="module")
def tiered(cluster: LocalRayCluster) -> Iterator[RayBackend]:
    """16 slots: 12 on h100, 4 on h200 (PoolConfig.slot_tiers order)."""
    pool = PoolConfig(backend="ray", tiers=(H100, H200))
    b = RayBackend(pool.slot_tiers(0), address=cluster.address, kill_grace_s=1.0)
    yield b
    b.close()


def make_job(
    tmp_path: Path,
    exp_id: int,
    script: str,
    *,
    slot: int = 0,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Job:
    workdir = tmp_path / f"run{exp_id}"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "train.py").write_text(textwrap.dedent(script))
    return Job(
        experiment_id=exp_id,
        workdir=workdir,
        argv=(sys.executable, "train.py"),
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout_s=timeout,
        slot=slot,
        log_path=tmp_path / "logs" / f"{exp_id}.log",
        budget_s=1.0,
    )


def wait_results(b: Backend, ids: set[int], limit: float = 60.0) -> dict[int, RunResult]:
    got: dict[int, RunResult] = {}
    deadline = time.monotonic() + limit
    while set(got) != ids and time.monotonic() < deadline:
        for r in b.poll(timeout=0.2):
            assert r.experiment_id not in got, "a job must be reported once"
            got[r.experiment_id] = r
    assert set(got) == ids, f"missing results for {ids - set(got)}"
    return got


def wait_for(path: Path, lines: int = 1, limit: float = 30.0) -> list[str]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and len(found := path.read_text().split()) >= lines:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{path} did not get {lines} line(s) within {limit}s")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def gone_soon(pid: int, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


# A train.py that records its pid in $AUTOSWARM_MARK, sleeps $AUTOSWARM_NAP seconds and prints a summary.
NAPPER = """
import os, time
with open(os.environ["AUTOSWARM_MARK"], "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(float(os.environ.get("AUTOSWARM_NAP", "0")))
print("---")
print("val_bpb: 0.990000")
"""


# ---------------------------------------------------------------------------
# The contract every backend passes


class TestRayContract(BackendContract):
    @pytest.fixture(autouse=True)
    def _on_cluster(self, cluster: LocalRayCluster) -> None:
        self.address = cluster.address

    def make_backend(self, slots: int) -> Backend:
        return RayBackend([CPU] * slots, address=self.address, kill_grace_s=1.0)


class TestRayProcessContract(ProcessContract):
    """Every process contract, through the backend: Ray ships the job to the slot actor."""

    @pytest.fixture(autouse=True)
    def _on_cluster(self, cluster: LocalRayCluster) -> None:
        self.address = cluster.address

    def launch(self, spec: ProcessSpec) -> Launched:
        backend = RayBackend(
            [CPU], address=self.address, kill_grace_s=1.0, log_max_bytes=self.log_max_bytes
        )
        return BackendLaunch(backend, spec)


class TestRayReattachable(ReattachableContract):
    """``--resume``'s contract: the slot actors are detached and named by the prefix, so a
    second backend with the same prefix (a restarted orchestrator) finds them again."""

    @pytest.fixture(autouse=True)
    def _on_cluster(self, cluster: LocalRayCluster, tmp_path: Path) -> None:
        self.address = cluster.address
        self.prefix = f"contract-{os.getpid()}-{tmp_path.name}"

    def make_backend(self, slots: int) -> Backend:
        return RayBackend(
            [CPU] * slots, address=self.address, name_prefix=self.prefix, kill_grace_s=1.0
        )

    def abandon(self, backend: Backend) -> None:
        pass  # no close(): the detached actors and their processes live on


def test_ray_errors_maps_every_failure_to_one_type() -> None:
    with pytest.raises(BackendCallError) as lost, ray_errors("the result of experiment 1"):
        raise ray.exceptions.WorkerCrashedError()
    assert lost.value.gone and lost.value.reason.startswith("WorkerCrashedError: ")
    assert str(lost.value).startswith("the result of experiment 1 failed (WorkerCrashedError: ")
    assert str(lost.value).endswith("): check the cluster with `ray status`")
    with (
        pytest.raises(BackendCallError) as failed,
        ray_errors("re-attaching", hint="resume later"),
    ):
        raise ValueError("Failed to look up actor with name 'x'")
    assert not failed.value.gone
    assert str(failed.value) == (
        "re-attaching failed (ValueError: Failed to look up actor with name 'x'): resume later"
    )
    with (
        pytest.raises(ConfigError, match="autoswarm's own"),
        ray_errors("x"),
    ):  # passes through as it is
        raise ConfigError("autoswarm's own")


def test_is_a_reattachable_backend(tiered: RayBackend) -> None:
    assert isinstance(tiered, Backend) and isinstance(tiered, Reattachable)


# ---------------------------------------------------------------------------
# Tiers: 16 slots, each actor pinned to its tier's resources and its own GPU


def test_sixteen_slots_in_two_tiers(tiered: RayBackend, tmp_path: Path) -> None:
    assert tiered.capacity() == 16
    assert [s.tier for s in tiered.specs] == ["h100"] * 12 + ["h200"] * 4
    # The actors hold every tier resource and every GPU of the cluster.
    deadline = time.monotonic() + 10  # the resource view is refreshed every few 100 ms
    while time.monotonic() < deadline:
        avail = ray.available_resources()
        if not any(avail.get(k, 0) for k in ("h100", "h200", "GPU")):
            break
        time.sleep(0.2)
    assert not any(avail.get(k, 0) for k in ("h100", "h200", "GPU")), avail
    gpus = [tuple(tiered.slot_info(i)["gpus"]) for i in range(16)]
    assert all(len(g) == 1 for g in gpus) and len(set(gpus)) == 16
    # Each job sees exactly its slot's GPU, and a scrubbed environment.
    script = """
        import os
        print("---")
        print("gpu:", os.environ["CUDA_VISIBLE_DEVICES"])
        print("leak:", 1 if any(k.startswith("RAY_") for k in os.environ) else 0)
        print("threads:", os.environ["OMP_NUM_THREADS"])
    """
    for slot in range(16):
        tiered.submit(make_job(tmp_path, 100 + slot, script, slot=slot))
    got = wait_results(tiered, {100 + s for s in range(16)})
    for slot in range(16):
        r = got[100 + slot]
        assert r.exit_code == 0 and not r.error, r.log_path.read_text()
        assert str(int(r.metrics["gpu"])) == gpus[slot][0]
        assert r.metrics["leak"] == 0 and r.metrics["threads"] == 1


def test_tier_options_are_checked() -> None:
    spec = slot_spec(TierConfig(name="a", accelerator="H100:2", options={"cpus": 8}))
    assert (spec.num_gpus, spec.num_cpus, spec.accelerator_type) == (2.0, 8.0, "H100")
    assert slot_spec(H200).accelerator_type == ""  # custom resources pin it instead
    with pytest.raises(ConfigError, match="known keys"):
        slot_spec(TierConfig(name="a", options={"gpu": 1}))
    with pytest.raises(ConfigError, match="positive numbers"):
        slot_spec(TierConfig(name="a", options={"resources": {"h100": "one"}}))
    cfg = Config(
        run=RunConfig(workers=0),
        pool=PoolConfig(backend="ray", tiers=(H100,), options={"adress": "x"}),
    )
    with pytest.raises(ConfigError, match="address"):
        RayBackend.from_config(cfg, state_dir=Path("/tmp"))


def test_from_config_through_the_factory(cluster: LocalRayCluster, tmp_path: Path) -> None:
    cfg = Config(
        run=RunConfig(workers=0),
        pool=PoolConfig(
            backend="ray",
            tiers=(TierConfig(name="cpu", slots=2, options={"cpus": 2}),),
            options={"address": cluster.address, "namespace": "factory-test"},
        ),
    )
    b = make_backend(cfg, workspace_root=tmp_path, state_dir=tmp_path / ".autoswarm")
    try:
        assert isinstance(b, RayBackend) and b.capacity() == 2
        assert b.namespace == "factory-test" and b.specs[0].num_cpus == 2
        # A restarted orchestrator of the same workspace must find the same actors.
        again = RayBackend.from_config(cfg, state_dir=tmp_path / ".autoswarm")
        try:
            assert again.actor_name(1) == b.actor_name(1)
            assert again.worker_pid(1) == b.worker_pid(1)
        finally:
            again.close()
    finally:
        b.close()


def test_systems_bench_runs_on_ray(tmp_path: Path) -> None:
    """The scheduler, ledger and snapshots on its own throw-away Ray cluster."""
    r = run_local(2, 0.5, 6.0, tmp_path, backend="ray")
    assert r.backend == "ray" and r.experiments >= 4
    assert 0.05 < r.busy_fraction <= 1.0


def test_snapshot_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "train.py").write_text("print(1)\n")
    (src / "pkg" / "run.sh").write_text("#!/bin/sh\n")
    (src / "pkg" / "run.sh").chmod(0o755)
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref")
    files = read_snapshot(src)
    assert [f[0] for f in files] == ["train.py", "pkg/run.sh"]
    write_snapshot(files, tmp_path / "dst")
    assert (tmp_path / "dst" / "train.py").read_text() == "print(1)\n"
    assert os.access(tmp_path / "dst" / "pkg" / "run.sh", os.X_OK)
    with pytest.raises(Exception, match="leaves"):
        write_snapshot([("../evil", b"x", False)], tmp_path / "dst2")


# ---------------------------------------------------------------------------
# Faults: a killed worker, a timeout, a cancel


def test_killed_worker_is_retried_on_the_restarted_actor(
    tiered: RayBackend, tmp_path: Path
) -> None:
    mark = tmp_path / "starts"
    slot = 13  # an h200 slot
    old_pid = tiered.worker_pid(slot)
    tiered.submit(
        make_job(
            tmp_path,
            200,
            NAPPER,
            slot=slot,
            env={"AUTOSWARM_MARK": str(mark), "AUTOSWARM_NAP": "2"},
        )
    )
    first = int(wait_for(mark)[0])
    os.kill(old_pid, signal.SIGKILL)  # the Ray worker process of the slot's actor
    got = wait_results(tiered, {200})[200]
    assert got.exit_code == 0 and not got.error and not got.cancelled
    assert got.metrics["val_bpb"] == pytest.approx(0.99)
    log = got.log_path.read_text()
    assert "attempt 1 lost its Ray worker" in log and "running it again" in log
    starts = [int(x) for x in mark.read_text().split()]
    assert len(starts) == 2 and starts[0] == first
    assert gone_soon(first), "train.py must die with its actor"
    assert tiered.worker_pid(slot) != old_pid
    assert tiered.slot_info(slot)["gpus"]  # the restarted actor holds a GPU again


def test_retries_are_limited(cluster: LocalRayCluster, tmp_path: Path) -> None:
    b = RayBackend([CPU], address=cluster.address, max_retries=0)
    try:
        mark = tmp_path / "starts"
        b.submit(
            make_job(
                tmp_path, 300, NAPPER, env={"AUTOSWARM_MARK": str(mark), "AUTOSWARM_NAP": "30"}
            )
        )
        wait_for(mark)
        os.kill(b.worker_pid(0), signal.SIGKILL)
        r = wait_results(b, {300})[300]
        assert "lost its Ray worker 1 time(s)" in r.error and not r.metrics
        assert "giving up" in r.log_path.read_text()
    finally:
        b.close()


def test_timeout_kills_the_process_group(tiered: RayBackend, tmp_path: Path) -> None:
    kids = tmp_path / "kids"
    script = f"""
        import subprocess, time
        child = subprocess.Popen(["sleep", "300"])
        with open({str(kids)!r}, "w") as f:
            f.write(f"{{child.pid}}\\n")
        time.sleep(300)
    """
    tiered.submit(make_job(tmp_path, 400, script, slot=2, timeout=2.0))
    r = wait_results(tiered, {400})[400]
    assert r.timed_out and r.duration_s == pytest.approx(2.0, abs=1.5)
    assert "killed after the 2s timeout" in r.log_path.read_text()
    assert gone_soon(int(wait_for(kids)[0])), "the grandchild must be killed with its group"


def test_cancel_kills_the_training_process(tiered: RayBackend, tmp_path: Path) -> None:
    mark = tmp_path / "starts"
    tiered.submit(
        make_job(
            tmp_path, 500, NAPPER, slot=5, env={"AUTOSWARM_MARK": str(mark), "AUTOSWARM_NAP": "300"}
        )
    )
    pid = int(wait_for(mark)[0])
    tiered.cancel(500)
    r = wait_results(tiered, {500})[500]
    assert r.cancelled and r.exit_code != 0
    assert gone_soon(pid)


# ---------------------------------------------------------------------------
# Restart: a second orchestrator adopts what the first one started


FIRST_ORCHESTRATOR = """
import json, os, sys, time
from pathlib import Path
from autoswarm.backends.ray import RayBackend
from autoswarm.config import TierConfig
from autoswarm.types import Job

address, prefix, tmp = sys.argv[1], sys.argv[2], Path(sys.argv[3])
b = RayBackend([TierConfig(name="cpu")] * 2, address=address, name_prefix=prefix)
handles = {}
for exp_id, slot, nap in ((600, 0, "3"), (601, 1, "300")):
    workdir = tmp / f"run{exp_id}"
    job = Job(experiment_id=exp_id, workdir=workdir, argv=(sys.executable, "train.py"),
              env={"PATH": "/usr/bin:/bin", "AUTOSWARM_MARK": str(tmp / f"mark{exp_id}"), "AUTOSWARM_NAP": nap},
              timeout_s=60.0, slot=slot, log_path=tmp / "logs" / f"{exp_id}.log", budget_s=1.0)
    handles[exp_id] = b.submit(job)
deadline = time.time() + 60
while not all((tmp / f"mark{i}").exists() for i in handles) and time.time() < deadline:
    time.sleep(0.05)
print(json.dumps(handles), flush=True)
os._exit(0)  # die without closing: the actors and the training processes live on
"""


def test_restarted_orchestrator_reattaches(cluster: LocalRayCluster, tmp_path: Path) -> None:
    prefix = f"restart-{os.getpid()}"
    for exp_id in (600, 601):
        make_job(tmp_path, exp_id, NAPPER)  # writes run600/train.py, run601/train.py
    out = subprocess.run(
        [sys.executable, "-c", FIRST_ORCHESTRATOR, cluster.address, prefix, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    handles = {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    orphan_pid = int(wait_for(tmp_path / "mark601")[0])

    b = RayBackend([CPU] * 2, address=cluster.address, name_prefix=prefix)
    try:
        job600 = make_job(tmp_path, 600, NAPPER, env={"AUTOSWARM_MARK": str(tmp_path / "mark600")})
        assert b.reattach(job600, handles[600])
        stranger = json.loads(handles[600]) | {"token": "600-unknown"}
        assert not b.reattach(make_job(tmp_path, 602, NAPPER), json.dumps(stranger))
        b.cancel(601, handles[601])  # an orphan we do not adopt: killed through its actor
        assert gone_soon(orphan_pid)
        r = wait_results(b, {600})[600]
        assert r.exit_code == 0 and r.metrics["val_bpb"] == pytest.approx(0.99)
        assert "re-attached" in r.log_path.read_text()
        # It ran once, in the first orchestrator's actor: nothing lost, nothing duplicated.
        assert len((tmp_path / "mark600").read_text().split()) == 1
    finally:
        b.close()
    with pytest.raises(ValueError):
        ray.get_actor(f"{prefix}-slot0", namespace="autoswarm")


# A hostile train.py on a Ray worker (issue 15): it reads its parent's environment and its
# own, tries the host's network, leaves a detached grandchild and signals its parent.
HOSTILE = """
import json, os, signal, socket, subprocess, sys, time
seen = {"env": sorted(os.environ), "ppid": os.getppid()}
try:
    seen["ppid_environ"] = open(f"/proc/{os.getppid()}/environ", "rb").read().decode(errors="replace")
except OSError as e:
    seen["ppid_environ"] = f"error {e.errno}"
seen["pids"] = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
subprocess.Popen([sys.executable, "-c", "import os, time\\nos.setsid()\\nif os.fork() == 0:\\n    time.sleep(300)  # MARKER\\n"])
time.sleep(0.3)
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.kill(os.getppid(), sig)
    except OSError:
        pass
print("SEEN>" + json.dumps(seen) + "<SEEN")
print("---")
print("val_bpb: 0.990000")
"""


def test_a_hostile_variant_on_a_ray_worker_is_contained(
    cluster: LocalRayCluster, tmp_path: Path
) -> None:
    import uuid

    from autoswarm.doctor import marked
    from autoswarm.sandbox import find_bwrap, sandbox_settings

    assert find_bwrap()[0] is not None, find_bwrap()[1]
    marker = f"ray-escapee-{uuid.uuid4().hex}"
    b = RayBackend(
        (CPU,),
        address=cluster.address,
        name_prefix=f"hostile-{uuid.uuid4().hex[:6]}",
        kill_grace_s=1.0,
        sandbox=sandbox_settings(Config().sandbox),
    )
    try:
        worker = b.worker_pid(0)
        secrets = {"DATABASE_URL": "postgres://u:ray-secret@h/db", "OPENAI_API_KEY": "sk-ray"}
        b.submit(make_job(tmp_path, 900, HOSTILE.replace("MARKER", marker), env=secrets))
        (res,) = wait_results(b, {900}).values()
        log = res.log_path.read_text()
        assert res.exit_code == 0, log
        assert "bubblewrap" in log.splitlines()[0], log  # the node says how it contained it
        seen = json.loads(log.split("SEEN>", 1)[1].split("<SEEN", 1)[0])
        assert not {"DATABASE_URL", "OPENAI_API_KEY"} & set(seen["env"]), seen["env"]
        assert "ray-secret" not in log and "sk-ray" not in log
        assert seen["ppid"] == 1 and seen["pids"][:2] == [1, 2]  # its own PID namespace
        # Its parent (the sandbox's init) ignored the signals; the slot's worker lives on
        # and runs the next experiment; the grandchild died with the experiment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and marked(marker):
            time.sleep(0.1)
        assert not marked(marker)
        assert b.worker_pid(0) == worker
        b.submit(make_job(tmp_path, 901, NAPPER, env={"AUTOSWARM_MARK": "/dev/null"}))
        assert wait_results(b, {901})[901].exit_code == 0
    finally:
        b.close()
