"""The SQLite ledger: schema, WAL, round trips, filters, requeue, run tags, sessions."""

from __future__ import annotations

import math
import os
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from autoswarm.errors import LedgerError
from autoswarm.ledger import SCHEMA_VERSION, Ledger
from autoswarm.types import Kind, Status

T0 = 1_700_000_000.0


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / "state" / "ledger.sqlite") as led:
        yield led


def new_run(ledger: Ledger, tag: str = "t"):
    return ledger.create_run(
        tag=tag,
        branch=f"autoswarm/{tag}",
        base_commit="a" * 40,
        config={"run": {"budget": 60.0}, "metric": {"name": "val_bpb"}},
        now=T0,
    )


def add(ledger: Ledger, run_id: int, status: Status = Status.QUEUED, **kw):
    args = dict(
        run_id=run_id,
        kind=Kind.CANDIDATE,
        status=status,
        parent="a" * 40,
        commit="b" * 40,
        description="LR 0.01 -> 0.015",
        proposer="knobs",
        seed=42,
        now=T0 + 1,
    )
    args.update(kw)
    return ledger.add_experiment(**args)


# ---------------------------------------------------------------------------
# Schema and journal


def test_schema_version_recorded(ledger: Ledger) -> None:
    assert ledger.schema_version == SCHEMA_VERSION
    row = (
        sqlite3.connect(ledger.path)
        .execute("SELECT value FROM meta WHERE key='schema_version'")
        .fetchone()
    )
    assert row == (str(SCHEMA_VERSION),)


def test_wal_mode(ledger: Ledger) -> None:
    conn = sqlite3.connect(ledger.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_reopen_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as a:
        run = new_run(a)
        add(a, run.id)
    with Ledger(path) as b:
        assert b.schema_version == SCHEMA_VERSION
        assert len(b.experiments(run.id)) == 1


def test_processes_opening_a_new_ledger_at_once_migrate_it_once(tmp_path: Path) -> None:
    """A scheduler and a worker (or two CLI commands) may create the ledger together."""
    for attempt in range(10):
        path = tmp_path / f"l{attempt}.sqlite"
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_it(
            path: Path = path,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                Ledger(path).close()  # its own connection, as another process has
            except BaseException as e:  # collected for the assertion below
                errors.append(e)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with Ledger(path) as ledger:
            assert ledger.schema_version == SCHEMA_VERSION


def test_a_schema_version_that_is_not_a_number_is_one_line(tmp_path: Path) -> None:
    """It was a ValueError traceback from int()."""
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value='six' WHERE key='schema_version'")
    conn.close()
    with pytest.raises(LedgerError, match=r"records schema version 'six', which is not a number"):
        Ledger(path)


def test_newer_schema_is_refused_with_an_upgrade_hint(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    conn.close()
    with pytest.raises(LedgerError) as e:
        Ledger(path)
    msg = str(e.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in msg
    assert "upgrade autoswarm" in msg and str(path) in msg


def test_not_a_database_is_a_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="move it aside") as e:
        Ledger(path)
    # ... with what a new run would overwrite (the advice used to lose results.tsv).
    assert "together with results.tsv and .autoswarm/logs" in str(e.value)


# ---------------------------------------------------------------------------
# Experiments


def test_experiment_round_trip_of_every_field(ledger: Ledger) -> None:
    run = new_run(ledger)
    e = add(
        ledger,
        run.id,
        kind=Kind.CONFIRM,
        diff="--- a/train.py\n+++ b/train.py\n",
        meta={"changes": {"LR": [0.01, 0.015]}, "fingerprint": "abc"},
        seed=7,
    )
    assert e.status is Status.QUEUED and e.started_at is None and e.finished_at is None
    assert e.created_at == T0 + 1
    ledger.mark_running(e.id, slot=3, started_at=T0 + 10, log_path="/logs/00001.log")
    ledger.set_handle(e.id, '{"pid": 123}')
    assert ledger.get(e.id).status is Status.RUNNING
    assert ledger.handle(e.id) == '{"pid": 123}'
    metrics = {"val_bpb": 0.9979, "peak_vram_mb": 45060.2, "mfu": math.nan, "big": math.inf}
    done = ledger.finish(
        e.id,
        status=Status.DISCARD,
        metrics=metrics,
        metric=0.9979,
        finished_at=T0 + 70,
        reason="not better",
        meta={"changes": {"LR": [0.01, 0.015]}, "best_before": 0.99},
    )
    again = ledger.get(e.id)
    assert replace(again, metrics={}) == replace(done, metrics={})  # NaN != NaN
    assert again.id == e.id and again.run_id == run.id
    assert again.kind is Kind.CONFIRM and again.status is Status.DISCARD
    assert again.parent == "a" * 40 and again.commit == "b" * 40
    assert again.description == "LR 0.01 -> 0.015" and again.proposer == "knobs"
    assert again.diff == "--- a/train.py\n+++ b/train.py\n"
    assert again.seed == 7 and again.slot == 3
    assert again.created_at == T0 + 1 and again.started_at == T0 + 10
    assert again.finished_at == T0 + 70 and again.duration_s == 60.0
    assert again.log_path == "/logs/00001.log" and again.reason == "not better"
    assert again.meta == {"changes": {"LR": [0.01, 0.015]}, "best_before": 0.99}
    assert again.metrics["val_bpb"] == 0.9979 and again.metrics["peak_vram_mb"] == 45060.2
    assert math.isnan(again.metrics["mfu"]) and again.metrics["big"] == math.inf
    assert again.value("val_bpb") == 0.9979 and again.value("mfu") is None
    assert ledger.attempts(e.id) == 1


def test_finish_keeps_meta_and_start_when_not_given(ledger: Ledger) -> None:
    run = new_run(ledger)
    e = add(ledger, run.id, meta={"k": 1})
    ledger.mark_running(e.id, slot=0, started_at=T0 + 5, log_path="x")
    done = ledger.finish(e.id, status=Status.CRASH, metrics={}, metric=None, finished_at=T0 + 6)
    assert done.meta == {"k": 1} and done.started_at == T0 + 5


def test_finish_needs_an_end_state(ledger: Ledger) -> None:
    run = new_run(ledger)
    e = add(ledger, run.id)
    with pytest.raises(ValueError, match="end state"):
        ledger.finish(e.id, status=Status.RUNNING, metrics={}, metric=None, finished_at=T0)


def test_add_finished_experiment_sets_finished_at(ledger: Ledger) -> None:
    run = new_run(ledger)
    e = add(ledger, run.id, status=Status.REJECTED, reason="edits locked file(s) prepare.py")
    assert e.finished_at == T0 + 1 and e.reason.startswith("edits locked")
    assert add(ledger, run.id, status=Status.QUEUED).finished_at is None


def test_get_missing_experiment(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no experiment with id 99"):
        ledger.get(99)


def test_statuses_filter_and_since_id(ledger: Ledger) -> None:
    run = new_run(ledger)
    other = new_run(ledger, "other")
    ids = {}
    for st in (Status.QUEUED, Status.KEEP, Status.CRASH, Status.DISCARD, Status.KEEP):
        ids.setdefault(st, []).append(add(ledger, run.id, status=st).id)
    add(ledger, other.id, status=Status.KEEP)
    all_ids = [e.id for e in ledger.experiments(run.id)]
    assert all_ids == sorted(all_ids) and len(all_ids) == 5
    keep = ledger.experiments(run.id, statuses=[Status.KEEP])
    assert [e.id for e in keep] == ids[Status.KEEP]
    two = ledger.experiments(run.id, statuses=[Status.CRASH, Status.DISCARD])
    assert [e.id for e in two] == ids[Status.CRASH] + ids[Status.DISCARD]
    assert [e.id for e in ledger.experiments(run.id, since_id=all_ids[2])] == all_ids[3:]
    assert [
        e.id for e in ledger.experiments(run.id, statuses=[Status.KEEP], since_id=all_ids[1])
    ] == [all_ids[4]]
    assert ledger.experiments(run.id, statuses=[Status.RUNNING]) == []


def test_requeue_clears_timing_and_handle(ledger: Ledger) -> None:
    run = new_run(ledger)
    e = add(ledger, run.id)
    ledger.mark_running(e.id, slot=1, started_at=T0 + 3, log_path="log")
    ledger.set_handle(e.id, '{"pid": 1}')
    ledger.requeue(e.id, reason="orphaned")
    q = ledger.get(e.id)
    assert q.status is Status.QUEUED
    assert q.slot is None and q.started_at is None and q.finished_at is None
    assert ledger.handle(e.id) is None
    assert q.reason == "orphaned" and q.commit == e.commit and q.id == e.id
    ledger.mark_running(e.id, slot=0, started_at=T0 + 9, log_path="log")
    assert ledger.attempts(e.id) == 2


# ---------------------------------------------------------------------------
# Runs and sessions


def test_runs(ledger: Ledger) -> None:
    assert ledger.get_run() is None and ledger.runs() == []
    a = new_run(ledger, "a")
    b = new_run(ledger, "b")
    assert a.tag == "a" and a.branch == "autoswarm/a" and a.base_commit == "a" * 40
    assert a.config == {"run": {"budget": 60.0}, "metric": {"name": "val_bpb"}}
    assert a.created_at == T0
    assert ledger.get_run() == b  # the latest
    assert ledger.get_run("a") == a
    assert ledger.get_run("zzz") is None
    assert [r.tag for r in ledger.runs()] == ["a", "b"]


def test_duplicate_tag_says_resume(ledger: Ledger) -> None:
    new_run(ledger, "mar5")
    with pytest.raises(LedgerError) as e:
        new_run(ledger, "mar5")
    msg = str(e.value)
    assert "'mar5' already exists" in msg
    assert "autoswarm run --resume --tag mar5" in msg
    assert "new --tag" in msg


def test_sessions_seconds(ledger: Ledger) -> None:
    run = new_run(ledger)
    s1 = ledger.start_session(run.id, pid=111, workers=2, now=T0)
    ledger.heartbeat(s1, T0 + 40)
    (live,) = ledger.sessions(run.id)
    assert live.ended_at is None and live.seconds == 40.0  # up to the last heartbeat
    ledger.end_session(s1, now=T0 + 100, reason="limit")
    s2 = ledger.start_session(run.id, pid=222, workers=4, now=T0 + 500)
    first, second = ledger.sessions(run.id)
    assert (first.id, first.pid, first.workers) == (s1, 111, 2)
    assert first.seconds == 100.0 and first.end_reason == "limit" and first.ended_at == T0 + 100
    assert (second.id, second.workers, second.seconds) == (s2, 4, 0.0)


def test_a_second_connection_reads_while_the_first_is_open(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    writer = Ledger(path)
    try:
        run = new_run(writer)
        e = add(writer, run.id)
        reader = Ledger(path)
        try:
            assert [x.id for x in reader.experiments(run.id)] == [e.id]
            writer.finish(
                e.id, status=Status.KEEP, metrics={"val_bpb": 1.0}, metric=1.0, finished_at=T0 + 9
            )
            assert reader.get(e.id).status is Status.KEEP  # sees the writer's commit
            add(reader, run.id)  # and may write too
            assert len(writer.experiments(run.id)) == 2
        finally:
            reader.close()
    finally:
        writer.close()


def test_summary_rows_are_the_rows_without_their_diff(ledger: Ledger) -> None:
    # `status` reads every row of a run but only a few facts of each: summary rows come
    # without the diff, and their meta is parsed when (and only if) it is read.
    run = new_run(ledger)
    meta = {"evidence": {"values": [1.0, 0.99]}, "knobs": {"LR": 0.01}, "tier": "a100"}
    add(ledger, run.id, diff="--- a/train.py\n+++ b/train.py\n", meta=meta)
    add(ledger, run.id, kind=Kind.CONFIRM, meta={"confirms": 1, "z_before": None})
    add(ledger, run.id, status=Status.REJECTED, reason="changes nothing")
    full = ledger.experiments(run.id)
    summary = ledger.experiments(run.id, summary=True)
    assert [replace(e, diff="") for e in full] == summary
    assert summary[0].diff == "" and full[0].diff.startswith("---")
    first, confirm, rejected = summary
    assert first.meta.get("tier") == "a100" and first.meta["knobs"] == {"LR": 0.01}
    assert first.meta == meta and dict(first.meta) == meta and len(first.meta) == 3
    assert "evidence" in first.meta and "design" not in first.meta
    assert first.meta.get("design") is None and first.meta.get("design", 7) == 7
    with pytest.raises(KeyError):
        _ = first.meta["design"]
    assert confirm.meta.get("confirms") == 1 and confirm.meta["z_before"] is None
    assert dict(rejected.meta) == {} and rejected.meta.get("tier") is None
    # A key that is not a plain identifier is looked up in the parsed object.
    odd = add(ledger, run.id, meta={"a b": 1, 'q"uote': 2})
    [row] = ledger.experiments(run.id, since_id=odd.id - 1, summary=True)
    assert row.meta.get("a b") == 1 and row.meta['q"uote'] == 2 and "x y" not in row.meta
    assert repr(row.meta) == repr({"a b": 1, 'q"uote': 2})


# ---------------------------------------------------------------------------
# The ledger checks its own files before every write (issue 15)


@pytest.mark.parametrize("victim", ["ledger.sqlite", "ledger.sqlite-wal"])
def test_a_deleted_ledger_is_saved_back_and_the_run_stops(tmp_path: Path, victim: str) -> None:
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path)
    try:
        run = new_run(led)
        kept = add(led, run.id)
        (tmp_path / victim).unlink()
        with pytest.raises(LedgerError, match=r"(was deleted|lost its write-ahead log).*--resume"):
            add(led, run.id, description="written after the delete")
        # Every later write says the same and writes nothing; reads go on.
        with pytest.raises(LedgerError, match="stopped"):
            led.heartbeat(1, T0)
        assert led.broken is not None and "--resume" in led.broken
        assert [e.id for e in led.experiments(run.id)] == [kept.id]
    finally:
        led.close()
    with Ledger(path) as again:  # what was recorded before is all there, at the same path
        assert [e.description for e in again.experiments(run.id)] == [kept.description]
    assert not list(tmp_path.glob("*.rescued-*"))


def test_a_replaced_ledger_is_kept_aside_never_written(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path)
    try:
        run = new_run(led)
        add(led, run.id)
        path.unlink()
        path.write_bytes(b"garbage the variant wrote")
        with pytest.raises(LedgerError, match=r"replaced by another file.*found-"):
            led.requeue(1, reason="x")
    finally:
        led.close()
    found = list(tmp_path.glob("ledger.sqlite.found-*"))
    assert len(found) == 1 and found[0].read_bytes() == b"garbage the variant wrote"
    with Ledger(path) as again:
        assert len(again.experiments(run.id)) == 1
        assert again.schema_version == SCHEMA_VERSION


def test_other_connections_opening_and_closing_do_not_alarm_the_writer(tmp_path: Path) -> None:
    """Readers (`autoswarm status`) come and go while the run writes: no false alarm."""
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as led:
        run = new_run(led)
        for _ in range(3):
            with Ledger(path) as reader:
                reader.experiments(run.id)
            add(led, run.id)
        assert led.broken is None and len(led.experiments(run.id)) == 3


def test_a_session_whose_orchestrator_is_gone_is_not_live(ledger: Ledger) -> None:
    """`status` said "active" for 30 s after the orchestrator was killed."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    run = ledger.create_run(tag="t", branch="autoswarm/t", base_commit="0" * 40, config={}, now=T0)
    dead = ledger.start_session(run.id, pid=int(gone.stdout), workers=1, now=T0)
    ledger.start_session(run.id, pid=os.getpid(), workers=1, now=T0)
    by_pid = {s.id: s for s in ledger.sessions(run.id)}
    assert not by_pid[dead].live(T0 + 1)  # its process exited
    assert [s.live(T0 + 1) for s in by_pid.values()].count(True) == 1
    assert not any(s.live(T0 + 31) for s in by_pid.values())  # no heartbeat for 30 s
