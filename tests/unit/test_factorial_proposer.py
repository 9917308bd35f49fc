"""Factorial waves: design validity, the contract, and a whole run on the synthetic objective."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoswarm.analysis.effects import effects_from_experiments
from autoswarm.knobs import knob_spaces, knobs_of
from autoswarm.outputs import status_record
from autoswarm.proposers.base import Proposer
from autoswarm.proposers.factorial import FactorialProposer, two_level_design
from autoswarm.proposers.knobs import step
from autoswarm.testing.contract import ProposerContract, contract_context
from autoswarm.testing.synthetic import TRAIN_PY, make_workspace
from autoswarm.types import Experiment, Kind, Status
from tests.conftest import Harness

FILES = {"train.py": TRAIN_PY}


class TestFactorialProposer(ProposerContract):
    def make_proposer(self) -> Proposer:
        proposer = FactorialProposer(seed=0)
        assert isinstance(proposer, Proposer)
        return proposer

    def files(self) -> dict[str, str]:
        return dict(FILES)


# ---------------------------------------------------------------------------
# Designs


@pytest.mark.parametrize(("k", "runs"), [(2, 4), (3, 4), (3, 8), (4, 8), (5, 8), (6, 16), (6, 32)])
def test_designs_are_balanced_and_orthogonal(k: int, runs: int) -> None:
    design, res = two_level_design(k, runs)
    assert design.shape == (min(runs, 2**k), k)
    assert set(np.unique(design)) == {-1.0, 1.0}
    assert np.all(design.sum(axis=0) == 0)  # balanced
    gram = design.T @ design
    assert np.all(gram == np.diag(np.diag(gram)))  # main effects not aliased
    if 2**k > runs:  # a fraction: resolution IV whenever the runs allow it
        assert res >= (4 if runs >= 2 * k else 3)


def test_other_fractions_give_new_points() -> None:
    a, _ = two_level_design(4, 8, variant=0)
    b, _ = two_level_design(4, 8, variant=1)
    assert not {tuple(r) for r in a} & {tuple(r) for r in b}


# ---------------------------------------------------------------------------
# One wave


def test_a_wave_screens_every_knob_up_to_three_quarters_of_its_runs() -> None:
    # Five knobs: eight runs hold five factors (resolution III, a screen), four runs three.
    assert len(knobs_of(FILES)) == 5
    for n, k in ((8, 5), (4, 3), (16, 5)):
        props = FactorialProposer(seed=0).propose(contract_context(FILES), n)
        assert len(props[0].meta["design"]) == k
    # Fewer when asked: max_factors caps the design.
    props = FactorialProposer(seed=0, max_factors=2).propose(contract_context(FILES), 8)
    assert len(props[0].meta["design"]) == 2


def test_a_wave_of_eight_is_a_two_level_design_one_step_from_the_centre() -> None:
    p = FactorialProposer(seed=0, max_factors=4)
    ctx = contract_context(FILES)
    props = p.propose(ctx, 8)
    assert len(props) == 8
    waves = {pr.meta["wave"] for pr in props}
    assert waves == {1}
    factors = list(props[0].meta["design"])
    assert len(factors) == 4 and {"LR", "WIDTH", "DEPTH"} <= set(factors)
    x = np.array([[pr.meta["design"][f] for f in factors] for pr in props])
    assert np.all(x.sum(axis=0) == 0)
    for i, j in itertools.combinations(range(len(factors)), 2):
        assert x[:, i] @ x[:, j] == 0
    centre = knobs_of(FILES)
    spaces = knob_spaces(FILES)
    for pr in props:
        knobs = knobs_of(pr.files)
        assert pr.parent == ctx.best_commit
        assert pr.description.startswith("wave 1 [")
        for f, sign in pr.meta["design"].items():
            value = knobs[f].value
            assert pr.meta["settings"][f] == value
            if spaces[f].kind == "bool":
                assert value is (sign > 0)
            else:
                assert value == step(spaces[f], centre[f].value, sign)
        assert type(knobs["DEPTH"].value) is int
        width = knobs["WIDTH"].value
        assert isinstance(width, int) and width & (width - 1) == 0
        # Knobs outside the design keep the centre's values.
        for name, k in knobs.items():
            if name not in pr.meta["design"]:
                assert k.value == centre[name].value


def test_never_returns_nothing_while_slots_are_free() -> None:
    p = FactorialProposer(seed=1)
    ctx = contract_context(FILES)
    seen: set[str] = set()
    for n in (5, 8, 3, 8, 8, 8, 8, 8):
        props = p.propose(ctx, n)
        assert len(props) == n
        for pr in props:
            key = pr.files["train.py"]
            assert key not in seen
            seen.add(key)


def _finished(
    i: int, meta: dict[str, Any], value: float, parent: str = "0" * 40, **kw: Any
) -> Experiment:
    base: dict[str, Any] = dict(
        id=i,
        run_id=1,
        kind=Kind.CANDIDATE,
        status=Status.DISCARD,
        parent=parent,
        commit=f"{i:040d}",
        description="x",
        proposer="factorial",
        metrics={"val_bpb": value},
        meta=meta,
    )
    base.update(kw)
    return Experiment(**base)


def test_results_of_a_wave_lead_to_the_combination_of_winners() -> None:
    p = FactorialProposer(seed=2)
    ctx = contract_context(FILES)
    props = p.propose(ctx, 8)
    # LR up and WIDTH up are better (metric minimised); the rest does nothing.
    for i, pr in enumerate(props, start=1):
        d = pr.meta["design"]
        y = 1.0 - 0.02 * d["LR"] - 0.03 * d["WIDTH"] + 0.0001 * (i % 2)
        p.observe(_finished(i, dict(pr.meta), y))
    nxt = p.propose(ctx, 3)
    assert nxt[0].meta["combine"] == 1
    assert nxt[0].description.startswith("combine wave 1: ")
    assert nxt[0].meta["settings"] == {"WIDTH": 128, "LR": 0.015}
    table = p.effects(1)
    assert table is not None
    width = table.get("WIDTH")
    assert width is not None and width.estimate == pytest.approx(-0.06, abs=1e-3)
    # Then the path of steepest descent, one point per quarter of the wave: WIDTH (the
    # steeper) 2 and 4 steps up, LR in proportion (0.04/0.06 of that, rounded).
    assert [pr.meta.get("path") for pr in nxt[1:]] == [2, 4]
    assert nxt[1].meta["settings"] == {"WIDTH": 256, "LR": 0.015}
    assert nxt[2].meta["settings"] == {"WIDTH": 1024, "LR": 0.0338}
    assert nxt[2].description.startswith("path wave 1 ×4: ")
    # The next wave is centred on the ×4 point: its design carries that point's values.
    wave2 = p.propose(ctx, 8)
    centre = {f: sorted(p.waves[2].levels[f]) for f in ("WIDTH", "LR")}
    assert centre["WIDTH"] == [512, 2048] and centre["LR"][0] < 0.0338 < centre["LR"][1]
    assert all(pr.meta["wave"] == 2 for pr in wave2)


def test_without_a_path_each_winner_is_also_tried_alone() -> None:
    """A wave adopted on resume does not know its centre: no path, but the singles."""
    first = FactorialProposer(seed=2)
    ctx = contract_context(FILES)
    props = first.propose(ctx, 8)
    second = FactorialProposer(seed=2)
    for i, pr in enumerate(props, start=1):
        d = pr.meta["design"]
        y = 1.0 - 0.02 * d["LR"] - 0.03 * d["WIDTH"] + 0.0001 * (i % 2)
        second.observe(_finished(i, dict(pr.meta), y))
    nxt = second.propose(ctx, 3)
    assert nxt[0].meta["combine"] == 1 and "path" not in nxt[0].meta
    # Each winner on its own, strongest first.
    assert [pr.meta.get("single") for pr in nxt[1:]] == [True, True]
    assert nxt[1].meta["settings"] == {"WIDTH": 128}


def test_a_knob_at_the_edge_of_its_range_is_varied_one_sided() -> None:
    files = {"train.py": "LR = 0.01\nWARMDOWN_RATIO = 0.0\nN_HEAD = 1\n"}
    p = FactorialProposer(seed=0)
    props = p.propose(contract_context(files), 4)
    wave = p.waves[1]
    assert set(wave.factors) == {"LR", "WARMDOWN_RATIO", "N_HEAD"}
    assert wave.levels["WARMDOWN_RATIO"] == [0.0, 0.05] and wave.levels["N_HEAD"] == [1, 2]
    # The description names only the knobs a point changes.
    assert not any(re.search(r"WARMDOWN_RATIO 0\.0 -> 0\.0(?!\d)", pr.description) for pr in props)
    assert any("WARMDOWN_RATIO 0.0 -> 0.05" in pr.description for pr in props)


def test_observe_replays_rebuild_waves_and_ids_stay_unique() -> None:
    first = FactorialProposer(seed=3)
    ctx = contract_context(FILES)
    props = first.propose(ctx, 8)
    replay = [_finished(i, dict(pr.meta), 1.0 + 0.01 * i) for i, pr in enumerate(props, start=1)]
    # A new process sees the old experiments only through observe (resume).
    second = FactorialProposer(seed=3)
    for e in replay:
        second.observe(e)
    assert set(second.waves) == {1}
    wave = second.waves[1]
    assert set(wave.factors) == set(props[0].meta["design"])
    assert all(None not in lv for lv in wave.levels.values())
    fresh = second.propose(ctx, 8)
    assert fresh and all(pr.meta.get("wave", 0) != 1 for pr in fresh)
    assert any(pr.meta.get("combine") == 1 or pr.meta.get("wave") == 2 for pr in fresh)


# ---------------------------------------------------------------------------
# A whole run on the synthetic objective (fake backend, fake clock)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root: Path = make_workspace(tmp_path_factory.mktemp("factorial") / "ws")
    harness = Harness(root)
    sched, _, ledger = harness.scheduler(FactorialProposer(seed=0), slots=8, max_experiments=60)
    out = sched.run(tag="t")
    assert sched.baseline is not None
    return {
        "experiments": ledger.experiments(out.run.id),
        "status": status_record(ledger, out.run, harness.clock.now()),
        "sigma": sched.baseline.sigma,
    }


def test_factorial_run_improves_and_finds_the_effects(synthetic_run: dict[str, Any]) -> None:
    st, exps = synthetic_run["status"], synthetic_run["experiments"]
    assert st["experiments"]["total"] == 60
    assert st["best"]["val_bpb"] < st["baseline"]["val_bpb"] - 0.02
    waves = {e.meta["wave"] for e in exps if "design" in e.meta}
    assert len(waves) >= 3
    assert any("combine" in e.meta for e in exps)
    # Later waves sit around better points (paths may overshoot), so the first wave is
    # the one that measures the slopes at the start.
    table = effects_from_experiments(exps, "val_bpb", synthetic_run["sigma"], wave=1)
    lr, width = table.get("LR"), table.get("WIDTH")
    # Up from the start (LR 0.01, WIDTH 64) towards the optimum (0.04, 256) lowers val_bpb.
    assert lr is not None and lr.estimate < 0 and lr.significant(0.01)
    assert width is not None and width.estimate < 0 and width.significant(0.01)


def test_no_slot_waits_for_a_wave(synthetic_run: dict[str, Any]) -> None:
    assert synthetic_run["status"]["busy_fraction"] > 0.9


def test_paths_go_past_the_inferred_range_but_never_past_set_bounds() -> None:
    def path_settings(overrides: dict[str, dict[str, object]]) -> list[dict[str, object]]:
        p = FactorialProposer(seed=2, overrides=overrides)
        ctx = contract_context(FILES)
        for i, pr in enumerate(p.propose(ctx, 16), start=1):
            d = pr.meta["design"]
            y = 1.0 - 0.02 * d["LR"] - 0.03 * d["WIDTH"] + 0.0001 * (i % 2)
            p.observe(_finished(i, dict(pr.meta), y))
        return [pr.meta["settings"] for pr in p.propose(ctx, 6) if "path" in pr.meta]

    free = path_settings({})
    # WIDTH 64: the inferred range stops at 256 (4×); a path may go 4× beyond that.
    assert max(int(s["WIDTH"]) for s in free) == 1024  # type: ignore[call-overload]
    capped = path_settings({"WIDTH": {"high": 256}})
    assert capped and max(int(s["WIDTH"]) for s in capped) == 256  # type: ignore[call-overload]


def _other(i: int, status: Status, **knobs: object) -> Experiment:
    """A finished candidate of another proposer (the swarm half of auto), at ``knobs``."""
    metrics = {} if status is Status.CRASH else {"val_bpb": 1.0}
    values = {"LR": 0.01, "WIDTH": 64, "DEPTH": 4, "WARMUP_RATIO": 0.1, "USE_BIAS": False}
    return _finished(
        i, {}, 1.0, proposer="swarm", status=status, metrics=metrics, knobs={**values, **knobs}
    )


def test_paths_and_waves_stop_short_of_a_crash_wall() -> None:
    def run(history: list[Experiment]) -> tuple[list[dict[str, object]], FactorialProposer]:
        p = FactorialProposer(seed=2)
        for e in history:
            p.observe(e)
        ctx = contract_context(FILES)
        for i, pr in enumerate(p.propose(ctx, 16), start=1):
            d = pr.meta["design"]
            y = 1.0 - 0.02 * d["LR"] - 0.03 * d["WIDTH"] + 0.0001 * (i % 2)
            p.observe(_finished(100 + i, dict(pr.meta), y))
        return [pr.meta["settings"] for pr in p.propose(ctx, 6) if "path" in pr.meta], p

    free, _ = run([])
    assert max(int(s["WIDTH"]) for s in free) == 1024  # type: ignore[call-overload]
    # Width 512 ran out of memory three times out of three; smaller widths ran fine.
    oom = [_other(i, Status.CRASH, WIDTH=512) for i in range(1, 4)]
    fine = [_other(i, Status.DISCARD, WIDTH=w) for i, w in enumerate((32, 128, 128, 256), 10)]
    walled, p = run(oom + fine)
    assert walled and max(int(s["WIDTH"]) for s in walled) == 256  # type: ignore[call-overload]
    assert p._walls(knobs_of(FILES)) == {"WIDTH": (-float("inf"), 512.0)}
    # The next wave centred on the path's ×4 point (WIDTH 256) has no level at 512.
    p.propose(contract_context(FILES), 16)
    assert all(v is None or int(v) < 512 for v in p.waves[2].levels.get("WIDTH", []))  # type: ignore[call-overload]
    # Two crashes are not yet a wall, and crashes that successes at the same width
    # outnumber are another knob's doing: neither stops the path.
    for history in (
        oom[:2] + fine,
        oom + fine + [_other(i, Status.KEEP, WIDTH=512) for i in (20, 21, 22, 23)],
    ):
        settings, _ = run(history)
        assert max(int(s["WIDTH"]) for s in settings) == 1024  # type: ignore[call-overload]
