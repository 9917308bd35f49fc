"""Revocation and `autoswarm reproduce` on real processes (issue 13).

A synthetic train.py whose value is scripted by the knob ``X`` and the seed: the variant
``X = 1`` is measured lucky on the seeds that select and confirm it (42, 43, 44) and
truly no better on later seeds. It is kept, then re-measured (best_runs = 4), and the
re-measurements revoke it: the ledger says REVOKED with the evidence, results.tsv says
discard with the reason, and the branch is back at the baseline's files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoswarm.backends.local import LocalBackend
from autoswarm.cli import app
from autoswarm.config import load_config, with_overrides
from autoswarm.errors import RunStateError
from autoswarm.ledger import Ledger
from autoswarm.scheduler import Scheduler
from autoswarm.testing.proposers import ScriptedProposer, replace_in
from autoswarm.testing.synthetic import make_workspace
from autoswarm.types import Kind, Purpose, Status
from autoswarm.workspace import Workspace

pytestmark = pytest.mark.slow

TRAIN_PY = '''"""Scripted train.py: the value depends on X and the seed only."""
import os

X = 0
Y = 0

seed = int(os.environ["AUTOSWARM_SEED"])
base = {42: 1.000, 43: 1.010, 44: 0.990, 45: 1.005, 46: 0.995, 47: 1.002, 48: 0.998}
lucky = {42: 0.900, 43: 0.901, 44: 0.899, 45: 1.100, 46: 1.110, 47: 1.090, 48: 1.105}
real = {s: v - 0.1 for s, v in base.items()}
value = lucky[seed] if X == 1 else real[seed] if Y == 1 else base[seed]
print("---")
print(f"val_bpb: {value:.6f}")
'''


def _workspace(tmp_path: Path, **run: object) -> tuple[Workspace, Ledger, Scheduler]:
    root = make_workspace(tmp_path / "ws", train_py=TRAIN_PY, budget=1.0)
    cfg = with_overrides(load_config(root), workers=1, baseline_repeats=3, **run)
    ws = Workspace(root, cfg)
    ledger = Ledger(ws.ledger_path)
    proposer = ScriptedProposer([("X 0 -> 1", replace_in("train.py", "X = 0", "X = 1"))])
    sched = Scheduler(
        workspace=ws,
        ledger=ledger,
        backend=LocalBackend(1, gpus=[], log_max_bytes=cfg.run.log_max_bytes),
        proposer=proposer,
        config=cfg,
        python=sys.executable,
    )
    return ws, ledger, sched


def test_replication_revokes_a_lucky_keep_and_moves_the_branch_back(tmp_path: Path) -> None:
    ws, ledger, sched = _workspace(tmp_path, best_runs=4, final_runs=0)
    out = sched.run(tag="rv")
    rows = ledger.experiments(out.run.id)
    cand = next(e for e in rows if e.description == "X 0 -> 1")
    assert cand.status is Status.REVOKED, cand.reason
    # The first re-measurement in (1.100 or 1.110) shows the variant's spread: with it, its fresh
    # runs no longer beat the bar, and the keep is revoked at once.
    assert cand.reason.startswith("revoked") and "unstable" in cand.reason, cand.reason
    ev = cand.evidence.as_meta()
    assert ev["selected"] == [0.9] and ev["fresh"][:2] == [0.901, 0.899]
    assert ev["fresh"][2] in (1.1, 1.11) and ev["decided_runs"] == 3
    assert cand.kept_at and cand.revoked_at
    remeasured = [e for e in rows if e.kind is Kind.CONFIRM and e.is_remeasure]
    assert 45 in [e.seed for e in remeasured] or 46 in [e.seed for e in remeasured]
    # Run, still running, or still queued when the keep was revoked: none stands.
    assert all(e.status in (Status.REVOKED, Status.REJECTED) for e in remeasured)

    # The branch, the ledger's best and results.tsv agree: back at the baseline.
    branch = ws.rev_parse(f"refs/heads/{out.run.branch}")
    assert ws.tree_id(branch) == ws.tree_id(out.run.base_commit)
    assert sched.best is not None and sched.best.commit == out.run.base_commit
    tsv = ws.results_path.read_text().splitlines()
    line = next(x for x in tsv if x.endswith(cand.reason[:60]) or "X 0 -> 1" in x)
    assert line.split("\t")[3] == "discard" and "revoked" in line
    assert not any(x.split("\t")[3] == "keep" and "X 0 -> 1" in x for x in tsv[1:])
    ledger.close()

    # The CLI says so too.
    res = CliRunner().invoke(app, ["status", "--workspace", str(ws.root), "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    # The candidate and the re-runs that had run or were running; one still queued at
    # the revocation is withdrawn instead (rejected, never run).
    withdrawn = [e for e in remeasured if e.status is Status.REJECTED]
    assert st["experiments"]["revoked"] == 5 - len(withdrawn)
    assert all("keep was revoked" in e.reason for e in withdrawn)
    assert st["best"]["commit"] == out.run.base_commit


def test_reproduce_reports_whether_a_recorded_value_holds(tmp_path: Path) -> None:
    ws, ledger, sched = _workspace(tmp_path, best_runs=2, final_runs=0)
    out = sched.run(tag="rp")
    cand = next(e for e in ledger.experiments(out.run.id) if e.description == "X 0 -> 1")
    assert cand.status is Status.KEEP  # kept on its lucky seeds 42-44
    ledger.close()

    res = CliRunner().invoke(
        app, ["reproduce", str(cand.id), "--runs", "3", "--workspace", str(ws.root)]
    )
    # Seeds 45-47: 1.10, 1.11, 1.09 against a recorded 0.90: the claim does not hold,
    # and the keep is revoked by the new evidence.
    assert res.exit_code == 1, res.output
    assert "does not hold" in res.output and "revoked" in res.output
    with Ledger(ws.ledger_path) as led:
        after = led.get(cand.id)
        rows = led.experiments(out.run.id)
    assert after is not None and after.status is Status.REVOKED
    reruns = [e for e in rows if (e.purpose is Purpose.REPRODUCE)]
    assert [e.seed for e in reruns] == [45, 46, 47]

    # The baseline's own value holds when it is re-run (seeds 48.. are in its spread).
    base = next(e for e in rows if e.kind is Kind.BASELINE)
    res = CliRunner().invoke(
        app, ["reproduce", str(base.id), "--runs", "1", "--workspace", str(ws.root)]
    )
    assert res.exit_code == 0, res.output
    assert "holds" in res.output


def test_reproduce_of_an_unknown_id_is_one_clear_line(tmp_path: Path) -> None:
    ws, ledger, sched = _workspace(tmp_path, best_runs=2, final_runs=0)
    sched.run(tag="u")
    ledger.close()
    res = CliRunner().invoke(app, ["reproduce", "999", "--workspace", str(ws.root)])
    assert isinstance(res.exception, RunStateError)
    assert "no experiment #999" in str(res.exception) and "autoswarm results" in str(res.exception)
