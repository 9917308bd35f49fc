"""Shared fixtures: synthetic workspaces, a fake clock and backend, a scheduler factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from autoswarm.backends.fake import FakeBackend, Outcome
from autoswarm.clock import FakeClock
from autoswarm.config import Config, load_config, with_overrides
from autoswarm.ledger import Ledger
from autoswarm.proposers.base import Proposer
from autoswarm.scheduler import Scheduler
from autoswarm.testing.synthetic import make_workspace, value_of_files
from autoswarm.types import Job
from autoswarm.workspace import Workspace


@pytest.fixture
def synth_ws(tmp_path: Path) -> Path:
    """A synthetic workspace; its scenarios are scripted for three baseline runs (the
    default is five: tests/unit/test_config.py checks the defaults)."""
    return make_workspace(tmp_path / "ws", baseline_repeats=3)


def synthetic_outcome(duration: float = 60.0, noise: float = 0.002) -> Callable[[Job], Outcome]:
    """Fake outcomes computed from the job's train.py like the real synthetic script."""

    def outcome(job: Job) -> Outcome:
        files = {"train.py": (job.workdir / "train.py").read_text()}
        if "while True" in files["train.py"]:
            return Outcome(duration=10 * duration)
        v = value_of_files(files, int(job.env["AUTOSWARM_SEED"]), noise)
        if v is None:
            return Outcome(duration=1.0, exit_code=1, log="loss is nan: diverged\n")
        return Outcome(duration=duration, metrics={"val_bpb": v, "peak_vram_mb": 1024.0})

    return outcome


class Harness:
    """Builds a Scheduler over a synthetic workspace with a fake backend and clock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock()

    def config(self, **run: object) -> Config:
        return with_overrides(load_config(self.root), **run)

    def scheduler(
        self,
        proposer: Proposer,
        *,
        slots: int = 2,
        outcome: Callable[[Job], Outcome] | None = None,
        **run: object,
    ) -> tuple[Scheduler, FakeBackend, Ledger]:
        cfg = self.config(**run)
        ws = Workspace(self.root, cfg)
        ledger = Ledger(ws.ledger_path)
        backend = FakeBackend(slots, self.clock, outcome or synthetic_outcome())
        sched = Scheduler(
            workspace=ws,
            ledger=ledger,
            backend=backend,
            proposer=proposer,
            config=cfg,
            clock=self.clock,
        )
        return sched, backend, ledger


@pytest.fixture
def harness(synth_ws: Path) -> Harness:
    return Harness(synth_ws)
