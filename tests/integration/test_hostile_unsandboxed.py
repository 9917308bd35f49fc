"""The orchestrator checks its own state: hostile variants with the sandbox off (issue 15).

test_hostile.py shows that inside bubblewrap a variant reaches none of these. This file
is the second layer, for ``[sandbox] mode = "off"`` (or a machine without a sandbox):
a variant that can reach the workspace deletes or replaces the ledger, corrupts the
run's branch, appends to ``prepare.py`` or kills its orchestrator, through the real
CLI and the local backend, and the test checks what the next command makes of it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autoswarm.testing.synthetic import TRAIN_PY, make_workspace

pytestmark = pytest.mark.slow

AUTOSWARM = [sys.executable, "-c", "from autoswarm.cli import main; main()"]

# The attack runs in experiment 1 (the first baseline) only, and only while ARMED exists:
# the test arms it for the runs it means to be attacked.
ATTACK = """\
import os, pathlib, signal
here = pathlib.Path.cwd()
ws = here.parents[2]  # <workspace>/.autoswarm/runs/<id>
if int(here.name) == 1 and os.path.exists("ARMED"):
    ACTION
"""

ACTIONS = {
    "delete_ledger": '(ws / ".autoswarm" / "ledger.sqlite").unlink()',
    "replace_ledger": '(ws / ".autoswarm" / "ledger.sqlite").unlink(); '
    '(ws / ".autoswarm" / "ledger.sqlite").write_bytes(b"garbage")',
    "corrupt_branch": '(ws / ".git" / "refs" / "heads" / "autoswarm" / "t").write_text("junk")',
    "append_prepare": 'open(ws / "prepare.py", "a").write("open(\\"TAMPER_RAN\\", \\"w\\")\\n")',
    "kill_parent": "os.kill(os.getppid(), signal.SIGKILL)",
}


def workspace(tmp: Path, action: str) -> tuple[Path, Path]:
    armed = tmp / "armed"
    armed.write_text("")
    code = ATTACK.replace("ARMED", str(armed)).replace("ACTION", ACTIONS[action])
    code = code.replace("TAMPER_RAN", str(tmp / "tamper-ran"))
    ws = make_workspace(tmp / "ws", budget=0.3, train_py=code + TRAIN_PY, baseline_repeats=2)
    with (ws / "autoswarm.toml").open("a") as f:
        f.write('\n[sandbox]\nmode = "off"\n')
    subprocess.run(["git", "-C", str(ws), "commit", "-qam", "sandbox off"], check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@l",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@l"})  # fmt: skip
    return ws, armed


def run(ws: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUTOSWARM, "run", "--skip-prepare", "--no-live", "--workers", "1",
         "--max-experiments", "3", "--tag", "t", *extra, "--workspace", str(ws)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def rows(ws: Path) -> list[tuple[int, str, str]]:
    con = sqlite3.connect(ws / ".autoswarm" / "ledger.sqlite")
    try:
        return list(con.execute("SELECT id, status, reason FROM experiments ORDER BY id"))
    finally:
        con.close()


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


@pytest.mark.parametrize("action", ["delete_ledger", "replace_ledger"])
def test_a_ledger_deleted_or_replaced_stops_the_run_and_nothing_is_lost(
    tmp_path: Path, action: str
) -> None:
    ws, armed = workspace(tmp_path, action)
    first = run(ws)
    line = one_error_line(first)
    assert "ledger" in line and "--resume" in line, line
    # Never a new empty ledger: the run and its first experiment are back at the path.
    assert (1, "running") in [(i, s) for i, s, _ in rows(ws)]  # resume re-queues it
    if action == "replace_ledger":
        (found,) = (ws / ".autoswarm").glob("ledger.sqlite.found-*")
        assert found.read_bytes() == b"garbage"
    armed.unlink()
    again = run(ws, "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [(i, s) for i, s, _ in rows(ws)][:2] == [(1, "keep"), (2, "keep")]


def test_a_corrupted_branch_is_repaired_from_the_ledger(tmp_path: Path) -> None:
    ws, armed = workspace(tmp_path, "corrupt_branch")
    first = run(ws)
    if first.returncode != 0:  # the keep after the attack could not move the branch
        assert "--resume" in one_error_line(first)
    armed.unlink()
    again = run(ws, "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "refs/heads/autoswarm/t was corrupt" in again.stderr, again.stderr
    head = subprocess.run(["git", "-C", str(ws), "rev-parse", "--verify", "autoswarm/t^{commit}"],
                          capture_output=True, text=True)  # fmt: skip
    assert head.returncode == 0, head.stderr
    assert list((ws / ".autoswarm" / "tampered").glob("*/refs/heads/autoswarm/t"))


def test_a_tampered_prepare_py_is_restored_before_anything_runs_it(tmp_path: Path) -> None:
    ws, armed = workspace(tmp_path, "append_prepare")
    committed = (ws / "prepare.py").read_text()
    first = run(ws)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (ws / "prepare.py").read_text() != committed  # it reached the file...
    armed.unlink()
    prep = subprocess.run([*AUTOSWARM, "prepare", "--workspace", str(ws)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert prep.returncode == 0, prep.stderr
    assert "prepare.py differed from its commit" in prep.stderr, prep.stderr
    assert "commit -am" not in prep.stderr
    assert not (tmp_path / "tamper-ran").exists()  # ...but nothing ever ran it
    assert (ws / "prepare.py").read_text() == committed


def test_a_variant_that_kills_its_orchestrator_is_a_crash_on_the_second_resume(
    tmp_path: Path,
) -> None:
    ws, _armed = workspace(tmp_path, "kill_parent")
    first = run(ws)
    assert first.returncode == -9, first.stdout + first.stderr  # it ended the run
    second = run(ws, "--resume")
    assert second.returncode == -9, second.stdout + second.stderr  # re-run once: again
    third = run(ws, "--resume")
    assert third.returncode == 0, third.stdout + third.stderr
    (killer, *rest) = rows(ws)
    assert killer[1] == "crash" and "each of the 2 times the orchestrator died" in killer[2]
    assert [s for _, s, _ in rest][:1] == ["keep"]  # the run went on without it
