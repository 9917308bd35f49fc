"""Proposers decide *what* to try next."""

from autoswarm.proposers.base import Context, Proposer

__all__ = ["Context", "Proposer"]
