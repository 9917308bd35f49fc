"""OptunaProposer: the contract, batched ask/tell, FAIL on crashes, resume, and that it searches."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from autoswarm.errors import ProposerError
from autoswarm.knobs import knob_spaces, knobs_of
from autoswarm.proposers.base import Proposer, fingerprint
from autoswarm.proposers.optuna import OptunaProposer
from autoswarm.testing.contract import ProposerContract, contract_context
from autoswarm.testing.synthetic import TRAIN_PY
from autoswarm.types import Experiment, Kind, Proposal, Status
from tests.conftest import Harness, synthetic_outcome

HAS_CMAES = importlib.util.find_spec("cmaes") is not None

# ---------------------------------------------------------------------------
# The contract


class TestOptunaProposer(ProposerContract):
    def make_proposer(self) -> Proposer:
        proposer = OptunaProposer(seed=0)
        assert isinstance(proposer, Proposer)
        return proposer

    def files(self) -> dict[str, str]:
        return {"train.py": TRAIN_PY}


@pytest.mark.skipif(not HAS_CMAES, reason="needs the cmaes package")
class TestOptunaCmaEsProposer(TestOptunaProposer):
    def make_proposer(self) -> Proposer:
        return OptunaProposer(seed=0, sampler="cmaes")


# ---------------------------------------------------------------------------
# Ask and tell


def _finished(
    prop: Proposal, exp_id: int, status: Status, value: float | None = None
) -> Experiment:
    return Experiment(
        id=exp_id,
        run_id=1,
        kind=Kind.CANDIDATE,
        status=status,
        parent=prop.parent,
        commit="1" * 40,
        description=prop.description,
        proposer=prop.proposer,
        metrics={"val_bpb": value} if value is not None else {},
        meta=dict(prop.meta),
    )


def test_batch_values_lie_in_the_inferred_spaces() -> None:
    files = {"train.py": TRAIN_PY}
    spaces = knob_spaces(files)
    p = OptunaProposer(seed=1)
    props = p.propose(contract_context(files), 4)
    assert len(props) == 4
    assert len({x.files["train.py"] for x in props}) == 4
    for prop in props:
        values = prop.meta["values"]
        assert set(values) == set(spaces)
        # What was written is what meta says.
        assert {k: knobs_of(prop.files)[k].value for k in values} == values
        for name, v in values.items():
            s = spaces[name]
            if s.kind == "pow2":
                assert isinstance(v, int) and v & (v - 1) == 0 and s.low <= v <= s.high
            elif s.kind == "int":
                assert type(v) is int and s.low <= v <= s.high
            elif s.kind == "float":
                assert type(v) is float and s.low <= v <= s.high
            else:
                assert v in s.choices
        assert prop.description.count("->") >= 1
        assert isinstance(prop.meta["optuna_trial"], int)
    assert [t.state for t in p.study.trials] == [optuna.trial.TrialState.RUNNING] * 4
    p.close()


def test_outcomes_are_told_once_crashes_as_fail() -> None:
    p = OptunaProposer(seed=2)
    ctx = contract_context({"train.py": TRAIN_PY})
    keep, crash, rejected = p.propose(ctx, 3)
    p.observe(_finished(keep, 10, Status.KEEP, 0.95))
    p.observe(_finished(crash, 11, Status.CRASH))
    p.observe(_finished(rejected, 12, Status.REJECTED))
    # Observed again (as --resume replays them): no error, nothing changes.
    p.observe(_finished(keep, 10, Status.KEEP, 0.95))
    p.observe(_finished(crash, 11, Status.CRASH))
    trials = {t.number: t for t in p.study.trials}
    assert trials[keep.meta["optuna_trial"]].state is optuna.trial.TrialState.COMPLETE
    assert trials[keep.meta["optuna_trial"]].value == pytest.approx(0.95)
    assert trials[crash.meta["optuna_trial"]].state is optuna.trial.TrialState.FAIL
    assert trials[rejected.meta["optuna_trial"]].state is optuna.trial.TrialState.FAIL
    p.close()


def test_baseline_observed_before_the_study_becomes_a_trial() -> None:
    files = {"train.py": TRAIN_PY}
    base = Experiment(
        id=1,
        run_id=1,
        kind=Kind.BASELINE,
        status=Status.KEEP,
        parent="0" * 40,
        commit="0" * 40,
        description="baseline",
        proposer="baseline",
        metrics={"val_bpb": 1.25},
        knobs={k: v.value for k, v in knobs_of(files).items()},
    )
    p = OptunaProposer(seed=3)
    p.observe(base)  # buffered: the study is made by the first propose
    p.observe(base)
    props = p.propose(contract_context(files), 2)
    done = [t for t in p.study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert len(done) == 1 and done[0].value == pytest.approx(1.25)
    assert done[0].params == {
        "LR": 0.01,
        "WIDTH_log2": 6,
        "DEPTH": 4,
        "WARMUP_RATIO": 0.1,
        "USE_BIAS": False,
    }
    assert len(props) == 2
    p.close()


def test_small_discrete_space_is_used_up_then_exhausted() -> None:
    files = {"train.py": "USE_BIAS = False\nDEPTH = 4  # one of: 2, 4, 8\n"}
    p = OptunaProposer(seed=6)
    ctx = contract_context(files)
    props = p.propose(ctx, 8)  # 2 × 3 points, one of them the baseline
    contents = {x.files["train.py"] for x in props}
    assert len(contents) == len(props) == 5 and files["train.py"] not in contents
    assert not p.exhausted
    seen = frozenset(fingerprint(x.files) for x in props) | {fingerprint(files)}
    assert p.propose(replace(ctx, seen=seen), 2) == []
    assert p.exhausted
    # Points that were tried already were told as failures, not proposed again.
    states = [t.state for t in p.study.trials]
    assert states.count(optuna.trial.TrialState.RUNNING) == 5
    p.close()


def test_trials_of_a_lost_in_memory_study_are_added_as_points() -> None:
    ctx = contract_context({"train.py": TRAIN_PY})
    first = OptunaProposer(seed=7)
    (prop,) = first.propose(ctx, 1)
    first.close()
    # A resumed run with an in-memory study: the old trial numbers mean nothing now.
    second = OptunaProposer(seed=7)
    second.observe(_finished(prop, 20, Status.DISCARD, 1.3))
    second.propose(ctx, 1)
    done = [t for t in second.study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert len(done) == 1 and done[0].value == pytest.approx(1.3)
    assert done[0].params["LR"] == pytest.approx(prop.meta["values"]["LR"])
    second.close()


def test_bad_settings_are_proposer_errors() -> None:
    with pytest.raises(ProposerError, match="unknown Optuna sampler"):
        OptunaProposer(sampler="grid")
    p = OptunaProposer()
    with pytest.raises(ProposerError, match="first propose"):
        _ = p.study
    with pytest.raises(ProposerError, match="no knob Optuna can search"):
        p.propose(contract_context({"train.py": "print('hi')\n"}), 1)


# ---------------------------------------------------------------------------
# In the loop: resume and search quality


def test_resume_continues_the_study(harness: Harness) -> None:
    state = harness.root / ".autoswarm"
    sched, _, ledger = harness.scheduler(
        OptunaProposer(seed=4, storage_dir=state), slots=2, max_experiments=10, best_runs=1
    )
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    assert len(rows) == 10
    # Confirmations count against max_experiments but are not trials of their own.
    cands = [e for e in rows if e.kind is Kind.CANDIDATE]
    assert len(cands) >= 3 and any(e.kind is Kind.CONFIRM for e in rows)
    first = optuna.load_study(study_name="t", storage=f"sqlite:///{state / 'optuna.db'}")
    n_before = len(first.trials)
    assert n_before >= len(cands) + 3  # a trial per candidate and the 3 baseline runs
    assert {e.meta["optuna_trial"] for e in cands} <= {t.number for t in first.trials}

    p2 = OptunaProposer(seed=4, storage_dir=state)
    sched2, _, ledger2 = harness.scheduler(p2, slots=2, max_experiments=16, best_runs=1)
    out2 = sched2.run(tag="t", resume=True)
    assert out2.run.id == out.run.id
    study = p2.study
    assert study.study_name == "t" and len(study.trials) > n_before
    # The baseline runs were added once, not again on resume.
    added = [t for t in study.trials if "autoswarm_experiment" in t.user_attrs]
    assert len(added) == 3
    exps = ledger2.experiments(out.run.id)
    assert len(exps) == 16
    # The first session kept a variant, yet the resumed one still proposes from the
    # baseline files (the space of the study is theirs).
    assert out.best is not None and out.best.commit != out.run.base_commit
    assert all(e.parent == out.run.base_commit for e in exps[10:] if e.kind is Kind.CANDIDATE)
    by_number = {t.number: t for t in study.trials}
    finished = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    for e in exps:
        if e.kind is Kind.CANDIDATE:
            assert e.status.is_finished()
            assert by_number[e.meta["optuna_trial"]].state in finished
    ledger.close()
    ledger2.close()


def test_trials_of_interrupted_experiments_are_told_after_resume(harness: Harness) -> None:
    state = harness.root / ".autoswarm"
    sched, backend, ledger = harness.scheduler(
        OptunaProposer(seed=8, storage_dir=state), slots=2, max_experiments=9, best_runs=1
    )
    original = backend.poll
    stopped: list[bool] = []

    def poll(timeout: float) -> list:
        assert sched.run_rec is not None
        running = ledger.experiments(sched.run_rec.id, statuses=[Status.RUNNING])
        if len(running) == 2 and all(e.kind is Kind.CANDIDATE for e in running) and not stopped:
            stopped.append(True)
            sched.request_stop()  # the baseline and a first candidate are done, 2 candidates run
            return []
        return original(timeout)

    backend.poll = poll  # type: ignore[method-assign]
    out = sched.run(tag="t")
    assert out.reason == "interrupted" and stopped
    cut = [
        e
        for e in ledger.experiments(out.run.id, statuses=[Status.INTERRUPTED])
        if e.kind is Kind.CANDIDATE
    ]
    assert len(cut) == 2
    p2 = OptunaProposer(seed=8, storage_dir=state)
    sched2, _, ledger2 = harness.scheduler(p2, slots=2, max_experiments=9, best_runs=1)
    sched2.run(tag="t", resume=True)
    trials = {t.number: t for t in p2.study.trials}
    for e in cut:
        again = ledger2.get(e.id)
        assert again.status in (Status.KEEP, Status.DISCARD)
        trial = trials[e.meta["optuna_trial"]]
        assert trial.state is optuna.trial.TrialState.COMPLETE
        assert trial.value == pytest.approx(again.value("val_bpb"))
    ledger.close()
    ledger2.close()


def test_trial_of_a_candidate_whose_confirmations_were_interrupted_is_told_after_resume(
    harness: Harness,
) -> None:
    state = harness.root / ".autoswarm"
    sched, backend, ledger = harness.scheduler(
        OptunaProposer(seed=8, storage_dir=state), slots=2, max_experiments=9
    )
    original = backend.poll
    stopped: list[bool] = []

    def poll(timeout: float) -> list:
        assert sched.run_rec is not None
        running = ledger.experiments(sched.run_rec.id, statuses=[Status.RUNNING])
        if len(running) == 2 and all(e.kind is Kind.CONFIRM for e in running) and not stopped:
            stopped.append(True)
            sched.request_stop()  # a candidate waits on its 2 confirmations, both running
            return []
        return original(timeout)

    backend.poll = poll  # type: ignore[method-assign]
    out = sched.run(tag="t")
    assert out.reason == "interrupted" and stopped
    rows = ledger.experiments(out.run.id)
    cut = [e for e in rows if e.status is Status.INTERRUPTED]
    assert len(cut) == 2 and all(e.kind is Kind.CONFIRM for e in cut)
    (waiting,) = {e.rerun_of for e in cut}
    cand = ledger.get(waiting)
    assert cand.kind is Kind.CANDIDATE and cand.status is Status.PENDING
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{state / 'optuna.db'}")
    number = cand.meta["optuna_trial"]
    assert study.trials[number].state is optuna.trial.TrialState.RUNNING  # not told yet
    p2 = OptunaProposer(seed=8, storage_dir=state)
    sched2, _, ledger2 = harness.scheduler(p2, slots=2, max_experiments=9)
    sched2.run(tag="t", resume=True)
    assert all(ledger2.get(e.id).status in (Status.KEEP, Status.DISCARD) for e in cut)
    again = ledger2.get(cand.id)
    assert again.status in (Status.KEEP, Status.DISCARD)
    trial = {t.number: t for t in p2.study.trials}[number]
    # Told once, with the candidate's own (first) run: confirmations are not trials.
    assert trial.state is optuna.trial.TrialState.COMPLETE
    assert trial.value == pytest.approx(again.value("val_bpb"))
    ledger.close()
    ledger2.close()


def _search(harness: Harness, sampler: str, experiments: int) -> tuple[float, float]:
    p = OptunaProposer(seed=0, sampler=sampler)
    sched, _, ledger = harness.scheduler(
        p, slots=4, max_experiments=experiments, outcome=synthetic_outcome(noise=0.001)
    )
    out = sched.run(tag="t")
    ledger.close()
    assert out.best is not None and sched.baseline is not None
    assert all(math.isfinite(t.value) for t in p.study.trials if t.value is not None)
    return out.best.value, sched.baseline.mean


def test_tpe_finds_clearly_better_knobs(harness: Harness) -> None:
    best, baseline = _search(harness, "tpe", 40)
    assert best < baseline - 0.1  # the optimum is 1.0, the baseline about 1.25


@pytest.mark.skipif(not HAS_CMAES, reason="needs the cmaes package")
def test_cmaes_improves_on_the_baseline(harness: Harness) -> None:
    best, baseline = _search(harness, "cmaes", 24)
    assert best < baseline - 0.05


def test_in_memory_study_has_no_files(tmp_path: Path) -> None:
    p = OptunaProposer(seed=5)
    p.propose(contract_context({"train.py": TRAIN_PY}), 1)
    assert not list(tmp_path.iterdir())
    p.close()
    p.close()
