"""The real Scheduler on the Ray backend, on a real local Ray cluster this module starts.

Two things of issue 4 are shown end to end (scheduler + ledger + RayBackend built by the
factory from ``autoswarm.toml``):

- screening -> promotion: baselines on both tiers, first runs on the cheap ``h100`` tier
  only, a strong candidate promoted to ``h200`` and kept only once validated there, the
  branch advanced only to validated commits, per-tier cost = durations × prices;
- ``autoswarm run --resume`` after the orchestrator was SIGKILLed re-attaches to the
  experiments still running on the cluster's slot actors: each ran exactly once, under
  its original id, and nothing was lost.

The Ray example of docs/pools.md is also checked against the backend's own options.
The cluster is stopped by its process ids only (never by the Ray CLI's machine-wide stop).

Run: .venv/bin/pytest -q tests/integration/test_ray_scheduler.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")

from autoswarm.backends.factory import make_backend
from autoswarm.backends.ray import _POOL_OPTIONS, RayBackend, slot_spec
from autoswarm.config import load_config, with_overrides
from autoswarm.ledger import Ledger
from autoswarm.outputs import TSV_HEADER, status_record, tsv_rows
from autoswarm.scheduler import Scheduler
from autoswarm.testing.proposers import ScriptedProposer, replace_in
from autoswarm.testing.raycluster import LocalRayCluster
from autoswarm.testing.synthetic import TRAIN_PY, make_workspace
from autoswarm.types import Kind, Purpose, Status
from autoswarm.workspace import Workspace

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "pools.md"

PRICES = {"h100": 2.0, "h200": 4.0}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    c = LocalRayCluster.start(num_cpus=8, num_gpus=4, resources={"h100": 3, "h200": 1})
    try:
        yield c
    finally:
        # A driver left connected to a stopped cluster exits this process (Ray's core
        # worker gives up on its GCS after a minute, in whatever test runs then).
        import ray

        if ray.is_initialized():
            ray.shutdown()
        c.stop()
    assert not c.pids(), "the test cluster must be gone"


def marking_train_py(marks: Path) -> str:
    """The synthetic train.py, which also appends its pid to ``marks/<experiment id>``."""
    mark = (
        f"with open(os.path.join({str(marks)!r}, os.environ['AUTOSWARM_EXPERIMENT']), 'a') as _m:\n"
        "    _m.write(f'{os.getpid()}\\n')\n"
    )
    return TRAIN_PY.replace("budget = float(", mark + "budget = float(", 1)


def ray_workspace(root: Path, pool_toml: str, *, budget: float, marks: Path) -> Path:
    marks.mkdir(parents=True, exist_ok=True)
    ws = make_workspace(root, train_py=marking_train_py(marks), budget=budget, baseline_repeats=3)
    with (ws / "autoswarm.toml").open("a") as f:
        f.write("\n" + pool_toml)
        # The marks are written beside the workspace, which a sandboxed experiment cannot
        # reach; the Ray sandbox itself: test_ray_backend.py (a hostile variant).
        f.write('\n[sandbox]\nmode = "off"\n')
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "ray pool"],
        cwd=ws,
        check=True,
        capture_output=True,
    )
    return ws


def marks_of(marks: Path, exp_id: int) -> list[str]:
    path = marks / str(exp_id)
    return path.read_text().split() if path.exists() else []


# ---------------------------------------------------------------------------
# Screening -> promotion through the Scheduler


LR = ("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04"))  # ~0.08 better
WIDTH = ("WIDTH 64 -> 32", replace_in("train.py", "WIDTH = 64", "WIDTH = 32"))  # ~0.15 worse


def test_screening_and_promotion_on_ray(cluster: LocalRayCluster, tmp_path: Path) -> None:
    pool = f"""
[pool]
backend = "ray"

[pool.options]
address = "{cluster.address}"

[[pool.tiers]]
name = "h100"
accelerator = "H100:1"
slots = 3
price_per_hour = {PRICES["h100"]}
role = "screen"
options = {{ resources = {{ h100 = 1 }} }}

[[pool.tiers]]
name = "h200"
accelerator = "H200:1"
slots = 1
price_per_hour = {PRICES["h200"]}
speed = 1.3
role = "validate"
options = {{ resources = {{ h200 = 1 }} }}
"""
    marks = tmp_path / "marks"
    root = ray_workspace(tmp_path / "ws", pool, budget=1.0, marks=marks)
    cfg = with_overrides(load_config(root), best_runs=2)  # written for a bar on its 2 confirmations
    ws = Workspace(root, cfg)
    backend = make_backend(cfg, workspace_root=ws.root, state_dir=ws.state_dir)
    assert isinstance(backend, RayBackend) and backend.capacity() == 4
    ledger = Ledger(ws.ledger_path)
    sched = Scheduler(
        workspace=ws,
        ledger=ledger,
        backend=backend,
        proposer=ScriptedProposer([LR, WIDTH]),
        config=cfg,
    )
    t0 = time.monotonic()
    out = sched.run(tag="t")
    assert time.monotonic() - t0 < 60, "the run should take seconds"
    rows = ledger.experiments(out.run.id)
    by_id = {e.id: e for e in rows}

    # Every experiment ran once, on the cluster, and finished.
    assert all(e.status.is_finished() for e in rows), [(e.id, e.status) for e in rows]
    assert all(len(marks_of(marks, e.id)) == 1 for e in rows)

    # Baselines: three on each tier.
    baselines = [e for e in rows if e.kind is Kind.BASELINE]
    assert sorted((e.tier, e.seed) for e in baselines) == [
        (t, s) for t in ("h100", "h200") for s in (42, 43, 44)
    ]
    assert all(e.status is Status.KEEP for e in baselines)

    # First runs only on the screening tier.
    cands = {e.description: e for e in rows if e.kind is Kind.CANDIDATE}
    assert set(cands) == {LR[0], WIDTH[0]}
    assert {e.tier for e in cands.values()} == {"h100"}

    # LR is promoted: re-run on h200 with its commit and fresh seeds (confirm_runs = 2), and
    # kept only after that, on those validation runs alone.
    lr, width = cands[LR[0]], cands[WIDTH[0]]
    promos = [e for e in rows if e.kind is Kind.CONFIRM and not e.is_remeasure]
    assert len(promos) == 2 and all(p.rerun_of == lr.id for p in promos)
    assert all((p.purpose is Purpose.VALIDATE) is True and p.tier == "h200" for p in promos)
    assert all(p.commit == lr.commit and p.status is Status.KEEP for p in promos)
    assert sorted(p.seed for p in promos) == [lr.seed + 1, lr.seed + 2]
    # Its bar rests on those two fresh runs (best_runs = 2 here): no re-measurement;
    # the proposer exhausted, the best is validated at the end (final_runs: 3 with several
    # slots), on the tier it was kept on, with the next seeds.
    again = [e for e in rows if e.is_remeasure]
    assert [(a.rerun_of, a.tier, (a.purpose is Purpose.FINAL)) for a in again] == [
        (lr.id, "h200", True)
    ] * 3
    assert sorted(a.seed for a in again) == [lr.seed + 3, lr.seed + 4, lr.seed + 5]
    # The screening run on h100 is never mixed in: the evidence is the h200 runs alone.
    ev = lr.evidence.as_meta()
    assert ev["selected"] == [] and sorted(ev["fresh"]) == sorted(
        e.value("val_bpb") for e in [*promos, *again]
    )
    assert lr.status is Status.KEEP and lr.validated_on == "h200"
    assert lr.finished_at is not None and all(
        p.started_at is not None and p.started_at >= lr.finished_at for p in promos
    ), "the validation run starts after the screen"
    assert lr.evidence.as_meta()["best_before"] == pytest.approx(
        sched._baselines["h200"].mean  # type: ignore[union-attr]
    )
    # WIDTH is worse on h100 and is discarded there, without a validation run.
    assert width.status is Status.DISCARD and width.tier == "h100"
    assert width.validated_on is None

    # The branch advanced only to validated commits: every commit on it after the base
    # holds the files of a candidate kept on the validation tier.
    validated = {
        ws.tree_id(e.commit)
        for e in rows
        if e.kind is Kind.CANDIDATE and e.status is Status.KEEP and e.validated_on
    }
    on_branch = subprocess.run(
        ["git", "rev-list", f"{out.run.base_commit}..{out.run.branch}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert on_branch and {ws.tree_id(c) for c in on_branch} <= validated
    assert "LR = 0.04" in ws.read_file(f"refs/heads/{out.run.branch}", "train.py")
    assert out.best is not None and out.best.commit == lr.commit

    # Cost per tier: positive, and the measured durations times the tier's price.
    st = status_record(ledger, out.run, time.time())
    for tier, price in PRICES.items():
        ran = [by_id[e.id] for e in rows if e.tier == tier]
        seconds = sum((e.finished_at or 0.0) - (e.started_at or 0.0) for e in ran)
        rec = st["tiers"][tier]
        assert rec["experiments"] == len(ran) and rec["seconds"] >= len(ran) * 1.0
        assert rec["seconds"] == pytest.approx(seconds)
        assert rec["cost_usd"] > 0 and rec["cost_usd"] == pytest.approx(price * seconds / 3600)
        assert rec["gpu_hours"] == pytest.approx(seconds / 3600)
    assert st["cost_usd"] == pytest.approx(sum(st["tiers"][t]["cost_usd"] for t in PRICES))
    ledger.close()


# ---------------------------------------------------------------------------
# Resume: a SIGKILLed orchestrator, and `autoswarm run --resume` re-attaching


def autoswarm(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoswarm", *args]


def test_resume_reattaches_through_the_scheduler(cluster: LocalRayCluster, tmp_path: Path) -> None:
    pool = f"""
[pool]
backend = "ray"

[pool.options]
address = "{cluster.address}"

[[pool.tiers]]
name = "cpu"
slots = 2
price_per_hour = 1.0
options = {{ cpus = 1 }}
"""
    marks = tmp_path / "marks"
    root = ray_workspace(tmp_path / "ws", pool, budget=8.0, marks=marks)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    log1 = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen(
        autoswarm("run", "--workspace", str(root), "--tag", "r", "--skip-prepare"),
        cwd=REPO,
        env=env,
        stdout=log1,
        stderr=subprocess.STDOUT,
    )
    ledger_path = root / ".autoswarm" / "ledger.sqlite"
    running: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            if ledger_path.exists():
                with Ledger(ledger_path) as led:
                    run = led.get_run("r")
                    if run is not None:
                        now_running = {
                            e.id: led.handle(e.id) or ""
                            for e in led.experiments(run.id, statuses=[Status.RUNNING])
                        }
                        # Two running with handles, and train.py started in both slots.
                        if (
                            len(now_running) == 2
                            and all(now_running.values())
                            and all(marks_of(marks, i) for i in now_running)
                        ):
                            running = now_running
                            break
            time.sleep(0.1)
    finally:
        os.kill(first.pid, signal.SIGKILL)  # the orchestrator only: the actors live on
        first.wait(10)
        log1.close()
    assert running, (tmp_path / "first.log").read_text()[-3000:]
    pids_at_kill = {i: marks_of(marks, i) for i in running}

    limit = 4
    resumed = subprocess.run(
        autoswarm(
            "run",
            "--workspace",
            str(root),
            "--resume",
            "--tag",
            "r",
            "--skip-prepare",
            "--max-experiments",
            str(limit),
        ),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]

    with Ledger(ledger_path) as led:
        run = led.get_run("r")
        assert run is not None
        rows = led.experiments(run.id)
    by_id = {e.id: e for e in rows}
    # The experiments running at the kill finished under their own ids, run exactly once:
    # one start of train.py each (the one the dead orchestrator launched), re-attached.
    for exp_id in running:
        e = by_id[exp_id]
        assert e.status in (Status.KEEP, Status.DISCARD), (e.status, e.reason)
        assert e.value("val_bpb") is not None
        assert marks_of(marks, exp_id) == pids_at_kill[exp_id]
        assert len(pids_at_kill[exp_id]) == 1
        assert "re-attached" in Workspace(root, load_config(root)).log_path(exp_id).read_text()
    # Nothing lost: every id up to the limit is in a final state, nothing beyond it.
    assert sorted(by_id) == list(range(1, limit + 1))
    assert all(e.status.is_finished() for e in rows), [(e.id, e.status) for e in rows]
    assert all(len(marks_of(marks, e.id)) == 1 for e in rows), "nothing ran twice"
    # results.tsv is the ledger's view.
    tsv = (root / "results.tsv").read_text().splitlines()
    assert tsv == [TSV_HEADER, *tsv_rows(rows)]


# ---------------------------------------------------------------------------
# docs/pools.md: the Ray example uses the options the backend accepts


def test_ray_example_in_docs_is_accepted_by_the_backend(tmp_path: Path) -> None:
    text = DOC.read_text()
    section = text.split("### A Ray cluster", 1)[1]
    block = section.split("```toml", 1)[1].split("```", 1)[0]
    raw = tomllib.loads(block)["pool"]
    assert raw["backend"] == "ray"
    (tmp_path / "autoswarm.toml").write_text('[workspace]\neditable = ["train.py"]\n' + block)
    cfg = load_config(tmp_path)
    assert cfg.pool.backend == "ray" and len(cfg.pool.tiers) == 2
    # RayBackend.from_config's checks, without connecting to a cluster.
    assert set(cfg.pool.options) <= _POOL_OPTIONS
    assert isinstance(cfg.pool.options["address"], str)
    assert "://" not in cfg.pool.options["address"], "RayBackend joins a cluster by its GCS address"
    specs = [slot_spec(t) for t in cfg.pool.tiers]
    assert [s.resources for s in specs] == [{"h100": 1.0}, {"h200": 1.0}]
    assert all(s.num_gpus == 1.0 for s in specs)


# ---------------------------------------------------------------------------
# The locked evaluation on the slot actors (issue 16)


def test_locked_evaluation_on_ray(
    cluster: LocalRayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each slot actor runs the job's evaluation after training, as the local backend does:
    the evaluated value is the metric, a print that disagrees is forged, and the test
    values come back for the ledger."""
    monkeypatch.setenv("AUTOSWARM_CACHE", str(tmp_path / "cache"))
    root = make_workspace(tmp_path / "ws", budget=0.3, baseline_repeats=2, evaluated=True)
    with (root / "autoswarm.toml").open("a") as f:
        f.write('\n[pool]\nbackend = "ray"\n')
        f.write(f'options = {{ address = "{cluster.address}" }}\n')
        f.write('\n[sandbox]\nmode = "off"\n')
    subprocess.run([sys.executable, "prepare.py"], cwd=root, check=True)
    cfg = with_overrides(load_config(root), workers=2)
    ws = Workspace(root, cfg)
    backend = make_backend(cfg, workspace_root=ws.root, state_dir=ws.state_dir)
    assert isinstance(backend, RayBackend)
    line = 'print(f"val_bpb:          {v:.6f}")'
    forge = ("forged", replace_in("train.py", line, line.replace("{v:.6f}", "{v - 0.1:.6f}")))
    ledger = Ledger(ws.ledger_path)
    sched = Scheduler(
        workspace=ws,
        ledger=ledger,
        backend=backend,
        proposer=ScriptedProposer([forge, LR]),
        config=cfg,
    )
    out = sched.run(tag="ev")
    rows = {e.description: e for e in ledger.experiments(out.run.id)}
    assert rows["forged"].status is Status.FORGED, rows["forged"].reason
    lr = rows[LR[0]]
    assert lr.status is Status.KEEP, lr.reason
    assert lr.value("val_bpb") == pytest.approx(lr.metrics["printed_val_bpb"], abs=1e-6)
    held = {h.id: h.sealed for h in ledger.sealed_metrics(out.run.id)}
    assert held[lr.id]["test_bpb"] == pytest.approx(lr.value("val_bpb") + 0.01, abs=2e-6)
    assert Path(ws.log_path(lr.id)).with_name(f"{lr.id:05d}.eval.log").read_text().startswith("---")
    ledger.close()
