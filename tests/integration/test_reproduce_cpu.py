"""`autoswarm reproduce` on the real `cpu` template: real training processes (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoswarm.init import init_workspace
from autoswarm.ledger import Ledger
from autoswarm.types import Kind, Purpose, Status

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def test_reproduce_the_baseline_of_a_real_cpu_run(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws", template="cpu")
    env = {**os.environ, "AUTOSWARM_CACHE": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "autoswarm"]
    run = subprocess.run(
        [*cli, "run", "--workspace", str(ws), "--workers", "2", "--budget", "2",
         "--max-experiments", "3", "--tag", "r", "--no-live"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = subprocess.run(
        [*cli, "reproduce", "1", "--runs", "2", "--workspace", str(ws), "--skip-prepare"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = " ".join((out.stdout + out.stderr).split())
    assert "recorded val_bpb" in text and "re-run 2× with fresh seeds" in text, text
    # The verdict and the exit code agree (which one it is depends on the seeds' luck).
    assert (out.returncode, "the claim holds" in text) in ((0, True), (1, False)), text
    assert out.returncode == 0 or "the claim does not hold" in text
    with Ledger(ws / ".autoswarm" / "ledger.sqlite") as led:
        rows = led.experiments(led.get_run("r").id)  # type: ignore[union-attr]
    reruns = [e for e in rows if (e.purpose is Purpose.REPRODUCE)]
    # Fresh seeds: after every seed the baseline used (42-44, more if a repeat was slowed).
    last = max(e.seed for e in rows if e.kind is Kind.BASELINE)
    assert [e.seed for e in reruns] == [last + 1, last + 2]
    assert all(e.kind is Kind.CONFIRM and e.status is Status.KEEP for e in reruns)
    assert all(e.value("val_bpb") is not None for e in reruns)
