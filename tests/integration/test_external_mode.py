"""External-agent mode: ``autoswarm run --strategy external`` driven by submit / wait / results.

The end-to-end test starts a real ``autoswarm run`` process on a synthetic workspace
and drives it like a coding agent would, from a script that calls ``autoswarm
submit``, ``autoswarm wait`` and ``autoswarm results --since`` as subprocesses.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoswarm.config import load_config
from autoswarm.errors import LockedFileError, PatchError, WorkspaceError
from autoswarm.ledger import _MIGRATIONS, SCHEMA_VERSION, Ledger
from autoswarm.proposers.base import Proposer
from autoswarm.proposers.external import ExternalProposer, files_from_path, run_active, submit
from autoswarm.skill import render_skill
from autoswarm.testing.contract import ProposerContract, contract_context
from autoswarm.testing.synthetic import TRAIN_PY, make_workspace
from autoswarm.types import Kind, Status
from autoswarm.workspace import Workspace

AUTOSWARM = [sys.executable, "-m", "autoswarm"]


def cli(
    ws: Path, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*AUTOSWARM, *args, "--workspace", str(ws)],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"autoswarm {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
    return proc


def lr_diff(old: str, new: str) -> str:
    return (
        "--- a/train.py\n+++ b/train.py\n@@ -3,3 +3,3 @@\n"
        f" \n-LR = {old}\n+LR = {new}\n WIDTH = 64\n"
    )


# ---------------------------------------------------------------------------
# End to end: a real run process, a driver script of CLI calls


def test_external_agent_drives_a_real_run(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", budget=0.3, baseline_repeats=3)
    toml = ws / "autoswarm.toml"
    text = toml.read_text().replace("confirm_runs = 2", "confirm_runs = 0")
    toml.write_text(text.replace("best_runs = 0", "best_runs = 1"))
    variants = tmp_path / "variants"

    # Queued before any run exists: the run picks it up when it starts.
    (variants / "v0").mkdir(parents=True)
    (variants / "v0" / "train.py").write_text(
        TRAIN_PY.replace("USE_BIAS = False", "USE_BIAS = True")
    )
    early = json.loads(
        cli(ws, "submit", str(variants / "v0"), "--desc", "use a bias", "--json").stdout
    )
    assert early["active"] is False and "waits in the queue" in early["notes"][0]

    run = subprocess.Popen(
        [
            *AUTOSWARM,
            *("run", "--workspace", str(ws), "--strategy", "external", "--workers", "2"),
            *("--max-experiments", "10", "--tag", "ext", "--skip-prepare", "--no-live"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _active(ws):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)

        # A whole file, a diff, and a near-duplicate of the file (other comment, spacing).
        (variants / "v1").mkdir()
        (variants / "v1" / "train.py").write_text(TRAIN_PY.replace("LR = 0.01", "LR = 0.04"))
        a = json.loads(
            cli(ws, "submit", str(variants / "v1"), "--desc", "LR 0.01 -> 0.04", "--json").stdout
        )
        assert a["active"] is True and a["notes"] == [] and a["run"] == "ext"
        (tmp_path / "depth.diff").write_text(
            "--- a/train.py\n+++ b/train.py\n@@ -5,3 +5,3 @@\n WIDTH = 64\n-DEPTH = 4\n+DEPTH = 6\n"
            " WARMUP_RATIO = 0.1\n"
        )
        b = cli(ws, "submit", "--diff", str(tmp_path / "depth.diff"), "--desc", "DEPTH 4 -> 6")
        b_id = int(b.stdout.strip())
        assert f"queued #{b_id}" in b.stderr
        dup_file = variants / "dup" / "train.py"
        dup_file.parent.mkdir()
        dup_file.write_text(TRAIN_PY.replace("LR = 0.01", "LR=0.04  # the same again"))
        c = int(cli(ws, "submit", str(dup_file), "--desc", "LR to 0.04 (again)").stdout)

        # Refused at once, exit code 2, with what to do: a diff that does not apply,
        # one that touches the locked prepare.py, a directory with a changed prepare.py.
        bad = cli(
            ws, "submit", "--diff", "-", "--desc", "x", check=False, stdin=lr_diff("0.5", "0.6")
        )
        assert bad.returncode == 2 and "does not apply" in bad.stderr
        locked = (
            "--- a/prepare.py\n+++ b/prepare.py\n@@ -1 +1 @@\n"
            '-"""No data to prepare for the synthetic workspace."""\n+EVAL = 1\n'
        )
        bad = cli(ws, "submit", "--diff", "-", "--desc", "x", check=False, stdin=locked)
        assert bad.returncode == 2 and "locked file(s) prepare.py" in bad.stderr
        (variants / "v1" / "prepare.py").write_text("# a better metric\n")
        bad = cli(ws, "submit", str(variants / "v1"), "--desc", "x", check=False)
        assert bad.returncode == 2 and "locked file prepare.py" in bad.stderr

        ids = [early["id"], a["id"], b_id, c]
        assert ids == sorted(ids) and len(set(ids)) == 4
        out = cli(ws, "wait", *map(str, ids), "--timeout", "90", "--json")
        got = {r["id"]: r for r in json.loads(out.stdout)}
        for i in ids[:3]:
            assert got[i]["status"] in ("keep", "discard"), got[i]
            assert got[i]["value"] is not None and got[i]["metric"] == "val_bpb"
            assert got[i]["proposer"] == "external" and got[i]["meta"]["submission"] == i
        assert got[a["id"]]["status"] == "keep"  # LR 0.04 is far better than 0.01
        assert got[a["id"]]["description"] == "LR 0.01 -> 0.04"
        assert got[c]["status"] == "rejected" and got[c]["reason"] == f"duplicate of #{a['id']}"
        assert got[c]["duplicate_of"] == a["id"]

        # results --since: only what came after the early submission (baselines included:
        # the run made them after the early submission had taken its id).
        since = json.loads(
            cli(ws, "results", "--since", str(early["id"]), "--format", "json").stdout
        )
        assert all(r["id"] > early["id"] for r in since) and set(ids[1:]) <= {
            r["id"] for r in since
        }
        assert [r["id"] for r in since] == sorted(r["id"] for r in since)
        table = cli(ws, "wait", str(a["id"])).stdout
        assert "keep" in table and "LR 0.01 -> 0.04" in table

        # 3 baselines + 4 variants + 1 re-measurement of the keep (best_runs = 1: its bar rests
        # on one fresh run) so far; two more reach --max-experiments 10 and end the run.
        more = []
        for v in ("0.02", "0.03"):
            (tmp_path / f"lr{v}.diff").write_text(lr_diff("0.04", v))
            more.append(
                cli(
                    ws, "submit", "--diff", str(tmp_path / f"lr{v}.diff"), "--desc", f"LR -> {v}"
                ).stdout.strip()
            )
        cli(ws, "wait", *more, "--timeout", "90")
        stdout, stderr = run.communicate(timeout=60)
        assert run.returncode == 0, stderr
        assert "ended (max experiments)" in stdout.replace("\n", " ")
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            try:
                run.wait(timeout=20)
            except subprocess.TimeoutExpired:
                run.kill()

    with Ledger(ws / ".autoswarm" / "ledger.sqlite") as led:
        rec = led.get_run("ext")
        assert rec is not None
        exps = led.experiments(rec.id)
        assert sum(e.kind is Kind.BASELINE for e in exps) == 3  # the default repeats
        (rerun,) = [e for e in exps if e.kind is Kind.CONFIRM]  # the keep's re-measurement
        assert rerun.rerun_of == a["id"] and rerun.is_remeasure is True
        assert len(exps) == 10 and {int(m) for m in more} <= {e.id for e in exps}
        assert {e.id for e in exps if e.proposer == "external"} >= set(ids)
        assert not led.pending_submissions()


def _active(ws: Path) -> bool:
    """The run process holds the lock and has recorded its run (so submit bases on its best)."""
    if not (ws / ".autoswarm" / "ledger.sqlite").exists():
        return False
    with Ledger(ws / ".autoswarm" / "ledger.sqlite") as led:
        if led.get_run("ext") is None:
            return False
    return run_active(Workspace(ws, load_config(ws)))


# ---------------------------------------------------------------------------
# submit without a run process; the ledger's submissions table


def test_submit_validates_against_the_current_best(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    ws = Workspace(root, load_config(root))
    with Ledger(ws.ledger_path) as led:
        with pytest.raises(PatchError, match=r"does not apply.*submit again"):
            submit(ws, led, diff=lr_diff("0.9", "0.8"), description="x")
        with pytest.raises(PatchError, match="not a unified diff"):
            submit(ws, led, diff="make LR bigger", description="x")
        with pytest.raises(LockedFileError, match=r"locked file prepare\.py"):
            submit(ws, led, files={"prepare.py": "x = 1\n"}, description="x")
        with pytest.raises(LockedFileError, match="not editable"):
            submit(ws, led, files={"notes.txt": "x\n"}, description="x")
        with pytest.raises(PatchError, match="changes nothing"):
            submit(ws, led, files={"train.py": TRAIN_PY}, description="x")
        with pytest.raises(WorkspaceError, match="none of the editable files"):
            files_from_path(tmp_path, ws.config)
        sub = submit(ws, led, diff=lr_diff("0.01", "0.02"), description="LR  0.01 ->\n0.02")
        assert sub.description == "LR 0.01 -> 0.02" and sub.files == ("train.py",)
        assert sub.parent == ws.head() and sub.run_tag is None and not sub.active
        rec = led.get_submission(sub.id)
        assert rec is not None and "LR = 0.02" in rec.files["train.py"]
        assert [s.id for s in led.pending_submissions()] == [sub.id]


def test_submission_ids_are_reserved_from_the_experiment_sequence(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite") as led:
        run = led.create_run(tag="t", branch="b", base_commit="0" * 40, config={}, now=0.0)
        common = dict(
            run_id=run.id,
            kind=Kind.CANDIDATE,
            status=Status.QUEUED,
            parent="p",
            commit="c",
            description="d",
            proposer="x",
            seed=0,
            now=0.0,
        )
        first = led.add_experiment(**common)
        sid = led.add_submission(parent="p", files={"train.py": "x"}, description="s", now=0.0)
        later = led.add_experiment(**common)
        assert first.id < sid < later.id
        assert [s.id for s in led.pending_submissions()] == [sid]
        made = led.add_experiment(**common, exp_id=sid)  # what the scheduler does
        assert made.id == sid and led.pending_submissions() == []
        assert led.add_submission(parent="p", files={}, description="s", now=0.0) > later.id
        # A tagged submission is only for its run.
        tagged = led.add_submission(parent="p", files={}, description="s", now=0.0, tag="other")
        assert tagged not in [s.id for s in led.pending_submissions(tag="t")]
        assert tagged in [s.id for s in led.pending_submissions(tag="other")]


def test_old_ledgers_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    conn = sqlite3.connect(path)
    for stmt in _MIGRATIONS[1]:
        conn.execute(stmt)
    conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")
    conn.execute(
        "INSERT INTO runs(tag, branch, base_commit, config, created_at) VALUES ('old','b','c','{}',0)"
    )
    conn.execute(
        """INSERT INTO experiments(run_id, kind, status, parent, commit_sha, description, proposer,
               seed, created_at) VALUES (1,'baseline','keep','c','c','baseline','baseline',42,0)"""
    )
    conn.commit()
    conn.close()
    with Ledger(path) as led:
        assert led.schema_version == SCHEMA_VERSION
        assert led.experiments(1)[0].description == "baseline"
        assert led.add_submission(parent="c", files={}, description="s", now=0.0) == 2


# ---------------------------------------------------------------------------
# The proposer and the skill file


class TestExternalProposerContract(ProposerContract):
    def make_proposer(self) -> Proposer:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="autoswarm-ext-")) / "ledger.sqlite"
        with Ledger(path) as led:
            for v in ("0.02", "0.03", "0.04", "0.05", "0.06", "0.07", "0.08", "0.09"):
                led.add_submission(
                    parent="0" * 40,
                    files={"train.py": TRAIN_PY.replace("LR = 0.01", f"LR = {v}")},
                    description=f"LR 0.01 -> {v}",
                    now=0.0,
                )
        p = ExternalProposer(path)
        assert isinstance(p, Proposer)
        return p

    def files(self) -> dict[str, str]:
        return {"train.py": TRAIN_PY}

    def test_in_order_once_and_never_exhausted(self) -> None:
        p = self.make_proposer()
        try:
            ctx = contract_context(self.files())
            first = p.propose(ctx, 3)
            assert [x.description for x in first] == [f"LR 0.01 -> 0.0{i}" for i in (2, 3, 4)]
            ids = [x.meta["submission"] for x in first]
            assert ids == sorted(ids)
            rest = p.propose(ctx, 10)
            assert len(rest) == 5 and not {x.meta["submission"] for x in rest} & set(ids)
            assert p.propose(ctx, 10) == [] and p.exhausted is False
            assert p.idle_poll_s <= 1.0
        finally:
            p.close()


def test_skill_guide_names_the_commands_and_this_workspace(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    text = render_skill(load_config(root), root)
    assert text.startswith("---\nname: autoswarm\n")
    assert "{{" not in text
    for must in (
        "autoswarm run --strategy external",
        "autoswarm submit",
        "autoswarm wait",
        "results --since",
        "status --json",
        "noise_sigma",
        "duplicate of #ID",
        "`prepare.py`",
        "`train.py`",
        str(root.resolve()),
        "lower is better",
    ):
        assert must in text, must
    out = subprocess.run(
        [*AUTOSWARM, "skill", "--workspace", str(root), "--out", str(tmp_path / "s" / "SKILL.md")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s" / "SKILL.md").read_text() == text
