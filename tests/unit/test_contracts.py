"""Every Backend and every Proposer passes its contract suite, fakes included."""

from __future__ import annotations

from autoswarm.backends.base import Backend
from autoswarm.backends.fake import FakeBackend
from autoswarm.backends.local import LocalBackend
from autoswarm.clock import FakeClock
from autoswarm.proposers.base import Proposer
from autoswarm.proposers.knobs import KnobProposer
from autoswarm.testing.contract import BackendContract, ProposerContract, fake_contract_outcome
from autoswarm.testing.proposers import ScriptedProposer, replace_in
from autoswarm.testing.synthetic import TRAIN_PY


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
