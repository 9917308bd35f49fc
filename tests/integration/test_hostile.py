"""Hostile train.py variants through the normal loop, in the sandbox (issue 15).

Each test writes a train.py that attacks the orchestrator the way an agent-written
variant could, runs it with ``autoswarm run`` (the real CLI, the local backend, the
default ``[sandbox] mode = "auto"``, which is bubblewrap on this machine), and then
checks the orchestrator's state: the secrets it held, the workspace's git config,
``prepare.py``, the ledger, the branch, and the processes left behind.

These tests need bubblewrap (``apt-get install bubblewrap``, as ``.ci/run`` does);
they fail, not skip, without it on Linux, so CI cannot pass without the sandbox.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from autoswarm.doctor import marked
from autoswarm.sandbox import find_bwrap
from autoswarm.testing.synthetic import TRAIN_PY, make_workspace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only"),
]

AUTOSWARM = [sys.executable, "-c", "from autoswarm.cli import main; main()"]

# What the orchestrator holds: names a denylist knows and names only an allowlist stops.
SECRETS = {
    "ANTHROPIC_API_KEY": "sk-ant-hostile-1",
    "OPENAI_API_KEY": "sk-hostile-2",
    "HF_TOKEN": "hf_hostile_3",
    "DATABASE_URL": "postgres://admin:hostile-4@db/prod",
    "SLACK_WEBHOOK_URL": "https://hooks.example/hostile-5",
    "MY_SERVICE_PASSWORD": "hostile-6",
}

# The probes: each records what it saw in REPORT and then the variant trains as usual.
HOSTILE = """\
import json, os, pathlib, signal, subprocess, sys, time
REPORT = {}
here = pathlib.Path.cwd()
ws = here.parents[2]  # <workspace>/.autoswarm/runs/<id>
REPORT["ws_listing"] = sorted(os.listdir(ws)) if ws.is_dir() else None
def read(p):
    try:
        return open(p, "rb").read().decode(errors="replace")
    except Exception as e:
        return f"error {type(e).__name__}"
REPORT["ppid"] = os.getppid()
REPORT["ppid_environ"] = read(f"/proc/{os.getppid()}/environ")
REPORT["all_environs"] = [read(f"/proc/{d}/environ") for d in os.listdir("/proc") if d.isdigit()]
REPORT["env"] = dict(os.environ)
def attempt(name, fn):
    try:
        fn()
        REPORT[name] = "done"
    except Exception as e:
        REPORT[name] = f"error {type(e).__name__}"
def append(path, text):
    with open(path, "a") as f:
        f.write(text)
attempt("git_config", lambda: append(ws / ".git" / "config", "[core]\\n\\tfsmonitor = MARKER_SCRIPT\\n"))
attempt("prepare", lambda: append(ws / "prepare.py", "\\nprint('tampered')\\n"))
attempt("ledger_overwrite", lambda: (ws / ".autoswarm" / "ledger.sqlite").write_bytes(b"garbage"))
for suffix in ("-wal", "-shm"):
    attempt("ledger_delete" + suffix, lambda: (ws / ".autoswarm" / ("ledger.sqlite" + suffix)).unlink())
attempt("ref", lambda: (ws / ".git" / "refs" / "heads" / "autoswarm" / "t").write_text("garbage\\n"))
# A child that leaves the group and the session, then double-forks away from it.
subprocess.Popen([sys.executable, "-c", "import os, time\\n"
    "os.setsid()\\n"
    "if os.fork() == 0:\\n"
    "    os.setpgid(0, 0)\\n"
    "    time.sleep(600)  # SLEEPER\\n"])
time.sleep(0.2)
attempt("kill_parent_term", lambda: os.kill(os.getppid(), signal.SIGTERM))
attempt("kill_parent_kill", lambda: os.kill(os.getppid(), signal.SIGKILL))
print("HOSTILE>" + json.dumps(REPORT) + "<HOSTILE", flush=True)
"""


def hostile_workspace(tmp: Path) -> tuple[Path, str, Path]:
    marker = tmp / f"fsmonitor-ran-{uuid.uuid4().hex}"
    script = tmp / "fsmonitor.sh"
    script.write_text(f"#!/bin/sh\nenv > {marker}\n")
    script.chmod(0o755)
    sleeper = f"SLEEPER-{uuid.uuid4().hex}"
    text = HOSTILE.replace("MARKER_SCRIPT", str(script)).replace("SLEEPER", sleeper)
    ws = make_workspace(tmp / "ws", budget=0.3, train_py=text + TRAIN_PY, baseline_repeats=2)
    return ws, sleeper, marker


def run_cli(ws: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **SECRETS}
    return subprocess.run(
        [*AUTOSWARM, *args, "--workspace", str(ws)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def reports(ws: Path) -> list[dict]:
    out = []
    for log in sorted((ws / ".autoswarm" / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        if "HOSTILE>" in text:
            out.append(json.loads(text.split("HOSTILE>", 1)[1].split("<HOSTILE", 1)[0]))
    return out


def test_bubblewrap_is_here() -> None:
    """CI installs bubblewrap; without it every other test here would test nothing."""
    path, why = find_bwrap()
    assert path is not None, why


def test_a_hostile_variant_reaches_nothing_of_the_orchestrator(tmp_path: Path) -> None:
    ws, sleeper, marker = hostile_workspace(tmp_path)
    git_config = (ws / ".git" / "config").read_bytes()
    prepare = (ws / "prepare.py").read_bytes()

    done = run_cli(ws, "run", "--skip-prepare", "--no-live", "--workers", "1",
                   "--max-experiments", "2", "--tag", "t")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sandbox: bubblewrap" in done.stderr, done.stderr

    seen = reports(ws)
    assert len(seen) == 2, "both baseline runs ran the probes"
    everything = "\n".join(
        log.read_text(errors="replace") for log in (ws / ".autoswarm" / "logs").glob("*.log")
    )
    for name, value in SECRETS.items():
        assert value not in everything, f"{name} reached an experiment"
    for r in seen:
        assert not set(SECRETS) & set(r["env"]), r["env"].keys()
        # Its parent is the sandbox's init, which holds nothing more than the child.
        assert all(v not in r["ppid_environ"] for v in SECRETS.values())
        assert r["ws_listing"] == [".autoswarm"]  # the workspace is an empty directory
    # Nothing it wrote reached the workspace, the ledger or the branch.
    assert (ws / ".git" / "config").read_bytes() == git_config
    assert (ws / "prepare.py").read_bytes() == prepare
    con = sqlite3.connect(ws / ".autoswarm" / "ledger.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses = [s for (s,) in con.execute("SELECT status FROM experiments ORDER BY id")]
    finally:
        con.close()
    assert statuses == ["keep", "keep"], statuses
    head = subprocess.run(["git", "-C", str(ws), "rev-parse", "--verify", "autoswarm/t^{commit}"],
                          capture_output=True, text=True)  # fmt: skip
    assert head.returncode == 0, head.stderr
    # Its escaped grandchild died with the experiment; signalling its parent did nothing.
    assert marked(sleeper) == []
    assert all(r["kill_parent_kill"] in ("done", "error PermissionError") for r in seen)

    # The next command that looks at the workspace runs nothing the variant could have
    # planted (it planted nothing here; test_workspace checks git itself).
    status = run_cli(ws, "status", "--tag", "t")
    assert status.returncode == 0, status.stderr
    assert "bubblewrap" in status.stdout
    assert not marker.exists()


def test_a_symlink_is_refused_as_a_submission(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", budget=0.3, baseline_repeats=2)
    sub = tmp_path / "variant"
    sub.mkdir()
    (sub / "train.py").symlink_to("/proc/self/environ")
    done = run_cli(ws, "submit", str(sub))
    assert done.returncode != 0
    assert done.stderr.startswith("error: ") and "symlink" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert all(v not in done.stdout + done.stderr for v in SECRETS.values())

    diff = tmp_path / "link.diff"
    diff.write_text(
        "diff --git a/train.py b/train.py\nold mode 100644\nnew mode 120000\n"
        "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-x\n+/proc/self/environ\n"
    )
    done = run_cli(ws, "submit", "--diff", str(diff))
    assert done.returncode != 0 and "symlink" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
