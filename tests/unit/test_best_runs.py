"""Re-measuring a kept variant ([run] best_runs) against the winner's curse."""

from __future__ import annotations

import pytest

from autoswarm.config import load_config, with_overrides
from autoswarm.errors import ConfigError
from autoswarm.policy import best_of
from autoswarm.testing.proposers import ScriptedProposer, replace_in
from autoswarm.types import Kind, Status
from tests.conftest import Harness, synthetic_outcome

LR = ("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04"))
WIDTH = ("WIDTH 64 -> 128", replace_in("train.py", "WIDTH = 64", "WIDTH = 128"))


def test_with_several_slots_a_keep_on_one_run_is_re_measured(harness: Harness) -> None:
    sched, _, ledger = harness.scheduler(ScriptedProposer([LR, WIDTH]), slots=2)
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    lr = next(e for e in rows if e.description == LR[0])
    (again,) = [e for e in rows if e.meta.get("replicates") and e.meta["confirms"] == lr.id]
    assert lr.status is Status.KEEP and lr.meta["evidence"]["runs"] == 2
    assert again.kind is Kind.CONFIRM and again.status is Status.KEEP
    assert again.commit == lr.commit and again.seed == lr.seed + 1
    values = lr.meta["evidence"]["values"]
    assert values == [lr.value("val_bpb"), again.value("val_bpb")]
    assert lr.meta["evidence"]["mean"] == pytest.approx(sum(values) / 2)
    # WIDTH (kept on top of LR) was judged against LR's mean of both runs.
    width = next(e for e in rows if e.description == WIDTH[0])
    assert width.parent == lr.commit and width.status is Status.KEEP
    assert width.meta["evidence"]["best_runs"] == 2
    assert width.meta["evidence"]["best_before"] == pytest.approx(sum(values) / 2)
    # It was re-measured too: the best is the mean of its two runs.
    assert out.best is not None and out.best.experiment_id == width.id and out.best.runs == 2
    assert out.best.value == pytest.approx(width.meta["evidence"]["mean"])
    # A resumed run reads the same best from the ledger.
    assert sched.baseline is not None
    assert best_of(rows, "val_bpb", sched.baseline) == out.best
    ledger.close()


def test_on_one_slot_the_default_does_not_re_measure(harness: Harness) -> None:
    sched, _, ledger = harness.scheduler(ScriptedProposer([LR]), slots=1)
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    assert not [e for e in rows if e.meta.get("replicates")]
    assert out.best is not None and out.best.runs == 1
    ledger.close()


def test_best_runs_sets_how_many_runs_a_kept_variant_gets(harness: Harness) -> None:
    sched, _, ledger = harness.scheduler(ScriptedProposer([LR]), slots=1, best_runs=3)
    out = sched.run(tag="t")
    again = [e for e in ledger.experiments(out.run.id) if e.meta.get("replicates")]
    assert [e.seed for e in again] == [43, 44]
    assert out.best is not None and out.best.runs == 3
    ledger.close()


def test_a_crashed_re_run_leaves_the_keep_and_its_evidence_alone(harness: Harness) -> None:
    plain = synthetic_outcome()

    def outcome(job):  # type: ignore[no-untyped-def]
        o = plain(job)
        if (
            "LR = 0.04" in (job.workdir / "train.py").read_text()
            and job.env["AUTOSWARM_SEED"] != "42"
        ):
            return type(o)(duration=1.0, exit_code=1, log="CUDA out of memory\n")
        return o

    sched, _, ledger = harness.scheduler(ScriptedProposer([LR]), slots=2, outcome=outcome)
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    lr = next(e for e in rows if e.description == LR[0])
    (again,) = [e for e in rows if e.meta.get("replicates")]
    assert again.status is Status.CRASH
    assert lr.status is Status.KEEP and lr.meta["evidence"]["runs"] == 1
    assert out.best is not None and out.best.commit == lr.commit and out.best.runs == 1
    assert "LR = 0.04" in sched.ws.read_file("refs/heads/autoswarm/t", "train.py")
    ledger.close()


def test_a_negative_best_runs_is_a_config_error(harness: Harness) -> None:
    with pytest.raises(ConfigError, match="best_runs must be >= 0"):
        with_overrides(load_config(harness.root), best_runs=-1)
