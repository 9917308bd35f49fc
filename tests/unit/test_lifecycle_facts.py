"""The scheduler's own facts are typed fields and ledger columns (schema 4), not meta keys.

A ledger written before schema 4 kept them in the proposer's meta; opening it moves them
to their columns, ``results --json`` shows the same meta as before, and the run resumes.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

from autoswarm.ledger import _MIGRATIONS, SCHEMA_VERSION, Ledger
from autoswarm.outputs import experiment_record, recorded_meta
from autoswarm.testing.proposers import ScriptedProposer, replace_in
from autoswarm.types import Evidence, Experiment, Kind, Purpose, Status
from tests.conftest import Harness
from tests.unit.test_best_runs import _scripted
from tests.unit.test_tiers import LR as TIER_LR
from tests.unit.test_tiers import WIDTH as TIER_WIDTH
from tests.unit.test_tiers import tiered, tiered_values, two_tiers

LR = ("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04"))
AGAIN = ("LR again", replace_in("train.py", "LR = 0.01", "LR = 0.04"))

# The columns of the experiments table at schema 3 (before the facts had their own).
_V3 = (
    *("id", "run_id", "kind", "status", "parent", "commit_sha", "diff", "description"),
    *("proposer", "seed", "slot", "metrics", "metric", "created_at", "started_at"),
    *("finished_at", "log_path", "reason", "meta", "handle", "attempts", "tier"),
)


def _as_schema_3(path: Path) -> None:
    """Rewrite the ledger at ``path`` as autoswarm wrote it at schema 3: every fact in meta."""
    with Ledger(path) as led:
        rows = {e.id: e for r in led.runs() for e in led.experiments(r.id)}
    old = path.with_suffix(".v3")
    src = sqlite3.connect(path)
    dst = sqlite3.connect(old)
    for v in (1, 2, 3):
        for stmt in _MIGRATIONS[v]:
            dst.execute(stmt)
    dst.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '3')")
    for table in ("runs", "sessions", "submissions"):
        for r in src.execute(f"SELECT * FROM {table}"):
            dst.execute(f"INSERT INTO {table} VALUES ({','.join('?' * len(r))})", r)
    for r in src.execute(f"SELECT {', '.join(_V3)} FROM experiments"):
        r = list(r)
        r[_V3.index("meta")] = json.dumps(recorded_meta(rows[r[0]]), sort_keys=True)
        dst.execute(
            f"INSERT INTO experiments({', '.join(_V3)}) VALUES ({','.join('?' * len(r))})", r
        )
    dst.execute(
        "INSERT INTO sqlite_sequence(name, seq) SELECT 'experiments', MAX(id) FROM experiments"
    )
    dst.commit()
    src.close()
    dst.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.move(old, path)


def _same_rows(before: list[Experiment], after: list[Experiment]) -> None:
    assert [experiment_record(e) for e in after] == [experiment_record(e) for e in before]
    # NaN in evidence (a t on 0 df) is not equal to itself: compared as records above.
    plain = [replace(e, evidence=None, screening=None, metrics={}) for e in before]
    assert [replace(e, evidence=None, screening=None, metrics={}) for e in after] == plain


def test_a_schema_3_ledger_moves_its_facts_to_columns_and_resumes(harness: Harness) -> None:
    # Kept on three runs, re-measured once, revoked; a duplicate rejected.
    outcome = _scripted({42: 0.90, 43: 0.90, 44: 0.89, 45: 1.21})
    sched, _, ledger = harness.scheduler(
        ScriptedProposer([LR, AGAIN]), slots=1, outcome=outcome, best_runs=3
    )
    out = sched.run(tag="t")
    before = ledger.experiments(out.run.id)
    ledger.close()
    lr = next(e for e in before if e.description == LR[0])
    assert lr.status is Status.REVOKED and lr.evidence is not None
    assert lr.kept_at is not None and lr.revoked_at is not None
    assert {e.purpose for e in before if e.kind is Kind.CONFIRM} == {
        Purpose.CONFIRM,
        Purpose.REPLICATE,
    }
    assert all(e.rerun_of == lr.id for e in before if e.kind is Kind.CONFIRM)
    (dup,) = [e for e in before if e.duplicate_of is not None]
    assert dup.duplicate_of == lr.id and dup.status is Status.REJECTED
    # meta is the proposer's own: ScriptedProposer writes none.
    assert all(dict(e.meta) == {} for e in before)

    _as_schema_3(sched.ws.ledger_path)
    raw = sqlite3.connect(sched.ws.ledger_path)
    (meta,) = raw.execute("SELECT meta FROM experiments WHERE id=?", (lr.id,)).fetchone()
    raw.close()
    assert {"evidence", "kept_at", "revoked_at", "fingerprint", "dedup", "knobs"} <= set(
        json.loads(meta)
    )
    with Ledger(sched.ws.ledger_path) as migrated:
        assert migrated.schema_version == SCHEMA_VERSION
        _same_rows(before, migrated.experiments(out.run.id))

    sched2, backend2, ledger2 = harness.scheduler(
        ScriptedProposer([]), slots=1, outcome=outcome, best_runs=3
    )
    out2 = sched2.run(tag="t", resume=True)
    assert out2.best == out.best and not backend2.submitted
    _same_rows(before, ledger2.experiments(out.run.id))
    ledger2.close()


def test_a_schema_3_ledger_with_tiers_keeps_its_validation_facts(harness: Harness) -> None:
    # The promotion scenario of test_tiers: validation runs pinned to h200, final runs.
    lr_h200 = {43: 0.81, 44: 0.79, 45: 0.80, 46: 0.80, 47: 0.80}
    outcome = tiered_values(
        {"WIDTH = 32": {"h100": 0.96, "h200": 0.91}, "LR = 0.04": {"h100": 0.95, "h200": lr_h200}},
        durations={"h100": 60.0, "h200": 25.0},
    )
    sched, _, ledger = tiered(
        harness, ScriptedProposer([TIER_LR, TIER_WIDTH]), two_tiers(), outcome, best_runs=2
    )
    out = sched.run(tag="t")
    before = ledger.experiments(out.run.id)
    ledger.close()
    lr = next(e for e in before if e.description == TIER_LR[0])
    assert lr.validated_on == "h200" and isinstance(lr.screening, Evidence)
    promos = [e for e in before if e.purpose is Purpose.VALIDATE]
    assert promos and all(p.pinned_tier == "h200" and p.screening for p in promos)
    assert all(p.z_before is not None for p in promos)
    assert {e.pinned_tier for e in before if e.kind is Kind.BASELINE} == {"h100", "h200"}
    old = {e.id: recorded_meta(e) for e in before}
    assert all(old[p.id]["promoted"] is True and old[p.id]["tier"] == "h200" for p in promos)

    _as_schema_3(sched.ws.ledger_path)
    with Ledger(sched.ws.ledger_path) as migrated:
        after = migrated.experiments(out.run.id)
    _same_rows(before, after)
    assert {e.id: recorded_meta(e) for e in after} == old


def test_results_json_meta_is_the_proposers_with_the_facts_beside_it(harness: Harness) -> None:
    sched, _, ledger = harness.scheduler(ScriptedProposer([LR]), slots=1, best_runs=3)
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    ledger.close()
    final = [e for e in rows if e.purpose is Purpose.FINAL]
    cand = next(e for e in rows if e.description == LR[0])
    for e in final:
        assert recorded_meta(e) == {"confirms": cand.id, "final": True, "replicates": True}
    if cand.validated:
        assert recorded_meta(cand)["validated"] is True
    base = recorded_meta(rows[0])
    assert list(base) == sorted(base) and set(base) == {"dedup", "fingerprint", "knobs"}
