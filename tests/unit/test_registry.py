"""The strategy registry: the one list that config, ``--strategy``'s help and the bench read."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from autoswarm.config import (
    KNOB_STRATEGIES,
    STRATEGIES,
    AgentConfig,
    Config,
    LLMConfig,
    RunConfig,
    load_config,
    with_overrides,
)
from autoswarm.errors import ConfigError
from autoswarm.proposers.base import Proposer
from autoswarm.proposers.registry import HYBRID_KNOB_STRATEGIES, REGISTRY, make_proposer
from autoswarm.testing.contract import contract_context
from autoswarm.testing.synthetic import TRAIN_PY, make_workspace


def test_the_config_validates_against_the_registry() -> None:
    assert tuple(REGISTRY) == STRATEGIES
    assert tuple(n for n, s in REGISTRY.items() if s.knobs) == KNOB_STRATEGIES
    assert set(HYBRID_KNOB_STRATEGIES) <= set(KNOB_STRATEGIES)
    for name, entry in REGISTRY.items():
        assert entry.name == name and entry.summary and "\n" not in entry.summary


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_strategy_builds_a_proposer(name: str, tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    cfg = load_config(root).model_copy(
        update={
            # What the strategies that need one name: a model (no key: a local server), an agent.
            "llm": LLMConfig(
                provider="openai", model="m", base_url="http://127.0.0.1:9", api_key_env=""
            ),
            "agent": AgentConfig(command=("true", "{prompt}")),
        }
    )
    cfg = with_overrides(cfg, strategy=name)
    p = make_proposer(cfg, state_dir=root / ".autoswarm")
    try:
        assert isinstance(p, Proposer)
    finally:
        p.close()


@pytest.mark.parametrize("name", KNOB_STRATEGIES)
def test_a_knob_strategy_proposes_without_a_workspace(name: str) -> None:
    """What `autoswarm bench search` relies on: no workspace, no model, no key."""
    p = make_proposer(Config(run=RunConfig(strategy=name)), state_dir=None)
    try:
        assert p.propose(contract_context({"train.py": TRAIN_PY}), 2)
    finally:
        p.close()


@pytest.mark.parametrize("name", ["agent", "external"])
def test_a_strategy_that_needs_a_workspace_says_so(name: str) -> None:
    # (the agent strategy's config needs its command: the schema checks that first)
    agent = AgentConfig(command=("true", "{prompt}"))
    with pytest.raises(ConfigError, match="needs a workspace"):
        make_proposer(Config(run=RunConfig(strategy=name), agent=agent), state_dir=None)


def _option_help(command: list[str], name: str) -> str:
    from autoswarm.cli import app

    cmd = typer.main.get_command(app)
    for part in command:
        cmd = cmd.commands[part]  # type: ignore[attr-defined]
    return str(next(p for p in cmd.params if p.name == name).help)


def test_run_help_lists_every_registered_strategy() -> None:
    from autoswarm.cli import app

    listed = _option_help(["run"], "strategy").rsplit(":", 1)[1].rstrip(".").split(",")
    assert [n.strip() for n in listed] == list(REGISTRY)
    # Below the options, one line per strategy with its summary.
    out = " ".join(CliRunner().invoke(app, ["run", "--help"]).output.split())
    for name, entry in REGISTRY.items():
        assert f"{name}: {' '.join(entry.summary.split())}" in out, name


def test_bench_help_lists_the_strategies_each_command_takes() -> None:
    listed = _option_help(["bench", "search"], "strategies").rsplit(":", 1)[1].rstrip(".")
    assert [n.strip() for n in listed.split(",")] == list(KNOB_STRATEGIES)
    assert "--strategy" in _option_help(["bench", "real"], "strategies")
