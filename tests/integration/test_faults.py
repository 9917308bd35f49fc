"""Faults with real processes: SIGKILL of the orchestrator, Ctrl-C, a second orchestrator.

The synthetic workspace (a train.py that sleeps for the budget and prints a known
metric) keeps these fast; the orchestrator is the real CLI in its own process.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoswarm.testing.synthetic import make_workspace

pytestmark = pytest.mark.slow

AUTOSWARM = [sys.executable, "-c", "from autoswarm.cli import main; main()"]


def start_run(ws: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*AUTOSWARM, "run", "--workspace", str(ws), "--skip-prepare", "--no-live", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def rows(ws: Path) -> list[dict]:
    con = sqlite3.connect(ws / ".autoswarm" / "ledger.sqlite")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM experiments ORDER BY id")]
    finally:
        con.close()


def wait_for(pred, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except sqlite3.Error:
            pass
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUTOSWARM, *args, "--workspace", str(ws)], capture_output=True, text=True, timeout=60
    )


def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", budget=1.5, baseline_repeats=3)
    proc = start_run(ws, "--workers", "2", "--max-experiments", "12", "--tag", "t")
    final = ("keep", "discard", "crash", "rejected")
    wait_for(
        lambda: (
            sum(r["status"] in final for r in rows(ws)) >= 5
            and any(r["status"] == "running" for r in rows(ws))
        )
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = rows(ws)
    finished_before = {r["id"]: r for r in before if r["status"] in final}
    orphans = [r for r in before if r["status"] == "running"]
    assert orphans, "the kill must hit while experiments run"
    orphan_pids = [json.loads(r["handle"])["pid"] for r in orphans if r["handle"]]

    done = subprocess.run(
        [
            *AUTOSWARM,
            "run",
            "--workspace",
            str(ws),
            "--skip-prepare",
            "--no-live",
            "--resume",
            "--tag",
            "t",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not any(alive(p) for p in orphan_pids), "orphaned runs are killed on resume"

    after = rows(ws)
    assert len(after) == 12  # the limit counts the whole run, baseline included
    assert all(r["status"] in final for r in after)
    for rid, r in finished_before.items():  # nothing finished was lost or run again
        a = next(x for x in after if x["id"] == rid)
        assert (a["status"], a["metrics"], a["finished_at"], a["attempts"]) == (
            r["status"],
            r["metrics"],
            r["finished_at"],
            r["attempts"],
        )
    for o in orphans:  # orphans were re-queued and ran once more under the same id
        a = next(x for x in after if x["id"] == o["id"])
        assert a["attempts"] == o["attempts"] + 1 and a["commit_sha"] == o["commit_sha"]
    fps = [
        r["fingerprint"] for r in after if r["status"] != "rejected" and r["kind"] == "candidate"
    ]
    assert len(fps) == len(set(fps)), "no variant ran twice under two candidate ids"

    tsv = (ws / "results.tsv").read_text().splitlines()
    assert tsv[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert len(tsv) - 1 == len(after)
    status = json.loads(cli(ws, "status", "--json").stdout)
    assert status["experiments"]["total"] == 12
    assert (
        status["experiments"]["keep"]
        + status["experiments"]["discard"]
        + status["experiments"]["crash"]
        + status["experiments"]["rejected"]
        == 12
    )
    # The branch head holds the best variant's files.
    best_commit = status["best"]["commit"]

    def tree(ref):
        return subprocess.run(
            ["git", "rev-parse", f"{ref}^{{tree}}"],
            cwd=ws,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert tree("autoswarm/t") == tree(best_commit)
    assert status["sessions"] == 2


def test_ctrl_c_marks_running_interrupted_then_resume_finishes(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", budget=2.0, baseline_repeats=3)
    proc = start_run(ws, "--workers", "2", "--max-experiments", "8", "--tag", "t")
    wait_for(lambda: sum(r["status"] == "running" for r in rows(ws)) == 2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "resume with: autoswarm run --resume --tag t" in out
    rs = rows(ws)
    assert not any(r["status"] == "running" for r in rs), "nothing is left half-written"
    interrupted = [r for r in rs if r["status"] == "interrupted"]
    assert interrupted
    for r in interrupted:
        pid = json.loads(r["handle"])["pid"]
        assert not alive(pid)
    done = subprocess.run(
        [*AUTOSWARM, "run", "--workspace", str(ws), "--skip-prepare", "--no-live", "--resume"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    after = rows(ws)
    assert len(after) == 8 and all(
        r["status"] in ("keep", "discard", "crash", "rejected") for r in after
    )


def test_second_orchestrator_on_the_same_workspace_is_refused(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", budget=3.0, baseline_repeats=3)
    first = start_run(ws, "--workers", "1", "--max-experiments", "3", "--tag", "t")
    try:
        wait_for(lambda: any(r["status"] == "running" for r in rows(ws)))
        second = subprocess.run(
            [*AUTOSWARM, "run", "--workspace", str(ws), "--skip-prepare", "--no-live", "--resume"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert "another `autoswarm run`" in second.stderr and str(first.pid) in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
