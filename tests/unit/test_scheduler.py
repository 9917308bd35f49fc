"""The research loop against a fake backend on a fake clock (milliseconds per run)."""

from __future__ import annotations

import subprocess

import pytest

from autoswarm.errors import BaselineError, RunLockedError, RunStateError
from autoswarm.outputs import status_record
from autoswarm.proposers.knobs import KnobProposer
from autoswarm.scheduler import RunLock
from autoswarm.testing.proposers import ScriptedProposer, replace_in, write_file
from autoswarm.types import Kind, Status
from tests.conftest import Harness, synthetic_outcome


def statuses(ledger, run_id):
    return [(e.description, e.status) for e in ledger.experiments(run_id)]


def test_baseline_runs_first_with_distinct_seeds_and_measures_noise(harness: Harness) -> None:
    sched, backend, ledger = harness.scheduler(ScriptedProposer([]), slots=2)
    out = sched.run(tag="t")
    first3 = backend.submitted[:3]
    assert [j.env["AUTOSWARM_SEED"] for j in first3] == ["42", "43", "44"]
    base = ledger.experiments(out.run.id)
    assert [e.kind for e in base] == [Kind.BASELINE] * 3
    assert all(e.status is Status.KEEP for e in base)
    assert sched.baseline is not None and sched.baseline.complete
    assert sched.baseline.sigma > 0
    assert out.reason == "proposer exhausted"


def test_keep_advances_branch_and_discard_does_not(harness: Harness) -> None:
    proposer = ScriptedProposer(
        [
            ("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04")),
            ("WIDTH 64 -> 32", replace_in("train.py", "WIDTH = 64", "WIDTH = 32")),
        ]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=1)
    out = sched.run(tag="t")
    rows = {e.description: e for e in ledger.experiments(out.run.id)}
    assert rows["LR 0.01 -> 0.04"].status is Status.KEEP
    assert rows["WIDTH 64 -> 32"].status is Status.DISCARD
    # The branch head holds the kept file; the discard was proposed from the new best.
    head = sched.ws.read_file("refs/heads/autoswarm/t", "train.py")
    assert "LR = 0.04" in head and "WIDTH = 64" in head
    assert rows["WIDTH 64 -> 32"].parent == rows["LR 0.01 -> 0.04"].commit
    assert out.best is not None and out.best.experiment_id == rows["LR 0.01 -> 0.04"].id
    # Every variant has its own commit, pinned, with the diff recorded.
    assert (
        "-LR = 0.01" in rows["LR 0.01 -> 0.04"].diff
        and "+LR = 0.04" in rows["LR 0.01 -> 0.04"].diff
    )
    assert sched.ws.ref_exists(f"refs/autoswarm/t/{rows['WIDTH 64 -> 32'].id}")
    # The user's working tree is untouched.
    assert "LR = 0.01" in (harness.root / "train.py").read_text()


def test_gain_within_noise_margin_is_discarded(harness: Harness) -> None:
    # USE_BIAS has no effect: any difference is noise, so it must not be kept.
    proposer = ScriptedProposer(
        [("USE_BIAS flip", replace_in("train.py", "USE_BIAS = False", "USE_BIAS = True"))]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=1, keep_sigmas=2.0)
    out = sched.run(tag="t")
    e = ledger.experiments(out.run.id)[-1]
    assert e.status is Status.DISCARD
    assert e.meta["evidence"]["sigma"] == pytest.approx(sched.baseline.sigma)


def test_failures_are_data_with_reasons(harness: Harness) -> None:
    proposer = ScriptedProposer(
        [
            ("syntax error", replace_in("train.py", "LR = 0.01", "LR = = 0.01")),
            ("diverges", replace_in("train.py", "LR = 0.01", "LR = 0.9")),
            ("hangs", replace_in("train.py", "DEPTH = 4", "DEPTH = 4\nwhile True: pass")),
            ("edits prepare.py", write_file("prepare.py", "# hacked metric\n")),
            ("same as baseline", lambda files: {"train.py": files["train.py"] + ""}),
            ("WIDTH 64 -> 32", replace_in("train.py", "WIDTH = 64", "WIDTH = 32")),
            ("WIDTH 64 -> 32 again", replace_in("train.py", "WIDTH = 64", "WIDTH = 32")),
        ]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=2, timeout=130.0)
    out = sched.run(tag="t")
    rows = {e.description: e for e in ledger.experiments(out.run.id)}
    assert (
        rows["syntax error"].status is Status.CRASH
        and "syntax error" in rows["syntax error"].reason
    )
    assert rows["diverges"].status is Status.CRASH and "NaN" in rows["diverges"].reason
    assert rows["hangs"].status is Status.CRASH and rows["hangs"].reason.startswith("timeout")
    assert rows["edits prepare.py"].status is Status.REJECTED
    assert "locked file(s) prepare.py" in rows["edits prepare.py"].reason
    assert "hacked metric" in rows["edits prepare.py"].diff
    assert rows["same as baseline"].status is Status.REJECTED
    dup = rows["WIDTH 64 -> 32 again"]
    assert (
        dup.status is Status.REJECTED and dup.reason == f"duplicate of #{rows['WIDTH 64 -> 32'].id}"
    )
    tsv = (harness.root / "results.tsv").read_text().splitlines()
    assert tsv[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    crash_rows = [r for r in tsv[1:] if r.split("\t")[3] == "crash"]
    assert all(r.split("\t")[1:3] == ["0.000000", "0.0"] for r in crash_rows)
    assert len(tsv) - 1 == len([e for e in rows.values() if e.status.is_finished()])


def test_slots_stay_busy_and_limits_count_the_whole_run(harness: Harness) -> None:
    sched, backend, ledger = harness.scheduler(KnobProposer(seed=1), slots=4, max_experiments=23)
    out = sched.run(tag="t")
    assert len(ledger.experiments(out.run.id)) == 23
    assert out.reason == "proposer exhausted" or len(backend.submitted) <= 23
    st = status_record(ledger, out.run, harness.clock.now())
    assert st["experiments"]["total"] == 23
    # 23 jobs of 60 s in 4 slots: only the tail of the last wave can idle.
    assert st["busy_fraction"] > 0.8
    assert st["best"]["val_bpb"] < st["baseline"]["val_bpb"]


def test_time_limit_stops_dispatch_before_overrunning(harness: Harness) -> None:
    sched, _, ledger = harness.scheduler(KnobProposer(seed=1), slots=2, time_limit=600.0)
    out = sched.run(tag="t")
    assert out.reason.startswith("time limit")
    st = status_record(ledger, out.run, harness.clock.now())
    assert st["elapsed_s"] <= 600.0 + 1e-6
    assert st["experiments"]["total"] >= 18  # 2 slots × 600 s / 60 s, less the last wave


def test_candidate_finishing_before_baseline_waits_for_its_verdict(harness: Harness) -> None:
    base_outcome = synthetic_outcome(duration=60.0)

    def outcome(job):
        o = base_outcome(job)
        if "LR = 0.04" in (job.workdir / "train.py").read_text():
            return type(o)(duration=5.0, metrics=o.metrics)
        return o

    proposer = ScriptedProposer(
        [("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04"))]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=4, outcome=outcome)
    out = sched.run(tag="t")
    cand = [e for e in ledger.experiments(out.run.id) if e.kind is Kind.CANDIDATE][-1]
    assert cand.status is Status.KEEP
    assert cand.meta["evidence"]["best_before"] == pytest.approx(sched.baseline.mean)
    base_end = max(e.finished_at for e in ledger.experiments(out.run.id) if e.kind is Kind.BASELINE)
    assert (
        cand.finished_at < base_end
    )  # it finished first, yet was judged against the full baseline


def test_baseline_crash_is_a_clear_error(harness: Harness) -> None:
    text = (harness.root / "train.py").read_text().replace('print("---")', 'print("no summary")')
    (harness.root / "train.py").write_text(text)
    subprocess.run(
        ["git", "commit", "-qam", "break"],
        cwd=harness.root,
        check=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@l",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@l",
            "PATH": "/usr/bin:/bin",
        },
    )

    def outcome(job):
        return synthetic_outcome()(job).__class__(duration=10.0, log="no summary\n")

    sched, _, _ = harness.scheduler(ScriptedProposer([]), slots=1, outcome=outcome)
    with pytest.raises(BaselineError, match=r"no metric.*summary block"):
        sched.run(tag="t")


def test_run_state_errors(harness: Harness) -> None:
    sched, _, _ = harness.scheduler(ScriptedProposer([]), slots=1)
    with pytest.raises(RunStateError, match=r"no run .* to resume"):
        sched.run(tag="nope", resume=True)
    sched.run(tag="t")
    sched2, _, _ = harness.scheduler(ScriptedProposer([]), slots=1)
    with pytest.raises(RunStateError, match="--resume --tag t"):
        sched2.run(tag="t")
    (harness.root / "train.py").write_text("LR = 1\n")
    sched3, _, _ = harness.scheduler(ScriptedProposer([]), slots=1)
    with pytest.raises(RunStateError, match="uncommitted changes"):
        sched3.run(tag="t2")


def test_second_orchestrator_is_refused(harness: Harness) -> None:
    sched, _, _ = harness.scheduler(ScriptedProposer([]), slots=1)
    lock = RunLock(sched.ws.state_dir)
    lock.acquire()
    try:
        with pytest.raises(RunLockedError, match="another `autoswarm run`"):
            sched.run(tag="t")
    finally:
        lock.release()


def test_resume_requeues_orphans_and_never_reruns_finished(harness: Harness) -> None:
    sched, _backend, ledger = harness.scheduler(KnobProposer(seed=3), slots=2, max_experiments=8)
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    # Pretend the orchestrator died while two experiments ran: put them back to RUNNING.
    victims = [e for e in exps if e.kind is Kind.CANDIDATE and e.status.is_finished() and e.commit][
        :2
    ]
    for v in victims:
        ledger.requeue(v.id, reason="test")
        ledger.mark_running(v.id, slot=0, started_at=harness.clock.now(), log_path="x")
        ledger.set_handle(v.id, '{"pid": 1}')
    finished_before = {e.id for e in ledger.experiments(out.run.id) if e.status.is_finished()}
    sched2, backend2, ledger2 = harness.scheduler(KnobProposer(seed=3), slots=2, max_experiments=8)
    out2 = sched2.run(tag="t", resume=True)
    assert out2.run.id == out.run.id
    assert [c[0] for c in backend2.cancelled[: len(victims)]] == [v.id for v in victims]
    rerun = {j.experiment_id for j in backend2.submitted}
    assert rerun == {v.id for v in victims}  # the limit was reached: only the orphans ran again
    assert not rerun & finished_before
    after = ledger2.experiments(out.run.id)
    assert len(after) == 8 and all(e.status.is_finished() for e in after)


def test_stop_marks_running_interrupted_and_resume_runs_them(harness: Harness) -> None:
    proposer = KnobProposer(seed=5)
    sched, backend, ledger = harness.scheduler(proposer, slots=2, max_experiments=10)
    calls = {"n": 0}
    original = backend.poll

    def poll(timeout):
        calls["n"] += 1
        if calls["n"] == 4:  # Ctrl-C while two experiments run
            sched.request_stop()
            return []
        return original(timeout)

    backend.poll = poll  # type: ignore[method-assign]
    out = sched.run(tag="t")
    assert out.reason == "interrupted"
    interrupted = ledger.experiments(out.run.id, statuses=[Status.INTERRUPTED])
    assert interrupted, "running experiments are marked interrupted"
    sched2, backend2, ledger2 = harness.scheduler(KnobProposer(seed=5), slots=2, max_experiments=10)
    sched2.run(tag="t", resume=True)
    ids = [j.experiment_id for j in backend2.submitted]
    assert {e.id for e in interrupted} <= set(ids)
    assert len(ledger2.experiments(out.run.id)) == 10


# ---------------------------------------------------------------------------
# Confirmation against noise


def scripted_values(table):
    """Outcome from (marker in train.py, seed) -> metric; the baseline is 1.000 ± 0.01."""
    from autoswarm.backends.fake import Outcome

    base = {42: 1.00, 43: 1.01, 44: 0.99}  # mean 1.0, σ = 0.01

    def outcome(job):
        text = (job.workdir / "train.py").read_text()
        seed = int(job.env["AUTOSWARM_SEED"])
        for marker, values in table.items():
            if marker in text:
                return Outcome(duration=60.0, metrics={"val_bpb": values[seed]})
        return Outcome(duration=60.0, metrics={"val_bpb": base[seed]})

    return outcome


def test_promising_gain_is_confirmed_with_other_seeds_then_kept(harness: Harness) -> None:
    # First run: gain 0.015 = 1.3 se (se = 0.01·sqrt(1+1/3)) -> confirm; mean of 3 gains 0.02 > 1.63σ.
    outcome = scripted_values({"LR = 0.02": {42: 0.985, 43: 0.985, 44: 0.97}})
    proposer = ScriptedProposer(
        [("LR 0.01 -> 0.02", replace_in("train.py", "LR = 0.01", "LR = 0.02"))]
    )
    sched, _backend, ledger = harness.scheduler(proposer, slots=1, outcome=outcome)
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    cand = next(e for e in exps if e.kind is Kind.CANDIDATE)
    confirms = [e for e in exps if e.kind is Kind.CONFIRM]
    assert [c.seed for c in confirms] == [43, 44]
    assert all(c.commit == cand.commit and c.meta["confirms"] == cand.id for c in confirms)
    assert cand.status is Status.KEEP and all(c.status is Status.KEEP for c in confirms)
    ev = cand.meta["evidence"]
    assert (
        ev["runs"] == 3
        and ev["mean"] == pytest.approx(0.98)
        and ev["values"] == [0.985, 0.985, 0.97]
    )
    assert ev["sigma"] == pytest.approx(0.01)
    assert out.best is not None and out.best.value == pytest.approx(0.98) and out.best.runs == 3


def test_lucky_single_run_does_not_replicate_and_is_discarded(harness: Harness) -> None:
    outcome = scripted_values({"USE_BIAS = True": {42: 0.984, 43: 1.012, 44: 1.0}})
    proposer = ScriptedProposer(
        [("USE_BIAS flip", replace_in("train.py", "USE_BIAS = False", "USE_BIAS = True"))]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=1, outcome=outcome)
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    cand = next(e for e in exps if e.kind is Kind.CANDIDATE)
    assert cand.status is Status.DISCARD
    assert cand.meta["evidence"]["runs"] == 2  # one confirmation killed the idea: z fell below 1
    assert out.best is not None and out.best.experiment_id == exps[0].id  # still the baseline


def test_large_gain_is_kept_without_confirmation(harness: Harness) -> None:
    outcome = scripted_values({"LR = 0.04": {42: 0.9}})
    proposer = ScriptedProposer(
        [("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04"))]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=1, outcome=outcome)
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    assert not [e for e in exps if e.kind is Kind.CONFIRM]
    assert exps[-1].status is Status.KEEP and exps[-1].meta["evidence"]["runs"] == 1


def test_confirmation_crash_discards_the_candidate(harness: Harness) -> None:
    from autoswarm.backends.fake import Outcome

    inner = scripted_values({"LR = 0.02": {42: 0.985}})

    def outcome(job):
        if (
            job.env["AUTOSWARM_SEED"] == "43"
            and "LR = 0.02" in (job.workdir / "train.py").read_text()
        ):
            return Outcome(duration=5.0, exit_code=1, log="RuntimeError: flaky\n")
        return inner(job)

    proposer = ScriptedProposer(
        [("LR 0.01 -> 0.02", replace_in("train.py", "LR = 0.01", "LR = 0.02"))]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=1, outcome=outcome)
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    cand = next(e for e in exps if e.kind is Kind.CANDIDATE)
    assert (
        cand.status is Status.DISCARD
        and "confirmation run" in cand.reason
        and "flaky" in cand.reason
    )
