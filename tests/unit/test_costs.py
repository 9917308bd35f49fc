"""Cost accounting: exact dollars and GPU-hours for known durations, and the money limits."""

from __future__ import annotations

import pytest

from autoswarm.config import PoolConfig, TierConfig, TierRole
from autoswarm.costs import Cost, cost_by_tier, experiment_cost, prices_of, total_cost
from autoswarm.outputs import experiment_record, status_record, tsv_rows
from autoswarm.proposers.knobs import KnobProposer
from autoswarm.testing.proposers import ScriptedProposer
from autoswarm.types import Experiment, Kind, Status
from tests.conftest import Harness, synthetic_outcome
from tests.unit.test_tiers import tiered, tiered_values, two_tiers

POOL = PoolConfig(
    tiers=(
        TierConfig(name="a", accelerator="H100:2", slots=1, price_per_hour=3.6),
        TierConfig(name="b", accelerator="H200:1", slots=1, price_per_hour=7.2, role=TierRole.ANY),
    )
)


def row(i: int, tier: str, start: float | None, end: float | None, status=Status.KEEP):
    return Experiment(
        id=i,
        run_id=1,
        kind=Kind.CANDIDATE,
        status=status,
        parent="p",
        commit="c",
        description="d",
        proposer="x",
        started_at=start,
        finished_at=end,
        tier=tier,
    )


def test_cost_is_price_times_measured_duration() -> None:
    prices = prices_of(POOL)
    # 100 s on tier a: $3.6/h -> $0.10; 2 GPUs -> 200 GPU-seconds.
    c = experiment_cost(row(1, "a", 1000.0, 1100.0), POOL, prices)
    assert c == Cost(1, 100.0, pytest.approx(0.1), pytest.approx(200.0 / 3600.0))
    # Crashes held the slot too; never-started rows cost nothing.
    assert experiment_cost(row(2, "b", 0.0, 50.0, Status.CRASH), POOL, prices).usd == (
        pytest.approx(0.1)
    )
    assert experiment_cost(row(3, "a", None, None, Status.QUEUED), POOL, prices) == Cost()
    # A running experiment counts up to `now`, and only when `now` is given.
    running = row(4, "b", 0.0, None, Status.RUNNING)
    assert experiment_cost(running, POOL, prices, now=360.0).usd == pytest.approx(0.72)
    assert experiment_cost(running, POOL, prices) == Cost()


def test_costs_per_tier_and_in_total() -> None:
    rows = [row(1, "a", 0.0, 3600.0), row(2, "a", 0.0, 1800.0), row(3, "b", 0.0, 900.0)]
    by = cost_by_tier(rows, POOL)
    assert by["a"].usd == pytest.approx(5.4) and by["a"].gpu_hours == pytest.approx(3.0)
    assert by["b"].usd == pytest.approx(1.8) and by["b"].gpu_hours == pytest.approx(0.25)
    assert by["a"].experiments == 2 and by["b"].experiments == 1
    t = total_cost(by)
    assert t.usd == pytest.approx(7.2) and t.gpu_hours == pytest.approx(3.25) and t.experiments == 3
    # No tiers: one free implicit tier without accelerators.
    free = cost_by_tier([row(1, "", 0.0, 3600.0)], PoolConfig())
    assert free == {"": Cost(1, 3600.0, 0.0, 0.0)}


def test_status_and_results_show_exact_costs_of_a_tiered_run(harness: Harness) -> None:
    # Baselines only: 3 × 60 s on h100 ($2/h) and 3 × 45 s on h200 ($4/h).
    sched, _, ledger = tiered(harness, ScriptedProposer([]), two_tiers(), tiered_values({}))
    out = sched.run(tag="t")
    st = status_record(ledger, out.run, harness.clock.now())
    h100 = 3 * 60.0 * 2.0 / 3600.0
    h200 = 3 * 45.0 * 4.0 / 3600.0
    assert st["tiers"]["h100"]["cost_usd"] == pytest.approx(h100)
    assert st["tiers"]["h200"]["cost_usd"] == pytest.approx(h200)
    assert st["tiers"]["h100"]["gpu_hours"] == pytest.approx(3 * 60.0 / 3600.0)
    assert st["cost_usd"] == pytest.approx(h100 + h200)
    assert st["gpu_hours"] == pytest.approx((3 * 60.0 + 3 * 45.0) / 3600.0)
    # The status baseline is the validation tier's own (never a mix of tiers).
    assert st["baseline"]["val_bpb"] == pytest.approx(0.95) and st["baseline"]["runs"] == 3
    exps = ledger.experiments(out.run.id)
    recs = [experiment_record(e, two_tiers()) for e in exps]
    assert [r["tier"] for r in recs] == ["h100"] * 3 + ["h200"] * 3
    assert recs[0]["cost_usd"] == pytest.approx(60.0 * 2.0 / 3600.0)
    assert recs[3]["gpu_hours"] == pytest.approx(45.0 / 3600.0)
    # results.tsv keeps autoresearch's five columns.
    assert all(len(r.split("\t")) == 5 for r in tsv_rows(exps))
    header = (harness.root / "results.tsv").read_text().splitlines()[0]
    assert header == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"


def test_max_cost_ends_the_run_gracefully(harness: Harness) -> None:
    # One tier, 2 slots at $3.60/h: every 60 s experiment costs $0.06.
    pool = PoolConfig(
        tiers=(TierConfig(name="gpu", accelerator="A100:1", slots=2, price_per_hour=3.6),)
    )
    sched, _, ledger = tiered(
        harness, KnobProposer(seed=1), pool, synthetic_outcome(60.0), max_cost=0.5
    )
    out = sched.run(tag="t")
    assert out.reason.startswith("cost limit")
    st = status_record(ledger, out.run, harness.clock.now())
    assert st["cost_usd"] <= 0.5 + 1e-9
    # It stopped only when the next experiment could overrun: 8 × $0.06 = $0.48.
    ran = [e for e in ledger.experiments(out.run.id) if e.started_at is not None]
    assert len(ran) == 8 and st["cost_usd"] == pytest.approx(0.48)
    assert not ledger.experiments(out.run.id, statuses=[Status.RUNNING, Status.QUEUED])


def test_max_gpu_hours_ends_the_run(harness: Harness) -> None:
    pool = PoolConfig(
        tiers=(TierConfig(name="gpu", accelerator="A100:4", slots=1, price_per_hour=0.0),)
    )
    # 4 GPUs × 60 s = 1/15 GPU-hour per experiment; 0.3 GPU-hours fit 4 of them.
    sched, _, ledger = tiered(
        harness, KnobProposer(seed=1), pool, synthetic_outcome(60.0), max_gpu_hours=0.3
    )
    out = sched.run(tag="t")
    assert out.reason.startswith("gpu-hour limit")
    st = status_record(ledger, out.run, harness.clock.now())
    assert st["gpu_hours"] == pytest.approx(4 / 15) and st["cost_usd"] == 0.0
