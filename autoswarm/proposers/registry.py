"""Strategy names → proposers (``--strategy`` and ``[run] strategy``).

greedy         autoresearch's policy: one knob change at a time from the best (alias: knobs)
random         random one- or two-knob perturbations around the best (a control)
factorial      waves of 2-level factorial designs with effect analysis
optuna         Optuna TPE (constant liar) over the knob space, batched ask/tell
optuna-cmaes   Optuna CMA-ES over the knob space
auto           the default: see ``AUTO`` below for what it picks and why
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoswarm.config import Config
from autoswarm.errors import ConfigError
from autoswarm.proposers.base import Proposer

# What `auto` resolves to. Chosen from the benchmark in docs/benchmarks.md.
AUTO = "greedy"


def make_proposer(cfg: Config, *, state_dir: Path | None = None) -> Proposer:
    """The proposer for ``cfg.run.strategy``; ``state_dir`` holds per-run state (Optuna's study)."""
    name = cfg.run.strategy
    if name == "auto":
        name = AUTO
    common: dict[str, Any] = {
        "exclude": cfg.knobs.exclude,
        "overrides": cfg.knobs.overrides,
        "seed": cfg.run.seed,
    }
    if name in ("greedy", "knobs"):
        from autoswarm.proposers.knobs import KnobProposer

        return KnobProposer(**common)
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
    raise ConfigError(f"unknown strategy {name!r}")


__all__ = ["AUTO", "make_proposer"]
