"""The swarm proposer (carried moves) and ``auto`` (factorial, then swarm)."""

from __future__ import annotations

import dataclasses

import pytest

from autoswarm.config import Config, RunConfig
from autoswarm.knobs import apply_values
from autoswarm.proposers.auto import AutoProposer
from autoswarm.proposers.base import Proposer, fingerprint
from autoswarm.proposers.factorial import FactorialProposer
from autoswarm.proposers.knobs import SwarmProposer
from autoswarm.proposers.registry import make_proposer
from autoswarm.testing.contract import ProposerContract, contract_context
from autoswarm.testing.synthetic import TRAIN_PY
from autoswarm.types import Evidence, Experiment, Kind, Status

FILES = {"train.py": TRAIN_PY}


class TestSwarmProposer(ProposerContract):
    def make_proposer(self) -> Proposer:
        return SwarmProposer(seed=0)

    def files(self) -> dict[str, str]:
        return FILES


class TestAutoProposer(ProposerContract):
    def make_proposer(self) -> Proposer:
        return make_proposer(Config(run=RunConfig(strategy="auto")))

    def files(self) -> dict[str, str]:
        return FILES


def _done(
    status: Status, changes: dict[str, list[object]], values: list[float], parent_value: float
) -> Experiment:
    return Experiment(
        id=7,
        run_id=1,
        kind=Kind.CANDIDATE,
        status=status,
        parent="0" * 40,
        commit="c" * 40,
        description="x",
        proposer="swarm",
        metrics={"val_bpb": values[0]},
        meta={"changes": changes, "parent_value": parent_value},
        evidence=Evidence.from_meta({"values": values}),
    )


def test_swarm_records_the_value_of_the_best_it_built_on() -> None:
    (prop,) = SwarmProposer(seed=0).propose(contract_context(FILES), 1)
    assert prop.meta["parent_value"] == 1.0


def test_a_discarded_move_that_beat_its_parent_is_carried_onto_the_new_best() -> None:
    p = SwarmProposer(seed=0)
    p.propose(contract_context(FILES), 2)
    # WIDTH 64 -> 128 measured 0.990 against its parent's 1.000 (σ 0.002: 5σ better),
    # but another move had already become the best, so the scheduler discarded it.
    p.observe(_done(Status.DISCARD, {"WIDTH": [64, 128]}, [0.990], 1.0))
    new_best = apply_values(FILES, {"LR": 0.015})
    (prop,) = p.propose(contract_context(new_best, commit="b" * 40), 1)
    assert prop.description == "WIDTH 64 -> 128"
    assert prop.meta["carried"] is True
    assert prop.parent == "b" * 40
    assert "LR = 0.015" in prop.files["train.py"]


def test_moves_within_the_noise_or_worse_are_not_carried() -> None:
    for value in (0.9995, 1.01):  # 0.25σ better; worse
        p = SwarmProposer(seed=0)
        p.observe(_done(Status.DISCARD, {"WIDTH": [64, 128]}, [value], 1.0))
        props = p.propose(contract_context(FILES, commit="b" * 40), 3)
        assert not any(pr.meta.get("carried") for pr in props)


def test_a_kept_move_is_not_carried_again() -> None:
    p = SwarmProposer(seed=0)
    p.observe(_done(Status.KEEP, {"WIDTH": [64, 128]}, [0.990], 1.0))
    props = p.propose(contract_context(FILES, commit="b" * 40), 3)
    assert not any(pr.meta.get("carried") for pr in props)


def test_auto_is_factorial_first_and_its_halves_keep_their_names() -> None:
    auto = make_proposer(Config(run=RunConfig(strategy="auto")))
    assert isinstance(auto, AutoProposer)
    props = auto.propose(contract_context(FILES), 4)
    assert len(props) == 4
    assert {p.proposer for p in props} == {"factorial"}


class _Dry(FactorialProposer):
    """A factorial proposer whose designs are used up."""

    def propose(self, ctx, n):  # type: ignore[no-untyped-def]
        self._dry = True
        return []


def test_auto_fills_the_slots_a_dry_primary_leaves_without_repeats() -> None:
    auto = AutoProposer(_Dry(random_fill=False), SwarmProposer(seed=1))
    ctx = contract_context(FILES)
    props = auto.propose(ctx, 5)
    assert len(props) == 5 and {p.proposer for p in props} == {"swarm"}
    fps = {fingerprint({**FILES, **p.files}) for p in props}
    assert len(fps) == 5
    assert not auto.exhausted


def test_auto_fallback_skips_what_the_primary_just_proposed() -> None:
    primary = FactorialProposer(seed=3, random_fill=False)
    auto = AutoProposer(primary, SwarmProposer(seed=3))
    ctx = contract_context(FILES)
    props = auto.propose(ctx, 40)  # more than one wave: the swarm fills the rest
    fps = [fingerprint({**FILES, **p.files}) for p in props]
    assert len(fps) == len(set(fps))
    ctx2 = dataclasses.replace(ctx, seen=frozenset(fps))
    again = auto.propose(ctx2, 5)
    assert not {fingerprint({**FILES, **p.files}) for p in again} & set(fps)


def _verdict(i: int, proposer: str, status: Status) -> Experiment:
    return Experiment(
        id=i,
        run_id=1,
        kind=Kind.CANDIDATE,
        status=status,
        parent="0" * 40,
        commit=f"{i:040d}",
        description="x",
        proposer=proposer,
        metrics={"val_bpb": 1.0},
    )


def test_a_stalled_primary_hands_most_slots_to_the_fallback_until_it_keeps_again() -> None:
    auto = AutoProposer(FactorialProposer(seed=4, random_fill=False), SwarmProposer(seed=4))
    ctx = contract_context(FILES)
    assert {p.proposer for p in auto.propose(ctx, 8)} == {"factorial"}
    # patience 2 × 8 slots: fifteen fruitless factorial results are not yet a stall ...
    for i in range(15):
        auto.observe(_verdict(100 + i, "factorial", Status.DISCARD if i % 3 else Status.CRASH))
    assert not auto.stalled
    # ... the sixteenth is; the fallback's results do not count either way.
    auto.observe(_verdict(200, "swarm", Status.KEEP))
    auto.observe(_verdict(201, "factorial", Status.DISCARD))
    assert auto.stalled
    props = auto.propose(ctx, 8)
    assert [p.proposer for p in props].count("factorial") == 2  # a quarter of the slots
    assert [p.proposer for p in props].count("swarm") == 6
    # A keep of the primary ends the stall.
    auto.observe(_verdict(202, "factorial", Status.KEEP))
    assert not auto.stalled
    assert {p.proposer for p in auto.propose(ctx, 8)} == {"factorial"}


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_on_few_slots_a_stalled_primary_still_gets_one_slot_in_turn(slots: int) -> None:
    """With three slots or fewer a stalled primary got n // 4 = 0 slots forever, so only
    a keep it could no longer propose would have ended the stall (the README's demo)."""
    auto = AutoProposer(FactorialProposer(seed=4, random_fill=False), SwarmProposer(seed=4))
    ctx = contract_context(FILES)
    auto.propose(ctx, slots)
    for i in range(int(auto.patience * 4)):
        auto.observe(_verdict(100 + i, "factorial", Status.DISCARD))
    assert auto.stalled
    names = [p.proposer for _ in range(8) for p in auto.propose(ctx, slots)]
    assert names.count("factorial") == len(names) // 4 and names.count("swarm") > 0
    first = names.index("factorial")
    assert first < 4  # within the first four slots handed out
    auto.observe(_verdict(300, "factorial", Status.KEEP))
    assert not auto.stalled and {p.proposer for p in auto.propose(ctx, slots)} == {"factorial"}
