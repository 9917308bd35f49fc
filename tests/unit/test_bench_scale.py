"""The scale benchmark (autoswarm.bench.scale) at N = 300: what it builds and runs, not timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoswarm.bench import scale
from autoswarm.config import load_config
from autoswarm.knobs import knobs_of
from autoswarm.ledger import Ledger
from autoswarm.outputs import status_record
from autoswarm.types import Kind, Status
from autoswarm.workspace import Workspace

N = 300


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> scale.Built:
    # Where `python -m autoswarm.bench.scale --workdir DIR` builds (and reuses) it.
    return scale.build(tmp_path_factory.mktemp("scale") / f"ws-{N}", N)


def test_the_ledger_holds_n_experiments_of_every_kind_and_state(built: scale.Built) -> None:
    ws = Workspace(built.root, load_config(built.root))
    with Ledger(ws.ledger_path) as led:
        run = led.get_run(scale.TAG)
        assert run is not None
        exps = led.experiments(run.id)
        sessions = led.sessions(run.id)
        st = status_record(led, run, 0.0)
        handles = {e.id: led.handle(e.id) for e in exps if e.status is Status.RUNNING}
    assert len(exps) == N == built.experiments
    assert built.last_id == exps[-1].id
    statuses = {e.status for e in exps}
    assert {Status.KEEP, Status.DISCARD, Status.CRASH, Status.REJECTED, Status.RUNNING} <= statuses
    assert sum(built.counts.values()) == N
    assert {e.kind for e in exps} == set(Kind)
    assert [e.kind for e in exps[:3]] == [Kind.BASELINE] * 3
    # The last session died: half the slots were running (orphans for --resume).
    assert sessions[-1].ended_at is None and all(s.ended_at for s in sessions[:-1])
    running = [e for e in exps if e.status is Status.RUNNING]
    assert len(running) == scale.WORKERS // 2
    assert all(handles[e.id] and e.log_path and e.started_at for e in running)
    # Rows look like the scheduler's: candidates carry the proposer's and the dedup meta,
    # re-runs point at their candidate, verdicts carry evidence, keeps move the branch.
    cands = [e for e in exps if e.kind is Kind.CANDIDATE]
    assert {e.proposer for e in cands} == {"swarm", "factorial"}
    assert all(e.fingerprint and e.dedup and e.knobs is not None for e in cands)
    by_id = {e.id: e for e in exps}
    assert all(by_id[e.rerun_of].kind is Kind.CANDIDATE for e in exps if e.kind is Kind.CONFIRM)
    judged = [e for e in cands if e.status in (Status.KEEP, Status.DISCARD)]
    assert judged and all(e.evidence is not None for e in judged)
    assert all(e.kept_at is not None for e in cands if e.status is Status.KEEP)
    dup = [e for e in exps if e.reason.startswith("duplicate of #")]
    assert all(e.status is Status.REJECTED and not e.commit for e in dup)
    # Every candidate with a commit is a real commit whose train.py has its knobs.
    for e in [c for c in cands if c.commit][:20]:
        values = {k: v.value for k, v in knobs_of(ws.read_files(e.commit)).items()}
        assert values == e.knobs
    assert st["best"]["id"] is not None
    head = ws.tree_id(f"refs/heads/{run.branch}")
    assert head == ws.tree_id(st["best"]["commit"])


def test_building_again_reuses_the_workspace(built: scale.Built) -> None:
    again = scale.build(built.root, N)
    assert again == built


def test_status_results_and_resume_succeed_on_it(built: scale.Built, tmp_path: Path) -> None:
    # The command-line entry, on the workspace built above (reused, not built again).
    out, figures = tmp_path / "scale.md", tmp_path / "scale.json"
    argv = ["--experiments", str(N), "--repeat", "1", "--workdir", str(built.root.parent)]
    assert scale.main([*argv, "--out", str(out), "--json", str(figures)]) == 0
    [rec] = json.loads(figures.read_text())
    assert rec["experiments"] == N and rec["counts"] == dict(built.counts)
    by = {m["name"]: m for m in rec["measures"]}
    assert list(by) == [
        "floor",  # the imports every `status` pays, whatever N
        "status",
        "status-json",
        "results-since",
        "results-since-json",
        "resume-first",
        "resume",
    ]
    for m in list(by.values())[1:]:
        assert m["experiments"] == N and m["wall_s"] > 0 and m["cpu_s"] > 0
        assert m["peak_rss_mb"] > 0
    assert by["status"]["goal_s"] == 1.0 and by["resume-first"]["goal_s"] == 10.0
    # The resume probe filled every slot: the orphans first, then the proposer's variants.
    assert by["resume"]["extra"]["slots_busy"] == scale.WORKERS
    assert by["resume-first"]["wall_s"] <= by["resume"]["wall_s"]
    assert "| 300 | `autoswarm status` |" in out.read_text()
    # The probe leaves the ledger as it was built.
    ws = Workspace(built.root, load_config(built.root))
    with Ledger(ws.ledger_path) as led:
        run = led.get_run(scale.TAG)
        assert run is not None
        assert len(led.experiments(run.id)) == N
        assert len(led.experiments(run.id, statuses=[Status.RUNNING])) == scale.WORKERS // 2
    # results --since prints exactly the experiments after the id.
    since = built.last_id - 50
    cmd = ["results", "--since", str(since), "--format", "json", "--workspace", str(built.root)]
    text = subprocess.run(
        [sys.executable, "-m", "autoswarm", *cmd],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert [r["id"] for r in json.loads(text)] == list(range(since + 1, built.last_id + 1))


def test_status_aggregates_agree_with_the_rows_they_summarise(built: scale.Built) -> None:
    """`status` reads SQL aggregates and the noise model's values from an index; on the
    benchmark's ledger (crashes, slowed repeats, re-runs, orphans) they must be what the
    functions over the rows give."""
    from autoswarm.analysis.noise import group_values, groups_of
    from autoswarm.costs import cost_by_tier, total_cost

    ws = Workspace(built.root, load_config(built.root))
    now = 2e9
    with Ledger(ws.ledger_path) as led:
        run = led.get_run(scale.TAG)
        assert run is not None
        exps = led.experiments(run.id)
        cfg = load_config(built.root)
        metric = cfg.metric.name
        from_rows = groups_of(exps, metric, run.base_commit)
        from_index = group_values(
            ((i, c, v) for i, c, _, _, v in led.measurements(run.id)), run.base_commit
        )
        led_measurements_repeated = led.measurements(run.id, repeated=True)
        st = status_record(led, run, now, effects=False)
    assert from_index == from_rows and len(from_rows) > 10
    repeated = group_values(
        ((i, c, v) for i, c, _, _, v in led_measurements_repeated), run.base_commit
    )
    assert [g for g in repeated if len(g) > 1] == [g for g in from_rows if len(g) > 1]
    spent = total_cost(cost_by_tier(exps, cfg.pool, now))
    assert st["cost_usd"] == pytest.approx(spent.usd, rel=1e-12)
    assert st["gpu_hours"] == pytest.approx(spent.gpu_hours, rel=1e-12)
    assert st["experiments"]["total"] == len(exps)
    for s in Status:
        assert st["experiments"].get(s.value, 0) == sum(e.status is s for e in exps) or (
            s.value not in st["experiments"]
        )
    done = [e for e in exps if e.status in (Status.KEEP, Status.DISCARD, Status.CRASH)]
    durations = sorted(e.duration_s for e in done if e.duration_s is not None)
    assert st["median_duration_s"] == pytest.approx(
        (durations[(len(durations) - 1) // 2] + durations[len(durations) // 2]) / 2
    )
    assert "effects" not in st
