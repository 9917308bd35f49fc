"""The research loop against a fake backend on a fake clock (milliseconds per run)."""

from __future__ import annotations

import subprocess

import pytest

from autoswarm.errors import BaselineError, RunLockedError, RunStateError
from autoswarm.outputs import status_record
from autoswarm.proposers.knobs import KnobProposer
from autoswarm.scheduler import RunLock
from autoswarm.testing.proposers import ScriptedProposer, replace_in, write_file
from autoswarm.types import Kind, Purpose, Status
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
    assert e.evidence.as_meta()["sigma"] == pytest.approx(sched.baseline.sigma)


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


def test_confirmations_never_take_the_run_past_max_experiments(harness: Harness) -> None:
    proposer = ScriptedProposer(
        [
            ("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04")),
            ("WIDTH 64 -> 128", replace_in("train.py", "WIDTH = 64", "WIDTH = 128")),
            ("DEPTH 4 -> 6", replace_in("train.py", "DEPTH = 4", "DEPTH = 6")),
        ]
    )
    # 3 baseline runs, then the 3 first runs at once: 6 rows; LR's screen leaves room for 1.
    sched, _, ledger = harness.scheduler(proposer, slots=3, max_experiments=7)
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    assert len(rows) <= 7
    lr = next(e for e in rows if e.description == "LR 0.01 -> 0.04")
    assert lr.status is Status.DISCARD and "no room" in lr.reason
    assert not [e for e in rows if e.kind is Kind.CONFIRM]


def test_time_limit_stops_dispatch_before_overrunning(harness: Harness) -> None:
    # final_runs = 0: no end-of-run validation, so nothing may run past the limit.
    sched, _, ledger = harness.scheduler(
        KnobProposer(seed=1), slots=2, time_limit=600.0, final_runs=0
    )
    out = sched.run(tag="t")
    assert out.reason.startswith("time limit")
    rows = ledger.experiments(out.run.id)
    assert not [e for e in rows if (e.purpose is Purpose.FINAL)]
    st = status_record(ledger, out.run, harness.clock.now())
    assert st["elapsed_s"] <= 600.0 + 1e-6
    assert st["experiments"]["total"] >= 18  # 2 slots × 600 s / 60 s, less the last wave


def test_at_the_time_limit_only_the_best_is_validated_before_the_run_ends(
    harness: Harness,
) -> None:
    # The default final_runs (-1) is 3 with several slots: once the limit stops dispatch,
    # the best is re-run 3 times with fresh seeds, and nothing else starts.
    sched, _, ledger = harness.scheduler(KnobProposer(seed=1), slots=2, time_limit=600.0)
    out = sched.run(tag="t")
    assert out.reason.startswith("time limit")
    rows = ledger.experiments(out.run.id)
    final = [e for e in rows if (e.purpose is Purpose.FINAL)]
    before = [e for e in rows if e.purpose is not Purpose.FINAL]
    assert out.best is not None
    best = next(e for e in rows if e.id == out.best.experiment_id)
    assert best.kind is Kind.CANDIDATE and best.status is Status.KEEP
    assert best.validated is True
    assert len(final) == 3
    assert all(
        e.kind is Kind.CONFIRM
        and e.commit == best.commit
        and e.rerun_of == best.id
        and e.is_remeasure is True
        and e.status is Status.KEEP
        and e.description.startswith(f"validate best #{best.id} (seed ")
        for e in final
    )
    # Fresh seeds: none of the best's earlier runs used them.
    earlier = {e.seed for e in before if e.commit == best.commit}
    assert sorted(e.seed for e in final) == [max(earlier) + 1 + i for i in range(3)]
    # Everything else ended within the limit; the validation started only after it.
    start = out.run.created_at  # the fake clock does not move between creating and starting
    assert all(e.finished_at - start <= 600.0 + 1e-6 for e in before)
    assert all(e.started_at - start >= 600.0 - 1e-6 for e in final)
    # 3 runs on 2 slots: two more waves of 60 s past the limit, no more.
    st = status_record(ledger, out.run, harness.clock.now())
    assert st["elapsed_s"] == pytest.approx(600.0 + 2 * 60.0)
    # The validation runs join the best's fresh runs: the bar is their mean with its confirmations.
    ev = best.evidence.as_meta()
    assert sorted(ev["fresh"][-3:]) == sorted(e.value("val_bpb") for e in final)
    assert out.best.runs == len(ev["fresh"]) == 5
    assert out.best.value == pytest.approx(sum(ev["fresh"]) / 5)


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
    assert cand.evidence.as_meta()["best_before"] == pytest.approx(sched.baseline.mean)
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
    # A changed locked file is restored, never committed (it may be a variant's tamper);
    # a change staged in the index is refused with how to undo it.
    committed = (harness.root / "prepare.py").read_text()
    subprocess.run(["git", "-C", str(harness.root), "checkout", "--", "train.py"], check=True)
    (harness.root / "prepare.py").write_text(committed + "print('tampered')\n")
    subprocess.run(["git", "-C", str(harness.root), "add", "prepare.py"], check=True)
    sched4, _, _ = harness.scheduler(ScriptedProposer([]), slots=1)
    with pytest.raises(RunStateError, match=r"locked file\(s\) prepare.py .*restore --staged") as e:
        sched4.run(tag="t3")
    assert "commit -am" not in str(e.value)
    subprocess.run(["git", "-C", str(harness.root), "reset", "-q", "prepare.py"], check=True)
    (harness.root / "prepare.py").write_text(committed + "print('tampered')\n")
    sched5, _, _ = harness.scheduler(ScriptedProposer([]), slots=1)
    sched5.run(tag="t3")
    assert (harness.root / "prepare.py").read_text() == committed
    said = [text for _, text in sched5.snapshot().events]
    assert any(
        "prepare.py differed from its commit" in t and "restored from HEAD" in t for t in said
    ), said


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


def test_an_experiment_running_at_two_deaths_is_a_crash_and_refs_are_repaired(
    harness: Harness,
) -> None:
    """Outside the sandbox a variant can kill its orchestrator: the second time it is a
    crash, not re-queued; pins and the branch broken meanwhile are set from the ledger."""
    sched, _backend, ledger = harness.scheduler(KnobProposer(seed=3), slots=2, max_experiments=6)
    out = sched.run(tag="t")
    killer = next(e for e in ledger.experiments(out.run.id) if e.kind is Kind.CANDIDATE)
    innocent = [e for e in ledger.experiments(out.run.id) if e.kind is Kind.CANDIDATE][1]
    git = harness.root / ".git"
    for death in (1, 2):
        for v in (killer, innocent) if death == 1 else (killer,):
            ledger.requeue(v.id, reason="test")
            ledger.mark_running(v.id, slot=0, started_at=harness.clock.now(), log_path="x")
        (git / "refs" / "autoswarm" / "t" / str(innocent.id)).unlink()  # a pin lost
        (git / "refs" / "heads" / "autoswarm" / "t").write_text("garbage\n")  # the branch
        sched2, backend2, ledger2 = harness.scheduler(
            KnobProposer(seed=3), slots=2, max_experiments=6
        )
        sched2.run(tag="t", resume=True)
        said = " | ".join(text for _, text in sched2.snapshot().events)
        assert f"refs/autoswarm/t/{innocent.id} was missing" in said, said
        assert "the run's branch refs/heads/autoswarm/t was corrupt" in said, said
        assert sched2.ws.rev_parse(f"refs/autoswarm/t/{innocent.id}") == innocent.commit
        reran = {j.experiment_id for j in backend2.submitted}
        got = ledger2.get(killer.id)
        if death == 1:
            assert reran == {killer.id, innocent.id} and got.status.is_finished()
            assert got.status is not Status.CRASH
        else:
            assert killer.id not in reran
            assert got.status is Status.CRASH and "each of the 2 times" in got.reason
            assert ledger2.get(innocent.id).status is not Status.CRASH  # orphaned once only
    assert list((harness.root / ".autoswarm" / "tampered").glob("*/refs/heads/autoswarm/t"))


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
    # First run: gain 0.04 = 3.5 se (se = 0.01·sqrt(1+1/3)) > confirm_sigmas -> 2 fresh seeds.
    # All 3 runs (σ 0.01, like the baseline): gain 0.05, t = 0.05/(0.01·sqrt(1/3+1/3)) = 6.1
    # on 6 df, one-sided p = 0.0004 < false_keep_rate 0.001 -> kept.
    outcome = scripted_values({"LR = 0.02": {42: 0.96, 43: 0.95, 44: 0.94}})
    proposer = ScriptedProposer(
        [("LR 0.01 -> 0.02", replace_in("train.py", "LR = 0.01", "LR = 0.02"))]
    )
    sched, backend, ledger = harness.scheduler(proposer, slots=1, outcome=outcome, best_runs=2)
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    cand = next(e for e in exps if e.kind is Kind.CANDIDATE)
    confirms = [e for e in exps if e.kind is Kind.CONFIRM]
    assert [c.seed for c in confirms] == [43, 44]
    assert [c.description for c in confirms] == [
        f"confirm #{cand.id} (seed {s}): LR 0.01 -> 0.02" for s in (43, 44)
    ]
    assert all(c.commit == cand.commit and c.rerun_of == cand.id for c in confirms)
    # Both re-runs were queued at once, when the first run came in.
    assert all(c.created_at == pytest.approx(cand.finished_at) for c in confirms)
    assert not [c for c in confirms if c.is_remeasure]  # best_runs is met: no more
    assert cand.status is Status.KEEP and all(c.status is Status.KEEP for c in confirms)
    ev = cand.evidence.as_meta()
    assert ev["runs"] == 3 and ev["values"] == [0.96, 0.95, 0.94]
    assert ev["mean"] == pytest.approx(0.95)
    assert ev["selected"] == [0.96] and ev["fresh"] == [0.95, 0.94]
    assert ev["best_before"] == pytest.approx(1.0) and ev["bar"] == [1.0, 1.01, 0.99]
    assert ev["sigma"] == pytest.approx(0.01)  # pooled: baseline and candidate, σ 0.01 each
    assert ev["sigma_df"] == pytest.approx(4)
    assert ev["gain"] == pytest.approx(0.05) and ev["z"] == pytest.approx(
        0.05 / (0.01 * (2 / 3) ** 0.5)
    )
    # Two looks at most (a promising one gets more runs): each at 0.001 / 2.
    assert ev["p"] < ev["alpha"] == 0.0005 and ev["unstable"] is False
    # The bar it sets is the mean of its fresh runs only, not the run that selected it.
    assert ev["replicated_mean"] == pytest.approx(0.945)
    assert out.best is not None and out.best.experiment_id == cand.id
    assert out.best.value == pytest.approx(0.945) and out.best.values == (0.95, 0.94)
    assert "LR = 0.02" in sched.ws.read_file("refs/heads/autoswarm/t", "train.py")
    # One slot: no end-of-run validation (final_runs -1 is 0 there).
    assert len(backend.submitted) == 6


@pytest.mark.parametrize(
    ("first", "later", "kept"),
    [
        # 0.02 better (t = 2.6 on 3 runs: one run in 20 with no effect gets there), not
        # confirmed by two more: discarded on all five.
        ((0.985, 0.985, 0.97), (1.0, 0.995), False),
        # 0.037 better, p = 0.004 on 3 runs: short of 0.0005; two more agree: kept.
        ((0.965, 0.97, 0.955), (0.965, 0.965), True),
    ],
)
def test_a_gain_short_of_the_keep_level_gets_one_more_look(
    harness: Harness, first: tuple[float, ...], later: tuple[float, ...], kept: bool
) -> None:
    # Not a keep at the first look (p > 0.001 / 2), but promising (p < 0.05): two more
    # fresh seeds, and the verdict on all five runs, the last look.
    values = dict(zip((42, 43, 44, 45, 46), (*first, *later), strict=True))
    outcome = scripted_values({"LR = 0.02": values})
    proposer = ScriptedProposer(
        [("LR 0.01 -> 0.02", replace_in("train.py", "LR = 0.01", "LR = 0.02"))]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=1, outcome=outcome)
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    cand = next(e for e in exps if e.kind is Kind.CANDIDATE)
    confirms = [e for e in exps if e.kind is Kind.CONFIRM]
    assert [c.seed for c in confirms] == [43, 44, 45, 46]
    ev = cand.evidence.as_meta()
    assert ev["runs"] == 5 and ev["values"] == [*first, *later]
    assert ev["selected"] == [first[0]] and ev["fresh"] == [*first[1:], *later]
    if kept:
        assert cand.status is Status.KEEP and ev["p"] < 0.0005
        assert out.best is not None and out.best.experiment_id == cand.id
        assert out.best.runs == 4  # the bar: its four fresh runs
        assert "LR = 0.02" in sched.ws.read_file("refs/heads/autoswarm/t", "train.py")
    else:
        assert cand.status is Status.DISCARD and all(c.status is Status.DISCARD for c in confirms)
        assert ev["p"] > 0.0005
        assert out.best is not None and out.best.experiment_id == exps[0].id  # the baseline
        assert "LR = 0.01" in sched.ws.read_file("refs/heads/autoswarm/t", "train.py")


def test_lucky_single_run_does_not_replicate_and_is_discarded(harness: Harness) -> None:
    # USE_BIAS has no effect: a lucky first run (gain 0.016 = 1.4 se) earns its two
    # confirmations, queued at once; they do not replicate it (1.012, 1.0).
    outcome = scripted_values({"USE_BIAS = True": {42: 0.984, 43: 1.012, 44: 1.0}})
    proposer = ScriptedProposer(
        [("USE_BIAS flip", replace_in("train.py", "USE_BIAS = False", "USE_BIAS = True"))]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=1, outcome=outcome)
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    cand = next(e for e in exps if e.kind is Kind.CANDIDATE)
    confirms = [e for e in exps if e.kind is Kind.CONFIRM]
    assert [c.seed for c in confirms] == [43, 44]
    assert cand.status is Status.DISCARD and all(c.status is Status.DISCARD for c in confirms)
    ev = cand.evidence.as_meta()
    assert ev["runs"] == 3 and ev["values"] == [0.984, 1.012, 1.0]
    assert ev["selected"] == [0.984] and ev["fresh"] == [1.012, 1.0]
    assert ev["p"] > 0.05
    assert out.best is not None and out.best.experiment_id == exps[0].id  # still the baseline


def test_large_gain_is_kept_only_after_its_confirmations(harness: Harness) -> None:
    # 0.12 better on its first run (10 se): still re-run with confirm_runs fresh seeds.
    # The bar it sets is the mean of those (0.905), not of all three (0.897).
    outcome = scripted_values({"LR = 0.04": {42: 0.88, 43: 0.91, 44: 0.90}})
    proposer = ScriptedProposer(
        [("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04"))]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=1, outcome=outcome, best_runs=2)
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    cand = next(e for e in exps if e.kind is Kind.CANDIDATE)
    confirms = [e for e in exps if e.kind is Kind.CONFIRM]
    assert [(c.seed, c.rerun_of) for c in confirms] == [(43, cand.id), (44, cand.id)]
    assert cand.status is Status.KEEP and all(c.status is Status.KEEP for c in confirms)
    ev = cand.evidence.as_meta()
    assert ev["runs"] == 3 and ev["values"] == [0.88, 0.91, 0.90]
    assert ev["mean"] == pytest.approx(2.69 / 3)
    assert ev["selected_mean"] == pytest.approx(0.88)
    assert ev["replicated_mean"] == pytest.approx(0.905)
    assert out.best is not None and out.best.experiment_id == cand.id
    assert out.best.value == pytest.approx(0.905) and out.best.runs == 2


def test_with_confirm_runs_0_a_large_gain_is_kept_on_one_run(harness: Harness) -> None:
    # No confirmation: the single run carries the verdict (t = 0.3/0.0115 = 26 on 2 df,
    # p < 0.001); the kept variant is then re-measured once (best_runs 0 = at least 1).
    outcome = scripted_values({"LR = 0.04": {42: 0.70, 43: 0.71}})
    proposer = ScriptedProposer(
        [("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04"))]
    )
    sched, _, ledger = harness.scheduler(
        proposer, slots=1, outcome=outcome, confirm_runs=0, best_runs=1
    )
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    cand = next(e for e in exps if e.kind is Kind.CANDIDATE)
    assert cand.status is Status.KEEP
    assert cand.evidence.as_meta()["selected"] == [0.70]
    (again,) = [e for e in exps if e.kind is Kind.CONFIRM]
    assert again.is_remeasure is True and again.seed == 43
    assert again.description.startswith(f"re-measure kept #{cand.id} (seed 43)")
    assert again.status is Status.KEEP
    assert cand.evidence.as_meta()["fresh"] == [0.71]
    assert out.best is not None and out.best.experiment_id == cand.id
    assert out.best.value == pytest.approx(0.71) and out.best.runs == 1


def test_confirmation_crash_discards_the_candidate(harness: Harness) -> None:
    from autoswarm.backends.fake import Outcome

    inner = scripted_values({"LR = 0.02": {42: 0.96, 44: 0.94}})

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
    crashed, other = sorted((e for e in exps if e.kind is Kind.CONFIRM), key=lambda e: e.seed)
    assert (
        cand.status is Status.DISCARD
        and f"confirmation run #{crashed.id} crashed" in cand.reason
        and "flaky" in cand.reason
    )
    assert crashed.seed == 43 and crashed.status is Status.CRASH
    assert other.seed == 44 and other.status is Status.DISCARD
    assert out.best is not None and out.best.experiment_id == exps[0].id
    assert "LR = 0.01" in sched.ws.read_file("refs/heads/autoswarm/t", "train.py")


def test_confirmation_crash_discards_the_candidate_with_several_slots(harness: Harness) -> None:
    from autoswarm.backends.fake import Outcome

    def outcome(job):
        seed = int(job.env["AUTOSWARM_SEED"])
        if "LR = 0.02" in (job.workdir / "train.py").read_text():
            if seed == 43:  # crashes fast, while the seed-44 confirmation still runs
                return Outcome(duration=5.0, exit_code=1, log="RuntimeError: flaky\n")
            return Outcome(duration=60.0, metrics={"val_bpb": 0.90})
        return Outcome(duration=60.0, metrics={"val_bpb": {42: 1.00, 43: 1.01, 44: 0.99}[seed]})

    proposer = ScriptedProposer(
        [("LR 0.01 -> 0.02", replace_in("train.py", "LR = 0.01", "LR = 0.02"))]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=2, outcome=outcome)
    out = sched.run(tag="t")
    exps = ledger.experiments(out.run.id)
    cand = next(e for e in exps if e.kind is Kind.CANDIDATE)
    assert cand.status is Status.DISCARD and "flaky" in cand.reason
    assert out.best is not None and out.best.experiment_id == exps[0].id
    assert "LR = 0.01" in sched.ws.read_file("refs/heads/autoswarm/t", "train.py")


def test_a_baseline_repeat_slowed_by_other_load_is_left_out_and_re_run(harness: Harness) -> None:
    # The third repeat made 610 steps against ~950 (another job took the cores) and
    # measured 1.20: it is left out of σ and the baseline, said so, and re-run (seed 45).
    from autoswarm.backends.fake import Outcome

    runs = {42: (1.00, 953), 43: (1.01, 950), 44: (1.20, 610), 45: (0.99, 948)}

    def outcome(job):  # type: ignore[no-untyped-def]
        value, steps = runs[int(job.env["AUTOSWARM_SEED"])]
        return Outcome(duration=60.0, metrics={"val_bpb": value, "num_steps": float(steps)})

    sched, _, ledger = harness.scheduler(ScriptedProposer([]), slots=1, outcome=outcome)
    out = sched.run(tag="t")
    base = [e for e in ledger.experiments(out.run.id) if e.kind is Kind.BASELINE]
    assert [e.seed for e in base] == [42, 43, 44, 45]
    slowed = next(e for e in base if e.seed == 44)
    assert slowed.status is Status.DISCARD
    assert "slowed by other load" in slowed.reason and "610 steps" in slowed.reason
    assert all(e.status is Status.KEEP for e in base if e.seed != 44)
    assert sched.baseline is not None and sched.baseline.values == (1.00, 1.01, 0.99)
    assert sched.baseline.sigma == pytest.approx(0.01)
    st = status_record(ledger, out.run, harness.clock.now())
    assert st["noise"]["slowed_repeats"] == 1
    assert st["noise"]["sigma"] == pytest.approx(0.01)
    assert any("slowed by other load" in text for _, text in sched.snapshot().events)


def test_a_machine_that_stays_loaded_never_leaves_the_baseline_waiting(harness: Harness) -> None:
    """Slowed repeats are replaced at most baseline_repeats times in all; after that they
    count, so the baseline completes and the waiting candidate is decided (it once waited
    forever: nothing running, nothing queued, the proposer waiting on the verdict)."""
    from autoswarm.backends.fake import Outcome

    def outcome(job):  # type: ignore[no-untyped-def]
        seed = int(job.env["AUTOSWARM_SEED"])
        steps = 950 if seed < 44 else 600  # from the third repeat on, slowed for ever
        return Outcome(duration=60.0, metrics={"val_bpb": 1.0 + seed * 1e-4, "num_steps": steps})

    proposer = ScriptedProposer([("LR 0.02", replace_in("train.py", "LR = 0.01", "LR = 0.02"))])
    sched, _, ledger = harness.scheduler(proposer, slots=1, outcome=outcome, baseline_repeats=3)
    out = sched.run(tag="t")
    assert out.reason == "proposer exhausted"
    base = [e for e in ledger.experiments(out.run.id) if e.kind is Kind.BASELINE]
    left_out = [e for e in base if e.status is Status.DISCARD]
    assert len(left_out) == 3 and sum(e.status is Status.KEEP for e in base) == 3
    assert all(e.status.is_finished() for e in ledger.experiments(out.run.id))


def test_a_run_that_ends_leaves_no_verdict_open(harness: Harness) -> None:
    # Two slots, one held by a long WIDTH run. LR's first look (p ≈ 0.004, at 290 s) asks
    # for two more runs; one starts, the other cannot before the time limit. The run
    # decides LR on the runs it has, withdraws the one that never ran, and leaves no row
    # pending or queued.
    from autoswarm.backends.fake import Outcome

    lr = {42: 0.965, 43: 0.97, 44: 0.955, 45: 0.965, 46: 0.965}
    base = {42: 1.00, 43: 1.01, 44: 0.99}

    def outcome(job):  # type: ignore[no-untyped-def]
        text = (job.workdir / "train.py").read_text()
        seed = int(job.env["AUTOSWARM_SEED"])
        if "WIDTH = 128" in text:
            return Outcome(duration=250.0, metrics={"val_bpb": 1.05})
        value = lr[seed] if "LR = 0.02" in text else base[seed]
        return Outcome(duration=60.0, metrics={"val_bpb": value})

    proposer = ScriptedProposer(
        [
            ("WIDTH 64 -> 128", replace_in("train.py", "WIDTH = 64", "WIDTH = 128")),
            ("LR 0.01 -> 0.02", replace_in("train.py", "LR = 0.01", "LR = 0.02")),
        ]
    )
    sched, _, ledger = harness.scheduler(
        proposer, slots=2, outcome=outcome, time_limit=360.0, final_runs=0, timeout=400.0
    )
    out = sched.run(tag="t")
    assert out.reason.startswith("time limit")
    rows = ledger.experiments(out.run.id)
    assert not [e for e in rows if e.status in (Status.PENDING, Status.QUEUED)]
    cand = next(e for e in rows if e.description == "LR 0.01 -> 0.02")
    assert cand.status in (Status.KEEP, Status.DISCARD)
    assert cand.evidence.as_meta()["runs"] == 4  # 42, 43, 44 and the one of 45/46 that ran
    (withdrawn,) = [e for e in rows if e.status is Status.REJECTED]
    assert withdrawn.seed in (45, 46) and "the run ended" in withdrawn.reason


def test_an_interrupted_rows_reason_says_what_ended_the_run() -> None:
    """It read "interrupted (interrupted); re-queued by --resume" after a Ctrl-C."""
    from autoswarm.scheduler import interrupted_reason

    assert interrupted_reason("interrupted") == (
        "interrupted (Ctrl-C); `autoswarm run --resume` runs it again"
    )
    assert interrupted_reason("time limit").startswith("interrupted (time limit); ")
