"""The one list of strategies: name → a line on what it does, and how its proposer is built.

Everything that names strategies reads :data:`REGISTRY`: the validation of ``[run]
strategy`` and ``[llm] hybrid_knobs`` (:mod:`autoswarm.config`), the help of
``autoswarm run --strategy`` and of ``autoswarm bench`` (:mod:`autoswarm.cli`), the
simulated benchmark's choice of strategies (those with ``knobs=True``) and
:func:`make_proposer`. A new strategy is one :class:`Strategy` entry below.

Each builder imports its proposer when called, so importing this module stays cheap:
the config imports it to check names and must not pull in Optuna or an LLM SDK.

Usage::

    from autoswarm.proposers.registry import make_proposer
    proposer = make_proposer(cfg, state_dir=ws.state_dir)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoswarm.errors import ConfigError
from autoswarm.proposers.base import Proposer

if TYPE_CHECKING:
    from autoswarm.config import Config

# What `auto` is made of (see autoswarm/proposers/auto.py and docs/benchmarks.md).
AUTO = "factorial, then swarm when the waves run dry"

# (config, the run's state directory or None) -> proposer
Builder = Callable[["Config", Path | None], Proposer]


@dataclass(frozen=True, kw_only=True)
class Strategy:
    """One strategy of ``--strategy`` / ``[run] strategy``.

    Attributes:
        name: what ``--strategy`` and ``[run] strategy`` say.
        summary: one line for ``--strategy``'s help.
        build: makes its proposer from the config (and the run's state directory).
        knobs: searches the knobs alone (no language model, agent or key), so the
            simulated benchmark (``autoswarm bench search``) can run it.
        hybrid_knobs: may be the knob half of ``hybrid`` (``[llm] hybrid_knobs``).
        needs_workspace: builds only with the run's state directory (its workspace).
    """

    name: str
    summary: str
    build: Builder
    knobs: bool = False
    hybrid_knobs: bool = False
    needs_workspace: bool = False


# ---------------------------------------------------------------------------
# Builders


def _common(cfg: Config) -> dict[str, Any]:
    """The settings every knob proposer takes."""
    return {"exclude": cfg.knobs.exclude, "overrides": cfg.knobs.overrides, "seed": cfg.run.seed}


def _auto(cfg: Config, state_dir: Path | None) -> Proposer:
    from autoswarm.proposers.auto import AutoProposer
    from autoswarm.proposers.factorial import FactorialProposer
    from autoswarm.proposers.knobs import SwarmProposer

    common = _common(cfg)
    return AutoProposer(FactorialProposer(**common, random_fill=False), SwarmProposer(**common))


def _greedy(cfg: Config, state_dir: Path | None) -> Proposer:
    from autoswarm.proposers.knobs import KnobProposer

    return KnobProposer(**_common(cfg))


def _swarm(cfg: Config, state_dir: Path | None) -> Proposer:
    from autoswarm.proposers.knobs import SwarmProposer

    return SwarmProposer(**_common(cfg))


def _random(cfg: Config, state_dir: Path | None) -> Proposer:
    from autoswarm.proposers.knobs import RandomProposer

    return RandomProposer(**_common(cfg))


def _factorial(cfg: Config, state_dir: Path | None) -> Proposer:
    from autoswarm.proposers.factorial import FactorialProposer

    return FactorialProposer(**_common(cfg))


def _optuna(sampler: str) -> Builder:
    def build(cfg: Config, state_dir: Path | None) -> Proposer:
        from autoswarm.proposers.optuna import OptunaProposer

        return OptunaProposer(**_common(cfg), sampler=sampler, storage_dir=state_dir)

    return build


def _llm(cfg: Config, state_dir: Path | None) -> Proposer:
    from autoswarm.proposers.llm import LLMProposer

    # state_dir is <workspace>/.autoswarm: program.md sits in the workspace root.
    return LLMProposer.from_config(cfg, workspace=state_dir.parent if state_dir else None)


def _hybrid(cfg: Config, state_dir: Path | None) -> Proposer:
    from autoswarm.proposers.hybrid import HybridProposer
    from autoswarm.proposers.llm import LLMProposer

    knob_cfg = cfg.model_copy(
        update={"run": cfg.run.model_copy(update={"strategy": cfg.llm.hybrid_knobs})}
    )
    code: Proposer
    if cfg.llm.hybrid_code == "agent":
        from autoswarm.proposers.agent import agent_from_config

        if state_dir is None:
            raise ConfigError("strategy 'hybrid' with an agent needs a workspace")
        code = agent_from_config(cfg, workspace=state_dir.parent)
    else:
        code = LLMProposer.from_config(cfg, workspace=state_dir.parent if state_dir else None)
    return HybridProposer(
        code,
        make_proposer(knob_cfg, state_dir=state_dir),
        ratio=cfg.llm.hybrid_ratio,
    )


def _agent(cfg: Config, state_dir: Path | None) -> Proposer:
    from autoswarm.proposers.agent import agent_from_config

    assert state_dir is not None  # needs_workspace: make_proposer checked
    return agent_from_config(cfg, workspace=state_dir.parent)


def _external(cfg: Config, state_dir: Path | None) -> Proposer:
    from autoswarm.proposers.external import ExternalProposer
    from autoswarm.workspace import LEDGER_NAME

    assert state_dir is not None  # needs_workspace: make_proposer checked
    return ExternalProposer(state_dir / LEDGER_NAME)


# ---------------------------------------------------------------------------
# The registry (in the order error messages and help list them)

_ENTRIES = (
    Strategy(
        name="auto",
        summary=f"the default: {AUTO} (see autoswarm/proposers/auto.py)",
        build=_auto,
        knobs=True,
        hybrid_knobs=True,
    ),
    Strategy(
        name="greedy",
        summary="autoresearch's policy: one knob change at a time from the best",
        build=_greedy,
        knobs=True,
        hybrid_knobs=True,
    ),
    Strategy(
        name="knobs",
        summary="another name for greedy",
        build=_greedy,
        knobs=True,
        hybrid_knobs=True,
    ),
    Strategy(
        name="swarm",
        summary="greedy for many slots: parallel one-knob moves, good moves carried onto "
        "each new best",
        build=_swarm,
        knobs=True,
        hybrid_knobs=True,
    ),
    Strategy(
        name="random",
        summary="random one- or two-knob perturbations around the best (a control)",
        build=_random,
        knobs=True,
        hybrid_knobs=True,
    ),
    Strategy(
        name="factorial",
        summary="waves of 2-level factorial designs with effect analysis",
        build=_factorial,
        knobs=True,
        hybrid_knobs=True,
    ),
    Strategy(
        name="optuna",
        summary="Optuna TPE (constant liar) over the knob space, batched ask/tell",
        build=_optuna("tpe"),
        knobs=True,
    ),
    Strategy(
        name="optuna-cmaes",
        summary="Optuna CMA-ES over the knob space",
        build=_optuna("cmaes"),
        knobs=True,
    ),
    Strategy(
        name="llm",
        summary="a language model edits the code ([llm]: provider, model, key variable)",
        build=_llm,
    ),
    Strategy(
        name="hybrid",
        summary="code edits by llm (or by agent, [llm] hybrid_code) and a knob search "
        "([llm] hybrid_knobs) share the slots by [llm] hybrid_ratio",
        build=_hybrid,
    ),
    Strategy(
        name="agent",
        summary="a coding-agent CLI edits a scratch copy ([agent]: command template, timeout)",
        build=_agent,
        needs_workspace=True,
    ),
    Strategy(
        name="external",
        summary="runs what an outside agent queues with `autoswarm submit`",
        build=_external,
        needs_workspace=True,
    ),
)
REGISTRY: dict[str, Strategy] = {s.name: s for s in _ENTRIES}

STRATEGIES: tuple[str, ...] = tuple(REGISTRY)
# Strategies that search the knobs alone: no language model, no agent, no key.
KNOB_STRATEGIES: tuple[str, ...] = tuple(s.name for s in _ENTRIES if s.knobs)
# What [llm] hybrid_knobs may name.
HYBRID_KNOB_STRATEGIES: tuple[str, ...] = tuple(s.name for s in _ENTRIES if s.hybrid_knobs)


def make_proposer(cfg: Config, *, state_dir: Path | None = None) -> Proposer:
    """The proposer for ``cfg.run.strategy``; ``state_dir`` holds per-run state (Optuna's study).

    Raises:
        ConfigError: the strategy is unknown, or needs a workspace and ``state_dir`` is None.
    """
    name = cfg.run.strategy
    entry = REGISTRY.get(name)
    if entry is None:
        raise ConfigError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    if entry.needs_workspace and state_dir is None:
        raise ConfigError(f"strategy {name!r} needs a workspace (its .autoswarm directory)")
    return entry.build(cfg, state_dir)


__all__ = [
    "AUTO",
    "HYBRID_KNOB_STRATEGIES",
    "KNOB_STRATEGIES",
    "REGISTRY",
    "STRATEGIES",
    "Strategy",
    "make_proposer",
]
