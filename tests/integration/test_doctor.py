"""``autoswarm doctor``: the hostile probes run in this machine's sandbox, and say what held."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoswarm.testing.synthetic import make_workspace

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

AUTOSWARM = [sys.executable, "-c", "from autoswarm.cli import main; main()"]


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUTOSWARM, "doctor", *args], capture_output=True, text=True, timeout=120
    )


def test_every_probe_holds_in_the_default_sandbox() -> None:
    done = doctor()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sandbox: bubblewrap")
    verdicts = [ln for ln in lines if ln.startswith(("held", "NOT HELD"))]
    assert len(verdicts) == 10 and all(v.startswith("held") for v in verdicts), done.stdout


def test_without_the_sandbox_it_says_what_does_not_hold(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    with (ws / "autoswarm.toml").open("a") as f:
        f.write('\n[sandbox]\nmode = "off"\n')
    done = doctor("--workspace", str(ws))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("sandbox: off")
    # The allowlist still holds; the filesystem, the parent and the children do not.
    assert "held      environment has no planted secret" in out
    for name in (
        "the workspace is not visible",
        ".git/config cannot be changed",
        "the ledger cannot be deleted",
        "an escaped child dies with the experiment",
        "it cannot signal the orchestrator",
    ):
        assert f"NOT HELD  {name}" in out, out
