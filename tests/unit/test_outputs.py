"""Read-only views of the ledger: results.tsv, `results --format json` records, `status`."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pytest

from autoswarm.ledger import Ledger
from autoswarm.outputs import (
    TSV_HEADER,
    ResultsTsvWriter,
    atomic_write,
    experiment_record,
    status_record,
    tsv_rows,
    write_results_tsv,
)
from autoswarm.types import Kind, Status

T0 = 1_700_000_000.0
BASE = "a" * 40


def sha(i: int) -> str:
    return str(i) * 40


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / "ledger.sqlite") as led:
        yield led


def run_of(ledger: Ledger, repeats: int = 2):
    return ledger.create_run(
        tag="t",
        branch="autoswarm/t",
        base_commit=BASE,
        config={"metric": {"name": "val_bpb"}, "run": {"baseline_repeats": repeats}},
        now=T0,
    )


def finished(
    ledger: Ledger,
    run_id: int,
    *,
    kind: Kind,
    status: Status,
    commit: str,
    start: float,
    end: float,
    metrics: dict[str, float] | None = None,
    description: str = "x",
    reason: str = "",
    meta: dict[str, object] | None = None,
    slot: int = 0,
) -> int:
    e = ledger.add_experiment(
        run_id=run_id,
        kind=kind,
        status=Status.QUEUED,
        parent=BASE,
        commit=commit,
        description=description,
        proposer="test",
        seed=42,
        now=start,
    )
    ledger.mark_running(e.id, slot=slot, started_at=start, log_path=f"/logs/{e.id}.log")
    ledger.finish(
        e.id,
        status=status,
        metrics=metrics or {},
        metric=(metrics or {}).get("val_bpb"),
        finished_at=end,
        reason=reason,
        meta=meta,
    )
    return e.id


def populate(ledger: Ledger):
    """2 workers for a 100 s session; 150 s of experiment time in all."""
    run = run_of(ledger)
    s = ledger.start_session(run.id, pid=1, workers=2, now=T0)
    ledger.end_session(s, now=T0 + 100, reason="limit")
    ids = {}
    ids["b1"] = finished(
        ledger,
        run.id,
        kind=Kind.BASELINE,
        status=Status.KEEP,
        commit=BASE,
        start=T0,
        end=T0 + 30,
        description="baseline",
        metrics={"val_bpb": 1.00, "peak_vram_mb": 45060.2},
    )
    ids["b2"] = finished(
        ledger,
        run.id,
        kind=Kind.BASELINE,
        status=Status.KEEP,
        commit=BASE,
        start=T0,
        end=T0 + 30,
        description="baseline",
        slot=1,
        metrics={"val_bpb": 1.02, "peak_vram_mb": 45060.2},
    )
    ids["keep"] = finished(
        ledger,
        run.id,
        kind=Kind.CANDIDATE,
        status=Status.KEEP,
        commit=sha(3),
        start=T0 + 30,
        end=T0 + 70,
        description="LR\t0.01 ->\n 0.02",
        metrics={"val_bpb": 0.95, "peak_vram_mb": 10547.2},
        meta={"best_value": 0.95},
    )
    ids["discard"] = finished(
        ledger,
        run.id,
        kind=Kind.CANDIDATE,
        status=Status.DISCARD,
        commit=sha(4),
        start=T0 + 30,
        end=T0 + 60,
        slot=1,
        description="WIDTH 64 -> 128",
        metrics={"val_bpb": 0.97},
    )
    ids["crash"] = finished(
        ledger,
        run.id,
        kind=Kind.CANDIDATE,
        status=Status.CRASH,
        commit=sha(5),
        start=T0 + 60,
        end=T0 + 80,
        slot=1,
        description="DEPTH 4 -> 8",
        metrics={"val_bpb": math.nan, "peak_vram_mb": 2048.0},
        reason="exit code 1: ValueError:\tx",
    )
    ids["rejected"] = ledger.add_experiment(
        run_id=run.id,
        kind=Kind.CANDIDATE,
        status=Status.REJECTED,
        parent=sha(6),
        commit="",
        description="hack prepare",
        proposer="test",
        seed=42,
        now=T0 + 75,
        reason="edits locked file(s) prepare.py",
    ).id
    return run, ids


# ---------------------------------------------------------------------------
# results.tsv


def test_tsv_exact_format(ledger: Ledger, tmp_path: Path) -> None:
    run, _ = populate(ledger)
    path = tmp_path / "results.tsv"
    write_results_tsv(path, ledger.experiments(run.id))
    text = path.read_text()
    assert text.endswith("\n")
    assert text.splitlines() == [
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription",
        "aaaaaaa\t1.000000\t44.0\tkeep\tbaseline",
        "aaaaaaa\t1.020000\t44.0\tkeep\tbaseline",
        "4444444\t0.970000\t0.0\tdiscard\tWIDTH 64 -> 128",
        "3333333\t0.950000\t10.3\tkeep\tLR 0.01 -> 0.02",
        "6666666\t0.000000\t0.0\tcrash\thack prepare (edits locked file(s) prepare.py)",
        "5555555\t0.000000\t0.0\tcrash\tDEPTH 4 -> 8 (exit code 1: ValueError: x)",
    ]
    assert all(len(line.split("\t")) == 5 for line in text.splitlines())
    assert text.splitlines()[0] == TSV_HEADER


def test_tsv_baseline_first_even_if_it_finished_last(ledger: Ledger) -> None:
    run = run_of(ledger, repeats=1)
    finished(
        ledger,
        run.id,
        kind=Kind.CANDIDATE,
        status=Status.DISCARD,
        commit=sha(2),
        start=T0,
        end=T0 + 5,
        metrics={"val_bpb": 1.1},
    )
    finished(
        ledger,
        run.id,
        kind=Kind.BASELINE,
        status=Status.KEEP,
        commit=BASE,
        start=T0,
        end=T0 + 50,
        metrics={"val_bpb": 1.0},
    )
    rows = tsv_rows(ledger.experiments(run.id))
    assert [r.split("\t")[3] for r in rows] == ["keep", "discard"]
    assert rows[0].startswith("aaaaaaa\t1.000000")


def test_tsv_skips_unfinished_and_uses_the_metric(ledger: Ledger) -> None:
    run = run_of(ledger)
    ledger.add_experiment(
        run_id=run.id,
        kind=Kind.CANDIDATE,
        status=Status.QUEUED,
        parent=BASE,
        commit=sha(1),
        description="q",
        proposer="p",
        seed=1,
        now=T0,
    )
    finished(
        ledger,
        run.id,
        kind=Kind.BASELINE,
        status=Status.KEEP,
        commit=BASE,
        start=T0,
        end=T0 + 1,
        metrics={"val_bpb": 1.0, "acc": 0.5},
        description="",
    )
    rows = tsv_rows(ledger.experiments(run.id), metric="acc")
    assert rows == ["aaaaaaa\t0.500000\t0.0\tkeep\t-"]


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.tsv"
    atomic_write(path, "one\n")
    atomic_write(path, "two\n")
    assert path.read_text() == "two\n"
    assert [p.name for p in path.parent.iterdir()] == ["results.tsv"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "results.tsv"
    atomic_write(path, "old\n")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.tsv"]


# ---------------------------------------------------------------------------
# JSON records


def test_experiment_record(ledger: Ledger) -> None:
    _run, ids = populate(ledger)
    rec = experiment_record(ledger.get(ids["crash"]))
    assert {
        "id",
        "commit",
        "parent",
        "status",
        "description",
        "metrics",
        "started_at",
        "finished_at",
        "slot",
        "seed",
        "reason",
    } <= set(rec)
    assert rec["id"] == ids["crash"] and rec["commit"] == sha(5) and rec["parent"] == BASE
    assert rec["status"] == "crash" and rec["kind"] == "candidate"
    assert rec["metrics"] == {"val_bpb": None, "peak_vram_mb": 2048.0}  # NaN -> null
    assert (rec["started_at"], rec["finished_at"], rec["duration_s"]) == (T0 + 60, T0 + 80, 20.0)
    assert rec["slot"] == 1 and rec["seed"] == 42
    assert rec["reason"] == "exit code 1: ValueError:\tx"
    json.dumps(rec, allow_nan=False)  # strict JSON
    keep = experiment_record(ledger.get(ids["keep"]))
    assert keep["meta"] == {"best_value": 0.95} and keep["metrics"]["val_bpb"] == 0.95


# ---------------------------------------------------------------------------
# status


def test_status_record_numbers(ledger: Ledger) -> None:
    run, ids = populate(ledger)
    st = status_record(ledger, run, now=T0 + 10_000)
    assert st["tag"] == "t" and st["branch"] == "autoswarm/t" and st["metric"] == "val_bpb"
    assert st["active"] is False
    # No [metric] evaluate: status says plainly that the metric is self-reported.
    assert st["metric_source"].startswith("self-reported") and st["test"] is None
    assert st["experiments"] == {
        "total": 6,
        "keep": 3,
        "discard": 1,
        "crash": 1,
        "forged": 0,
        "rejected": 1,
        "running": 0,
        "queued": 0,
        "pending": 0,
        "interrupted": 0,
        "revoked": 0,
    }
    assert st["baseline"] == {"val_bpb": pytest.approx(1.01), "commit": BASE, "runs": 2}
    assert st["best"] == {
        "val_bpb": 0.95,
        "commit": sha(3),
        "id": ids["keep"],
        "description": "LR\t0.01 ->\n 0.02",
        # A keep recorded without evidence: its bar is its one run, its se σ̂ (the
        # baseline's 1.00, 1.02) over that one run; never validated at the end of a run.
        "runs": 1,
        "selected": None,
        "replicated": 0.95,
        "se": pytest.approx(0.02 / 2**0.5),
        "validated": False,
    }
    assert st["noise_sigma"] == pytest.approx(statistics.stdev([1.00, 1.02]))
    assert st["improvement_pct"] == pytest.approx(100 * 0.06 / 1.01)
    assert st["elapsed_s"] == 100.0
    assert st["experiments_per_hour"] == pytest.approx(5 / (100 / 3600))  # keep+discard+crash
    assert st["busy_fraction"] == pytest.approx(0.75)  # 150 s / (2 workers × 100 s)
    assert st["median_duration_s"] == 30.0
    assert st["sessions"] == 1 and st["workers"] == 2
    json.dumps(st, allow_nan=False)


def test_status_record_live_session_counts_up_to_now(ledger: Ledger) -> None:
    run = run_of(ledger)
    s = ledger.start_session(run.id, pid=1, workers=2, now=T0)
    ledger.heartbeat(s, T0 + 50)
    e = ledger.add_experiment(
        run_id=run.id,
        kind=Kind.BASELINE,
        status=Status.QUEUED,
        parent=BASE,
        commit=BASE,
        description="baseline",
        proposer="p",
        seed=42,
        now=T0,
    )
    ledger.mark_running(e.id, slot=0, started_at=T0, log_path="l")
    st = status_record(ledger, run, now=T0 + 60)
    assert st["active"] is True
    assert st["elapsed_s"] == 60.0
    assert st["experiments"]["running"] == 1
    assert st["busy_fraction"] == pytest.approx(60 / 120)  # running job counted up to now
    assert st["baseline"]["val_bpb"] is None and st["best"]["val_bpb"] is None
    assert st["noise_sigma"] is None and st["improvement_pct"] is None
    assert st["experiments_per_hour"] == 0.0


def test_status_record_stale_session_is_not_active(ledger: Ledger) -> None:
    run = run_of(ledger)
    s = ledger.start_session(run.id, pid=1, workers=1, now=T0)
    ledger.heartbeat(s, T0 + 50)
    st = status_record(ledger, run, now=T0 + 500)  # the orchestrator died at T0+50
    assert st["active"] is False and st["elapsed_s"] == 50.0


def test_status_record_sums_sessions(ledger: Ledger) -> None:
    run = run_of(ledger)
    for start, length, workers in ((T0, 100, 2), (T0 + 1000, 50, 4)):
        s = ledger.start_session(run.id, pid=1, workers=workers, now=start)
        ledger.end_session(s, now=start + length, reason="x")
    finished(
        ledger,
        run.id,
        kind=Kind.BASELINE,
        status=Status.KEEP,
        commit=BASE,
        start=T0,
        end=T0 + 100,
        metrics={"val_bpb": 1.0},
    )
    st = status_record(ledger, run, now=T0 + 5000)
    assert st["elapsed_s"] == 150.0 and st["sessions"] == 2 and st["workers"] == 4
    assert st["busy_fraction"] == pytest.approx(100 / (200 + 200))
    assert st["noise_sigma"] is None  # one baseline run: no spread yet


def test_results_tsv_waits_ten_times_what_a_write_took(tmp_path: Path) -> None:
    """A write that takes long (a huge run, a slow disk) is not repeated at once: the loop
    must not spend its time rewriting results.tsv."""
    import time

    from autoswarm.outputs import ResultsTsvWriter

    calls = []

    def slow_rows() -> list:
        calls.append(1)
        time.sleep(0.2)  # the next write may come no sooner than 2 s after this one
        return []

    w = ResultsTsvWriter(tmp_path / "results.tsv", slow_rows, "val_bpb", interval_s=0.0)
    w.changed()
    assert len(calls) == 1
    w.changed()  # at once: held back, still pending
    assert len(calls) == 1 and w.dirty
    w.flush(force=True)  # the run's end writes what is pending whatever the wait
    assert len(calls) == 2 and not w.dirty


def test_a_results_tsv_that_cannot_be_written_does_not_stop_the_run(tmp_path: Path) -> None:
    """An unwritable results.tsv was a PermissionError that aborted the run."""
    blocker = tmp_path / "out"
    blocker.write_text("a file where a directory should be")
    said: list[str] = []
    w = ResultsTsvWriter(blocker / "results.tsv", lambda: [], "val_bpb", on_error=said.append)
    w.changed()
    w.changed()
    w.flush(force=True)
    assert len(said) == 1 and "cannot write" in said[0] and "ledger keeps every row" in said[0]
    assert w.dirty and w.failing
    blocker.unlink()
    w.flush(force=True)  # writable again: written, and the failure is over
    assert (blocker / "results.tsv").read_text().startswith(TSV_HEADER)
    assert not w.failing and not w.dirty
