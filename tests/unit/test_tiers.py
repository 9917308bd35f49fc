"""Hardware tiers in the loop: per-tier baselines, screening → promotion, resume re-attach.

Two tiers on a fake backend and clock: ``h100`` (screen, cheap, slow) and ``h200``
(validate, dearer, faster). The faster tier scores ~0.05 lower for the same files, so
any comparison across tiers would keep everything that ran on it: the tests fail if
the scheduler ever compares a result with the best of another tier.
"""

from __future__ import annotations

import pytest

from autoswarm.backends.fake import FakeBackend, Outcome, ReattachableFakeBackend
from autoswarm.config import PoolConfig, TierConfig, TierRole
from autoswarm.ledger import Ledger
from autoswarm.scheduler import Scheduler
from autoswarm.testing.proposers import ScriptedProposer, replace_in
from autoswarm.tiers import plan_tiers
from autoswarm.types import Job, Kind, Purpose, Status
from autoswarm.workspace import Workspace
from tests.conftest import Harness

# Baselines: h100 1.00 ± 0.01, h200 0.95 ± 0.01 (σ = 0.01 on both).
BASE = {"h100": {42: 1.00, 43: 1.01, 44: 0.99}, "h200": {42: 0.95, 43: 0.96, 44: 0.94}}
DURATION = {"h100": 60.0, "h200": 45.0, "cpu": 60.0}


def two_tiers(*, screen_slots: int = 1, validate: bool = True) -> PoolConfig:
    return PoolConfig(
        backend="local",
        tiers=(
            TierConfig(
                name="h100",
                accelerator="H100:1",
                slots=screen_slots,
                price_per_hour=2.0,
                role=TierRole.SCREEN if validate else TierRole.ANY,
            ),
            TierConfig(
                name="h200",
                accelerator="H200:1",
                slots=1,
                price_per_hour=4.0,
                speed=1.3,
                role=TierRole.VALIDATE if validate else TierRole.ANY,
            ),
        ),
    )


def tiered_values(
    table: dict[str, dict[str, float | dict[int, float]]], durations: dict[str, float] = DURATION
):
    """Outcome: the first marker found in train.py gives the value per tier (one for every
    seed, or seed -> value), else the baseline."""

    def outcome(job: Job) -> Outcome:
        text = (job.workdir / "train.py").read_text()
        seed = int(job.env["AUTOSWARM_SEED"])
        for marker, per_tier in table.items():
            if marker in text:
                v = per_tier[job.tier]
                return Outcome(
                    durations[job.tier], {"val_bpb": v[seed] if isinstance(v, dict) else v}
                )
        return Outcome(durations[job.tier], {"val_bpb": BASE[job.tier][seed]})

    return outcome


def tiered(
    harness: Harness,
    proposer,
    pool: PoolConfig,
    outcome,
    *,
    backend_cls=FakeBackend,
    **run: object,
) -> tuple[Scheduler, FakeBackend, Ledger]:
    cfg = harness.config(**run).model_copy(update={"pool": pool})
    ws = Workspace(harness.root, cfg)
    ledger = Ledger(ws.ledger_path)
    slots = sum(t.slots for t in pool.tiers) if pool.tiers else 2
    backend = backend_cls(slots, harness.clock, outcome)
    sched = Scheduler(
        workspace=ws,
        ledger=ledger,
        backend=backend,
        proposer=proposer,
        config=cfg,
        clock=harness.clock,
    )
    return sched, backend, ledger


LR = ("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04"))
WIDTH = ("WIDTH 64 -> 32", replace_in("train.py", "WIDTH = 64", "WIDTH = 32"))


# ---------------------------------------------------------------------------
# Slots, tiers and baselines


def test_plan_puts_slots_on_tiers_in_file_order_and_screens_cheapest_first() -> None:
    pool = PoolConfig(
        tiers=(
            TierConfig(name="dear", slots=1, price_per_hour=9.0),
            TierConfig(name="cheap", slots=2, price_per_hour=1.0),
            TierConfig(name="val", slots=1, price_per_hour=5.0, role=TierRole.VALIDATE),
        )
    )
    plan = plan_tiers(pool, 4)
    assert plan.slot_tiers == ("dear", "cheap", "cheap", "val")
    assert plan.screening == ("cheap", "dear") and plan.validation == "val"
    assert plan.deciding == "val" and not plan.screens(3) and plan.screens(0)
    assert plan_tiers(PoolConfig(), 3).slot_tiers == ("", "", "")


def test_every_tier_gets_its_own_baseline_and_noise(harness: Harness) -> None:
    sched, backend, ledger = tiered(harness, ScriptedProposer([]), two_tiers(), tiered_values({}))
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    assert [(e.kind, e.tier, e.seed) for e in rows] == [
        (Kind.BASELINE, t, s) for t in ("h100", "h200") for s in (42, 43, 44)
    ]
    assert all(e.status is Status.KEEP for e in rows)
    # Each job ran on a slot of its own tier and says so.
    assert {(j.tier, j.slot) for j in backend.submitted} == {("h100", 0), ("h200", 1)}
    assert sched._baselines["h100"].mean == pytest.approx(1.00)
    assert sched._baselines["h200"].mean == pytest.approx(0.95)
    assert sched._baselines["h200"].sigma == pytest.approx(0.01)
    assert sched.baseline is sched._baselines["h200"]  # the validation tier decides


# ---------------------------------------------------------------------------
# Screening -> promotion


def test_strong_candidate_is_promoted_validated_and_only_then_kept(harness: Harness) -> None:
    # LR: 0.05 better on h100, 0.15 better on h200 (0.81, 0.79 on its 2 validation seeds,
    # 0.80 after: t = 14 on 3 df, p < false_keep_rate). WIDTH (proposed while LR is being
    # validated) is 0.96 on h100: better than the h100 baseline, worse than the kept LR's
    # own h100 run -> not promoted. h200 runs take 25 s here, so LR's 2 validation runs
    # end (and LR is kept) before WIDTH's first run on h100 does.
    lr_h200 = {43: 0.81, 44: 0.79, 45: 0.80, 46: 0.80, 47: 0.80}
    outcome = tiered_values(
        {"WIDTH = 32": {"h100": 0.96, "h200": 0.91}, "LR = 0.04": {"h100": 0.95, "h200": lr_h200}},
        durations={"h100": 60.0, "h200": 25.0},
    )
    sched, backend, ledger = tiered(
        harness, ScriptedProposer([LR, WIDTH]), two_tiers(), outcome, best_runs=2
    )
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    lr = next(e for e in rows if e.description == LR[0])
    width = next(e for e in rows if e.description == WIDTH[0])
    promos = [e for e in rows if e.kind is Kind.CONFIRM and not e.is_remeasure]
    assert lr.tier == "h100" and lr.status is Status.KEEP
    # Promotion of LR only: confirm_runs (2) runs on the validation tier, with fresh seeds.
    assert [(p.tier, p.seed) for p in promos] == [("h200", 43), ("h200", 44)]
    assert all(
        p.rerun_of == lr.id
        and (p.purpose is Purpose.VALIDATE) is True
        and p.commit == lr.commit
        and p.status is Status.KEEP
        and p.description.startswith(f"validate #{lr.id} on h200 (seed {p.seed})")
        for p in promos
    )
    # The verdict compares the h200 runs (all fresh: the h100 screen selected it) with the
    # h200 baseline, in h200's σ (its baseline and LR's runs pooled, not h100's 0.01).
    # (Its runs then grew by the end-of-run validation, below.)
    ev = lr.evidence.as_meta()
    assert ev["values"][:2] == [0.81, 0.79] and ev["fresh"][:2] == [0.81, 0.79]
    assert ev["selected"] == []
    assert ev["best_before"] == pytest.approx(0.95) and ev["bar"] == [0.95, 0.96, 0.94]
    assert ev["sigma"] == pytest.approx(((2 * 0.01**2 + 0.02**2 / 2) / 3) ** 0.5)
    assert ev["p"] < 0.001
    assert lr.screening.as_meta()["best_before"] == pytest.approx(1.00)
    assert lr.screening.as_meta()["values"] == [0.95]
    assert lr.validated_on == "h200"
    # Two fresh runs are best_runs (2 here) already: no re-measurement.
    assert not [e for e in rows if e.is_remeasure and e.purpose is not Purpose.FINAL]
    # WIDTH is judged against the best *on h100* (LR's 0.95), not the h100 baseline.
    assert width.status is Status.DISCARD and width.tier == "h100"
    assert width.finished_at > lr.kept_at
    assert width.evidence.as_meta()["best_before"] == pytest.approx(0.95)
    assert width.evidence.as_meta()["bar"] == [0.95] and width.evidence.as_meta()["bar_id"] == lr.id
    assert not [e for e in rows if e.rerun_of == width.id]
    assert "LR = 0.04" in sched.ws.read_file("refs/heads/autoswarm/t", "train.py")
    # The run ends (proposer exhausted, 2 slots): the best is validated 3 more times, on
    # the tier its evidence came from, with the next seeds; they join its bar.
    final = [e for e in rows if (e.purpose is Purpose.FINAL)]
    assert sorted((e.tier, e.seed) for e in final) == [("h200", 45), ("h200", 46), ("h200", 47)]
    assert all(e.rerun_of == lr.id and e.status is Status.KEEP for e in final)
    assert ev["fresh"] == ev["values"] == [0.81, 0.79, 0.80, 0.80, 0.80] and ev["runs"] == 5
    assert out.best is not None and out.best.experiment_id == lr.id
    assert out.best.value == pytest.approx(0.80) and out.best.runs == 5
    # First runs never went to the validation tier.
    assert [j.tier for j in backend.submitted if j.experiment_id in (lr.id, width.id)] == [
        "h100",
        "h100",
    ]


def test_promoted_candidate_that_fails_validation_does_not_advance_the_branch(
    harness: Harness,
) -> None:
    # 0.05 better on h100, no better on h200: cross-tier (0.95 vs h100's 1.00) would keep it.
    outcome = tiered_values({"LR = 0.04": {"h100": 0.95, "h200": 0.95}})
    sched, _, ledger = tiered(harness, ScriptedProposer([LR]), two_tiers(), outcome)
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    lr = next(e for e in rows if e.description == LR[0])
    promos = [e for e in rows if e.kind is Kind.CONFIRM]
    assert promos and all(p.tier == "h200" and (p.purpose is Purpose.VALIDATE) for p in promos)
    assert lr.status is Status.DISCARD and all(p.status is Status.DISCARD for p in promos)
    assert lr.evidence.as_meta()["best_before"] == pytest.approx(0.95)
    assert "LR = 0.01" in sched.ws.read_file("refs/heads/autoswarm/t", "train.py")
    # The best is still the baseline, valued on the validation tier.
    assert out.best is not None and out.best.commit == out.run.base_commit
    assert out.best.value == pytest.approx(0.95)


def test_weak_screening_result_is_discarded_without_promotion(harness: Harness) -> None:
    # 0.005 better on h100: z = 0.43 < confirm_sigmas -> no validation run is spent on it.
    outcome = tiered_values({"LR = 0.04": {"h100": 0.995, "h200": 0.90}})
    sched, _, ledger = tiered(harness, ScriptedProposer([LR]), two_tiers(), outcome)
    out = sched.run(tag="t")
    rows = ledger.experiments(out.run.id)
    assert not [e for e in rows if e.kind is Kind.CONFIRM]
    assert rows[-1].status is Status.DISCARD and rows[-1].tier == "h100"


def test_without_validation_tier_first_runs_take_the_cheapest_free_slot(harness: Harness) -> None:
    # Both tiers 'any': h100 is cheaper, so it takes first runs while it has a free slot;
    # the h200 slot takes the rest, and each result is judged on its own tier.
    steps = [
        (f"WARMUP {i}", replace_in("train.py", "LR = 0.01", f"LR = 0.01{i}")) for i in range(1, 5)
    ]
    outcome = tiered_values({}, {"h100": 60.0, "h200": 60.0})
    sched, backend, ledger = tiered(
        harness, ScriptedProposer(steps), two_tiers(validate=False), outcome
    )
    out = sched.run(tag="t")
    rows = [e for e in ledger.experiments(out.run.id) if e.kind is Kind.CANDIDATE]
    first = [j for j in backend.submitted if j.experiment_id == rows[0].id]
    assert first[0].tier == "h100"  # both slots free after the baselines: the cheap one first
    assert {e.tier for e in rows} == {"h100", "h200"}
    for e in rows:  # neutral everywhere: discarded, each against its own tier's baseline
        assert e.status is Status.DISCARD
        assert e.evidence.as_meta()["best_before"] == pytest.approx(
            1.00 if e.tier == "h100" else 0.95
        )


# ---------------------------------------------------------------------------
# Resume: re-attach what still runs, re-queue what is gone


def test_resume_reattaches_running_jobs_and_requeues_lost_ones(harness: Harness) -> None:
    sched, _, ledger = tiered(
        harness,
        ScriptedProposer([LR, WIDTH]),
        two_tiers(screen_slots=2),
        tiered_values({}),
        max_experiments=8,
    )
    out = sched.run(tag="t")
    cands = [e for e in ledger.experiments(out.run.id) if e.kind is Kind.CANDIDATE]
    assert len(cands) == 2
    # Pretend the orchestrator died while both candidates ran on the two h100 slots.
    now = harness.clock.now()
    for slot, c in enumerate(cands):
        ledger.requeue(c.id, reason="test")
        ledger.mark_running(c.id, slot=slot, started_at=now, log_path="x", tier="h100")
        ledger.set_handle(c.id, f'{{"fake": {c.id}}}')
    survivor, lost = cands
    backend_survivors = {survivor.id: (now + 30.0, Outcome(60.0, {"val_bpb": 0.999}))}

    def backend_cls(slots, clock, outcome):
        return ReattachableFakeBackend(slots, clock, outcome, backend_survivors)

    sched2, backend2, ledger2 = tiered(
        harness,
        ScriptedProposer([]),
        two_tiers(screen_slots=2),
        tiered_values({}),
        backend_cls=backend_cls,
        max_experiments=8,
    )
    sched2.run(tag="t", resume=True)
    assert isinstance(backend2, ReattachableFakeBackend)
    # The survivor was adopted in its slot, never resubmitted, and its result recorded.
    assert [(j.experiment_id, j.slot, j.tier) for j in backend2.reattached] == [
        (survivor.id, 0, "h100")
    ]
    assert survivor.id not in {j.experiment_id for j in backend2.submitted}
    assert (survivor.id, f'{{"fake": {survivor.id}}}') not in backend2.cancelled
    # The lost one was killed by handle and ran again under the same id.
    assert (lost.id, f'{{"fake": {lost.id}}}') in backend2.cancelled
    assert [j.experiment_id for j in backend2.submitted] == [lost.id]
    after = {e.id: e for e in ledger2.experiments(out.run.id)}
    assert len(after) == 8 and all(e.status.is_finished() for e in after.values())
    assert after[survivor.id].value("val_bpb") == pytest.approx(0.999)
    assert after[survivor.id].finished_at == pytest.approx(now + 30.0)


def test_a_ledger_from_before_tiers_migrates_and_reads_as_the_implicit_tier(tmp_path) -> None:
    import sqlite3

    from autoswarm.ledger import _MIGRATIONS

    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as c:  # a version-1 ledger with one finished experiment
        for stmt in _MIGRATIONS[1]:
            c.execute(stmt)
        c.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")
        c.execute(
            "INSERT INTO runs(tag, branch, base_commit, config, created_at) "
            "VALUES ('old', 'autoswarm/old', 'abc', '{}', 0)"
        )
        c.execute(
            "INSERT INTO experiments(run_id, kind, status, parent, commit_sha, description, "
            "proposer, seed, created_at, started_at, finished_at) "
            "VALUES (1, 'baseline', 'keep', 'abc', 'abc', 'baseline', 'baseline', 42, 0, 0, 60)"
        )
    c.close()
    with Ledger(path) as led:
        (e,) = led.experiments(1)
        assert e.tier == "" and e.duration_s == 60.0
        led.mark_running(e.id, slot=0, started_at=1.0, log_path="x", tier="h100")
        assert led.get(e.id).tier == "h100"
