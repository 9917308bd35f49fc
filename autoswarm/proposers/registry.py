"""Strategy names → proposers. ``auto`` picks the best built-in for the job."""

from __future__ import annotations

from autoswarm.config import Config
from autoswarm.errors import ConfigError
from autoswarm.proposers.base import Proposer
from autoswarm.proposers.knobs import KnobProposer


def make_proposer(cfg: Config) -> Proposer:
    """The proposer for ``cfg.run.strategy``."""
    name = cfg.run.strategy
    if name in ("auto", "knobs"):
        return KnobProposer(
            exclude=cfg.knobs.exclude, overrides=cfg.knobs.overrides, seed=cfg.run.seed
        )
    raise ConfigError(f"unknown strategy {name!r}")


__all__ = ["make_proposer"]
