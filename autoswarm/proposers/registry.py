"""Strategy names → proposers (``--strategy`` and ``[run] strategy``).

greedy         autoresearch's policy: one knob change at a time from the best (alias: knobs)
swarm          greedy for many slots: parallel one-knob moves, good moves carried onto each new best
random         random one- or two-knob perturbations around the best (a control)
factorial      waves of 2-level factorial designs with effect analysis
optuna         Optuna TPE (constant liar) over the knob space, batched ask/tell
optuna-cmaes   Optuna CMA-ES over the knob space
llm            a language model edits the code ([llm]: provider, model, key variable)
hybrid         llm (or [llm] hybrid_code = "agent": agent) code edits and a knob search ([llm] hybrid_knobs) share the slots by [llm] hybrid_ratio
agent          a coding-agent CLI edits a scratch copy ([agent]: command template, timeout)
external       runs what an outside agent queues with `autoswarm submit`
auto           the default: see ``AUTO`` below for what it picks and why
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoswarm.config import Config
from autoswarm.errors import ConfigError
from autoswarm.proposers.base import Proposer

# What `auto` is made of (see autoswarm/proposers/auto.py and docs/benchmarks.md).
AUTO = "factorial, then swarm when the waves run dry"


def make_proposer(cfg: Config, *, state_dir: Path | None = None) -> Proposer:
    """The proposer for ``cfg.run.strategy``; ``state_dir`` holds per-run state (Optuna's study)."""
    name = cfg.run.strategy
    common: dict[str, Any] = {
        "exclude": cfg.knobs.exclude,
        "overrides": cfg.knobs.overrides,
        "seed": cfg.run.seed,
    }
    if name == "auto":
        from autoswarm.proposers.auto import AutoProposer
        from autoswarm.proposers.factorial import FactorialProposer
        from autoswarm.proposers.knobs import SwarmProposer

        return AutoProposer(FactorialProposer(**common, random_fill=False), SwarmProposer(**common))
    if name in ("greedy", "knobs"):
        from autoswarm.proposers.knobs import KnobProposer

        return KnobProposer(**common)
    if name == "swarm":
        from autoswarm.proposers.knobs import SwarmProposer

        return SwarmProposer(**common)
    if name == "random":
        from autoswarm.proposers.knobs import RandomProposer

        return RandomProposer(**common)
    if name == "factorial":
        from autoswarm.proposers.factorial import FactorialProposer

        return FactorialProposer(**common)
    if name in ("optuna", "optuna-cmaes"):
        from autoswarm.proposers.optuna import OptunaProposer

        sampler = "cmaes" if name == "optuna-cmaes" else "tpe"
        return OptunaProposer(**common, sampler=sampler, storage_dir=state_dir)
    if name == "llm":
        from autoswarm.proposers.llm import LLMProposer

        # state_dir is <workspace>/.autoswarm: program.md sits in the workspace root.
        return LLMProposer.from_config(cfg, workspace=state_dir.parent if state_dir else None)
    if name == "hybrid":
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
    if name in ("agent", "external") and state_dir is None:
        raise ConfigError(f"strategy {name!r} needs a workspace (its .autoswarm directory)")
    if name == "agent":
        from autoswarm.proposers.agent import agent_from_config

        assert state_dir is not None
        return agent_from_config(cfg, workspace=state_dir.parent)
    if name == "external":
        from autoswarm.proposers.external import ExternalProposer
        from autoswarm.workspace import LEDGER_NAME

        assert state_dir is not None
        return ExternalProposer(state_dir / LEDGER_NAME)
    raise ConfigError(f"unknown strategy {name!r}")


__all__ = ["AUTO", "make_proposer"]
