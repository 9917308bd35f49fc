"""Re-measuring a kept variant ([run] best_runs) against the winner's curse."""

from __future__ import annotations

import pytest

from autoswarm.config import load_config, with_overrides
from autoswarm.errors import ConfigError
from autoswarm.policy import best_of
from autoswarm.testing.proposers import ScriptedProposer, replace_in
from autoswarm.types import Experiment, Kind, Purpose, Status
from tests.conftest import Harness, synthetic_outcome

LR = ("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04"))
WIDTH = ("WIDTH 64 -> 128", replace_in("train.py", "WIDTH = 64", "WIDTH = 128"))


def _fresh(e: Experiment) -> list[float]:
    return list(e.evidence.as_meta()["fresh"])


def test_a_keep_rests_on_its_fresh_runs_and_the_next_keep_is_judged_against_them(
    harness: Harness,
) -> None:
    sched, _, ledger = harness.scheduler(ScriptedProposer([LR, WIDTH]), slots=2, best_runs=2)
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    lr = next(e for e in rows if e.description == LR[0])
    confirms = [e for e in rows if e.kind is Kind.CONFIRM and e.rerun_of == lr.id]
    assert lr.status is Status.KEEP and lr.evidence.as_meta()["runs"] == 3
    # Its confirmations give the bar its best_runs (2) fresh runs: nothing is re-measured.
    assert [(e.seed, e.status, e.commit) for e in confirms] == [
        (lr.seed + 1, Status.KEEP, lr.commit),
        (lr.seed + 2, Status.KEEP, lr.commit),
    ]
    assert not [e for e in confirms if e.is_remeasure]
    fresh = [e.value("val_bpb") for e in confirms]
    assert lr.evidence.as_meta()["values"] == [lr.value("val_bpb"), *fresh]
    assert _fresh(lr) == fresh
    assert lr.evidence.as_meta()["replicated_mean"] == pytest.approx(sum(fresh) / 2)
    # WIDTH (kept on top of LR) was judged against the mean of LR's fresh runs only.
    width = next(e for e in rows if e.description == WIDTH[0])
    assert width.parent == lr.commit and width.status is Status.KEEP
    assert width.evidence.as_meta()["best_runs"] == 2
    assert width.evidence.as_meta()["bar"] == fresh
    assert width.evidence.as_meta()["bar_id"] == lr.id
    assert width.evidence.as_meta()["best_before"] == pytest.approx(sum(fresh) / 2)
    # The run ends (proposer exhausted, two slots): the best is validated 3 more times,
    # and the bar is the mean of its 2 confirmations and those 3.
    final = [e for e in rows if (e.purpose is Purpose.FINAL)]
    assert len(final) == 3 and all(e.rerun_of == width.id for e in final)
    assert out.best is not None and out.best.experiment_id == width.id and out.best.runs == 5
    assert out.best.value == pytest.approx(sum(_fresh(width)) / 5)
    # A resumed run reads the same best from the ledger.
    assert sched.baseline is not None
    assert best_of(rows, "val_bpb", sched.baseline) == out.best
    ledger.close()


def test_with_confirm_runs_0_a_keep_on_one_run_is_re_measured(harness: Harness) -> None:
    sched, _, ledger = harness.scheduler(
        ScriptedProposer([LR, WIDTH]), slots=2, confirm_runs=0, final_runs=0, best_runs=1
    )
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    lr = next(e for e in rows if e.description == LR[0])
    (again,) = [e for e in rows if e.is_remeasure and e.rerun_of == lr.id]
    assert lr.status is Status.KEEP and lr.evidence.as_meta()["runs"] == 2
    assert again.kind is Kind.CONFIRM and again.status is Status.KEEP
    assert again.description.startswith(f"re-measure kept #{lr.id} (seed {lr.seed + 1})")
    assert again.commit == lr.commit and again.seed == lr.seed + 1
    values = lr.evidence.as_meta()["values"]
    assert values == [lr.value("val_bpb"), again.value("val_bpb")]
    assert lr.evidence.as_meta()["mean"] == pytest.approx(sum(values) / 2)
    assert _fresh(lr) == [again.value("val_bpb")]
    # WIDTH (kept on top of LR) was judged against LR's fresh run, not its selecting one.
    width = next(e for e in rows if e.description == WIDTH[0])
    assert width.parent == lr.commit and width.status is Status.KEEP
    assert width.evidence.as_meta()["best_runs"] == 1
    assert width.evidence.as_meta()["best_before"] == pytest.approx(again.value("val_bpb"))
    # It was re-measured too: the best is its fresh run.
    (again_w,) = [e for e in rows if e.is_remeasure and e.rerun_of == width.id]
    assert out.best is not None and out.best.experiment_id == width.id and out.best.runs == 1
    assert out.best.value == pytest.approx(again_w.value("val_bpb"))
    assert sched.baseline is not None
    assert best_of(rows, "val_bpb", sched.baseline) == out.best
    ledger.close()


def test_by_default_a_keep_rests_on_as_many_fresh_runs_as_the_baseline(harness: Harness) -> None:
    # One slot: no end-of-run validation; the keep's 2 confirmations and 1 re-measurement
    # give its bar baseline_repeats (3 in this workspace) fresh runs.
    sched, _, ledger = harness.scheduler(ScriptedProposer([LR]), slots=1)
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    assert not [e for e in rows if (e.purpose is Purpose.FINAL)]
    confirms = [e for e in rows if e.kind is Kind.CONFIRM]
    assert [(e.seed, bool(e.is_remeasure)) for e in confirms] == [
        (43, False),
        (44, False),
        (45, True),
    ]
    assert out.best is not None and out.best.runs == 3
    assert out.best.values == tuple(e.value("val_bpb") for e in confirms)
    ledger.close()


def test_best_runs_sets_how_many_runs_a_kept_variant_gets(harness: Harness) -> None:
    sched, _, ledger = harness.scheduler(ScriptedProposer([LR]), slots=1, best_runs=3)
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    confirms = [e for e in rows if e.kind is Kind.CONFIRM]
    # 2 confirmations (seeds 43, 44) before the verdict, then 1 re-measurement (45).
    assert [(e.seed, bool(e.is_remeasure)) for e in confirms] == [
        (43, False),
        (44, False),
        (45, True),
    ]
    assert out.best is not None and out.best.runs == 3
    assert out.best.values == tuple(e.value("val_bpb") for e in confirms)
    ledger.close()


def test_a_crashed_re_run_leaves_the_keep_and_its_evidence_alone(harness: Harness) -> None:
    plain = synthetic_outcome()

    def outcome(job):  # type: ignore[no-untyped-def]
        o = plain(job)
        if (
            "LR = 0.04" in (job.workdir / "train.py").read_text()
            and job.env["AUTOSWARM_SEED"] == "45"
        ):
            return type(o)(duration=1.0, exit_code=1, log="CUDA out of memory\n")
        return o

    sched, _, ledger = harness.scheduler(
        ScriptedProposer([LR]), slots=2, outcome=outcome, best_runs=3, final_runs=0
    )
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    lr = next(e for e in rows if e.description == LR[0])
    (again,) = [e for e in rows if e.is_remeasure]
    assert again.seed == 45 and again.status is Status.CRASH
    assert lr.status is Status.KEEP and lr.evidence.as_meta()["runs"] == 3
    assert len(_fresh(lr)) == 2
    assert out.best is not None and out.best.commit == lr.commit and out.best.runs == 2
    assert "LR = 0.04" in sched.ws.read_file("refs/heads/autoswarm/t", "train.py")
    ledger.close()


def _scripted(values: dict[int, float]):  # type: ignore[no-untyped-def]
    """LR 0.04 scores ``values[seed]``; the baseline is 1.00 ± 0.01."""
    from autoswarm.backends.fake import Outcome

    base = {42: 1.00, 43: 1.01, 44: 0.99}

    def outcome(job):  # type: ignore[no-untyped-def]
        seed = int(job.env["AUTOSWARM_SEED"])
        if "LR = 0.04" in (job.workdir / "train.py").read_text():
            return Outcome(duration=60.0, metrics={"val_bpb": values[seed]})
        return Outcome(duration=60.0, metrics={"val_bpb": base[seed]})

    return outcome


def test_a_re_measurement_no_better_than_the_old_bar_revokes_the_keep(harness: Harness) -> None:
    # Kept on 0.90, 0.90, 0.89 against the baseline's 1.00; re-measured at 1.21, its fresh
    # runs average 1.0: no better than the bar it replaced. The keep is revoked.
    outcome = _scripted({42: 0.90, 43: 0.90, 44: 0.89, 45: 1.21})
    sched, _, ledger = harness.scheduler(
        ScriptedProposer([LR]), slots=1, outcome=outcome, best_runs=3
    )
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    lr = next(e for e in rows if e.description == LR[0])
    (again,) = [e for e in rows if e.is_remeasure]
    assert again.seed == 45 and again.value("val_bpb") == 1.21
    assert lr.status is Status.REVOKED and lr.status.tsv == "discard"
    assert lr.reason.startswith("revoked: re-measured at 1.000000 on 3 fresh run(s)")
    assert lr.evidence.as_meta()["fresh"] == [0.90, 0.89, 1.21]
    assert lr.revoked_at is not None and lr.kept_at is not None
    # Its re-runs (2 confirmations, the re-measurement) are withdrawn with it.
    runs = [e for e in rows if e.kind is Kind.CONFIRM]
    assert [e.seed for e in runs] == [43, 44, 45]
    assert all(
        e.status is Status.REVOKED and e.reason == f"a run of #{lr.id}, whose keep was revoked"
        for e in runs
    )
    # The branch moved back and the best is the baseline again.
    assert "LR = 0.01" in sched.ws.read_file("refs/heads/autoswarm/t", "train.py")
    assert out.best is not None and out.best.experiment_id == rows[0].id
    assert out.best.commit == out.run.base_commit
    assert sched.baseline is not None
    assert best_of(rows, "val_bpb", sched.baseline) == out.best
    tsv = (harness.root / "results.tsv").read_text().splitlines()
    # results.tsv has no "revoked": the variant and its 3 re-runs read "discard".
    mine = [r.split("\t") for r in tsv[1:] if r.split("\t")[0] == lr.commit[:7]]
    assert [r[3] for r in mine] == ["discard"] * 4
    assert "(revoked: re-measured at 1.000000" in mine[0][4]
    ledger.close()


def test_a_keep_made_on_top_of_a_revoked_one_is_judged_against_the_best_before_both(
    harness: Harness,
) -> None:
    # LR is kept on 0.90, 0.90, 0.89; its re-measurement (seed 45) takes long and comes
    # back at 1.21 only after WIDTH, built on LR and far better (0.80), was kept against
    # LR's bar. LR is revoked; WIDTH is judged again against the best standing before
    # both (the baseline at 1.00), not against itself, and stands.
    from autoswarm.backends.fake import Outcome

    def outcome(job):  # type: ignore[no-untyped-def]
        seed = int(job.env["AUTOSWARM_SEED"])
        text = (job.workdir / "train.py").read_text()
        if "WIDTH = 128" in text:
            return Outcome(duration=60.0, metrics={"val_bpb": 0.80 + 0.002 * (seed - 43)})
        if "LR = 0.04" in text:
            if seed == 45:
                return Outcome(duration=1000.0, metrics={"val_bpb": 1.21})
            return Outcome(duration=60.0, metrics={"val_bpb": {42: 0.90, 43: 0.90, 44: 0.89}[seed]})
        return Outcome(duration=60.0, metrics={"val_bpb": {42: 1.00, 43: 1.01, 44: 0.99}[seed]})

    sched, _, ledger = harness.scheduler(
        ScriptedProposer([LR, WIDTH]),
        slots=2,
        outcome=outcome,
        best_runs=3,
        final_runs=0,
        timeout=2000.0,
    )
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    lr = next(e for e in rows if e.description == LR[0])
    width = next(e for e in rows if e.description == WIDTH[0])
    assert width.parent == lr.commit
    assert width.evidence.as_meta()["bar_id"] == lr.id  # kept against LR's bar
    assert float(width.kept_at) < float(lr.revoked_at)
    assert lr.status is Status.REVOKED, lr.reason
    assert width.status is Status.KEEP, width.reason
    assert out.best is not None and out.best.experiment_id == width.id
    assert sched.ws.tree_id("refs/heads/autoswarm/t") == sched.ws.tree_id(width.commit)
    ledger.close()


def test_a_negative_best_runs_is_a_config_error(harness: Harness) -> None:
    with pytest.raises(ConfigError, match="best_runs must be >= 0"):
        with_overrides(load_config(harness.root), best_runs=-1)
