"""Every Backend and every Proposer passes its contract suite, fakes included."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoswarm.backends.base import Backend, Reattachable
from autoswarm.backends.fake import FakeBackend, Outcome, ReattachableFakeBackend
from autoswarm.backends.local import LocalBackend
from autoswarm.clock import FakeClock
from autoswarm.config import Config, RunConfig
from autoswarm.proposers.base import Composite, IdlePolling, Proposer
from autoswarm.proposers.external import ExternalProposer
from autoswarm.proposers.knobs import KnobProposer, RandomProposer
from autoswarm.proposers.registry import make_proposer
from autoswarm.testing.contract import (
    BackendContract,
    ProposerContract,
    ReattachableContract,
    fake_contract_outcome,
)
from autoswarm.testing.proposers import ScriptedProposer, replace_in
from autoswarm.testing.synthetic import TRAIN_PY
from autoswarm.types import Job


class TestFakeBackend(BackendContract):
    def make_backend(self, slots: int) -> Backend:
        backend = FakeBackend(slots, FakeClock(), fake_contract_outcome)
        assert isinstance(backend, Backend)
        return backend


class TestLocalBackend(BackendContract):
    timeout_s = 1.5  # the hang test waits this long: short keeps the class under 2 s

    def make_backend(self, slots: int) -> Backend:
        backend = LocalBackend(slots, gpus=[], kill_grace_s=0.5)
        assert isinstance(backend, Backend)
        return backend


class TestReattachableFakeBackend(ReattachableContract):
    """The fake the scheduler's resume tests use: its "remote" jobs are the survivors dict."""

    @pytest.fixture(autouse=True)
    def _world(self) -> None:
        self.clock = FakeClock()
        self.survivors: dict[int, tuple[float, Outcome]] = {}

    def make_backend(self, slots: int) -> Backend:
        return ReattachableFakeBackend(slots, self.clock, fake_contract_outcome, self.survivors)

    def abandon(self, backend: Backend) -> None:
        assert isinstance(backend, ReattachableFakeBackend)
        self.survivors.update(backend.still_running())

    def until_running(self, backend: Backend, job: Job, limit: float = 30.0) -> None:
        pass  # a fake job runs from its submission


def test_the_local_backend_is_not_reattachable() -> None:
    # Its jobs are children of the orchestrator: nothing outlives it to re-attach to.
    backend = LocalBackend(1, gpus=[])
    try:
        assert not isinstance(backend, Reattachable)
    finally:
        backend.close()


class TestKnobProposer(ProposerContract):
    def make_proposer(self) -> Proposer:
        proposer = KnobProposer(seed=0)
        assert isinstance(proposer, Proposer)
        return proposer

    def files(self) -> dict[str, str]:
        return {"train.py": TRAIN_PY}


class TestScriptedProposer(ProposerContract):
    def make_proposer(self) -> Proposer:
        steps = [
            (f"LR 0.01 -> {v}", replace_in("train.py", "LR = 0.01", f"LR = {v}"))
            for v in ("0.02", "0.03", "0.04", "0.05", "0.06", "0.07", "0.08", "0.09")
        ]
        proposer = ScriptedProposer(steps)
        assert isinstance(proposer, Proposer)
        return proposer

    def files(self) -> dict[str, str]:
        return {"train.py": TRAIN_PY}


class TestRandomProposer(ProposerContract):
    """The ``random`` strategy (the control), built as a run builds it: through the registry."""

    def make_proposer(self) -> Proposer:
        proposer = make_proposer(Config(run=RunConfig(strategy="random")))
        assert isinstance(proposer, RandomProposer) and isinstance(proposer, Proposer)
        return proposer

    def files(self) -> dict[str, str]:
        return {"train.py": TRAIN_PY}


def test_optional_capabilities_are_declared_protocols(tmp_path: Path) -> None:
    """The scheduler and the contracts find optional members by isinstance, not getattr."""
    auto = make_proposer(Config(run=RunConfig(strategy="auto")))
    assert isinstance(auto, Composite) and {q.name for q in auto.parts} >= {"factorial"}
    external = ExternalProposer(tmp_path / "ledger.sqlite")
    assert isinstance(external, IdlePolling) and external.idle_poll_s <= 1.0
    knobs = KnobProposer(seed=0)
    assert not isinstance(knobs, Composite) and not isinstance(knobs, IdlePolling)
