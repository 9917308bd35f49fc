"""Contract suites: every Backend and every Proposer must pass these.

Subclass in a test module and provide the factory::

    class TestLocalBackend(BackendContract):
        def make_backend(self, slots: int) -> Backend: return LocalBackend(slots)

Backend jobs say what to do through ``CONTRACT_BEHAVIOUR`` (ok, fail, hang) in
their environment; a real backend runs :data:`CONTRACT_SCRIPT`, a fake one reads
the variable (see :func:`fake_contract_outcome`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from autoswarm.backends.base import Backend
from autoswarm.backends.fake import Outcome
from autoswarm.proposers.base import Context, Proposer
from autoswarm.types import Direction, Experiment, Job, Kind, RunResult, Status

CONTRACT_SCRIPT = """\
import os, sys, time
b = os.environ["CONTRACT_BEHAVIOUR"]
if b == "hang":
    time.sleep(3600)
if b == "fail":
    print("Traceback (most recent call last):\\nValueError: broken on purpose", flush=True)
    sys.exit(3)
print("---")
print("val_bpb: 1.234500")
print("peak_vram_mb: 10.0")
"""


def fake_contract_outcome(job: Job) -> Outcome:
    b = job.env["CONTRACT_BEHAVIOUR"]
    if b == "hang":
        return Outcome(duration=3600.0)
    if b == "fail":
        return Outcome(duration=0.1, exit_code=3, log="ValueError: broken on purpose\n")
    return Outcome(duration=0.1, metrics={"val_bpb": 1.2345, "peak_vram_mb": 10.0})


class BackendContract:
    """What the scheduler relies on from every backend."""

    timeout_s = 3.0

    def make_backend(self, slots: int) -> Backend:  # pragma: no cover - overridden
        raise NotImplementedError

    def _job(self, tmp_path: Path, exp_id: int, behaviour: str, slot: int = 0) -> Job:
        workdir = tmp_path / f"run{exp_id}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "job.py").write_text(CONTRACT_SCRIPT)
        return Job(
            experiment_id=exp_id,
            workdir=workdir,
            argv=(sys.executable, "job.py"),
            env={"CONTRACT_BEHAVIOUR": behaviour, "PATH": "/usr/bin:/bin"},
            timeout_s=self.timeout_s,
            slot=slot,
            log_path=tmp_path / "logs" / f"{exp_id}.log",
            budget_s=1.0,
        )

    def _wait(self, backend: Backend, count: int, limit: float = 30.0) -> dict[int, RunResult]:
        got: dict[int, RunResult] = {}
        deadline = time.monotonic() + limit
        while len(got) < count and time.monotonic() < deadline:
            for r in backend.poll(timeout=0.2):
                assert r.experiment_id not in got, "a job must be reported once"
                got[r.experiment_id] = r
        return got

    def test_capacity_is_positive(self) -> None:
        b = self.make_backend(2)
        try:
            assert b.capacity() == 2
        finally:
            b.close()

    def test_success_failure_and_metrics(self, tmp_path: Path) -> None:
        b = self.make_backend(2)
        try:
            handle = b.submit(self._job(tmp_path, 1, "ok", slot=0))
            assert isinstance(handle, str)
            b.submit(self._job(tmp_path, 2, "fail", slot=1))
            got = self._wait(b, 2)
            assert set(got) == {1, 2}
            ok, bad = got[1], got[2]
            assert ok.exit_code == 0 and not ok.timed_out and not ok.cancelled
            assert ok.metrics["val_bpb"] == pytest.approx(1.2345)
            assert ok.finished_at >= ok.started_at
            assert bad.exit_code == 3 and not bad.metrics
            assert "broken on purpose" in bad.log_path.read_text()
        finally:
            b.close()

    def test_timeout_is_reported_not_raised(self, tmp_path: Path) -> None:
        b = self.make_backend(1)
        try:
            b.submit(self._job(tmp_path, 7, "hang"))
            got = self._wait(b, 1)
            assert got[7].timed_out and not got[7].metrics
            assert got[7].duration_s == pytest.approx(self.timeout_s, abs=2.0)
        finally:
            b.close()

    def test_cancel_yields_a_cancelled_result(self, tmp_path: Path) -> None:
        b = self.make_backend(1)
        try:
            b.submit(self._job(tmp_path, 9, "hang"))
            b.cancel(9)
            got = self._wait(b, 1)
            assert got[9].cancelled
        finally:
            b.close()

    def test_close_is_idempotent(self) -> None:
        b = self.make_backend(1)
        b.close()
        b.close()


def contract_context(files: Mapping[str, str], commit: str = "0" * 40) -> Context:
    return Context(
        best_commit=commit,
        best_files=files,
        best_value=1.0,
        noise_sigma=0.002,
        metric="val_bpb",
        direction=Direction.MINIMIZE,
    )


class ProposerContract:
    """What the scheduler relies on from every proposer."""

    editable = ("train.py",)

    def make_proposer(self) -> Proposer:  # pragma: no cover - overridden
        raise NotImplementedError

    def files(self) -> dict[str, str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def test_propose_respects_n_and_shape(self) -> None:
        p = self.make_proposer()
        try:
            ctx = contract_context(self.files())
            for n in (1, 3):
                props = p.propose(ctx, n)
                assert len(props) <= n
                for prop in props:
                    assert prop.parent == ctx.best_commit
                    assert prop.description and "\n" not in prop.description
                    assert set(prop.files) <= set(self.editable)
                    assert any(prop.files[f] != ctx.best_files.get(f) for f in prop.files)
                    # A composite proposer (auto, hybrid) hands out its parts' proposals
                    # under their own names, so the ledger says which part made what.
                    parts = getattr(p, "parts", ())
                    assert prop.proposer in {p.name, *(q.name for q in parts)}
            assert p.propose(ctx, 0) == []
        finally:
            p.close()

    def test_batch_is_distinct(self) -> None:
        p = self.make_proposer()
        try:
            props = p.propose(contract_context(self.files()), 4)
            contents = [tuple(sorted(x.files.items())) for x in props]
            assert len(set(contents)) == len(contents)
        finally:
            p.close()

    def test_observe_accepts_every_final_state(self) -> None:
        p = self.make_proposer()
        try:
            ctx = contract_context(self.files())
            props = p.propose(ctx, 1)
            for i, status in enumerate(
                (Status.KEEP, Status.DISCARD, Status.CRASH, Status.REJECTED)
            ):
                p.observe(
                    Experiment(
                        id=i + 1,
                        run_id=1,
                        kind=Kind.CANDIDATE,
                        status=status,
                        parent=ctx.best_commit,
                        commit="1" * 40,
                        description=props[0].description if props else "x",
                        proposer=p.name,
                        metrics={"val_bpb": 0.9} if status is Status.KEEP else {},
                        meta=dict(props[0].meta) if props else {},
                    )
                )
            assert isinstance(p.exhausted, bool)
        finally:
            p.close()
            p.close()


__all__ = [
    "CONTRACT_SCRIPT",
    "BackendContract",
    "ProposerContract",
    "contract_context",
    "fake_contract_outcome",
]
