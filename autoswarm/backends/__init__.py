"""Backends decide *how* a job runs: local processes, Ray tasks, SkyPilot clusters."""

from autoswarm.backends.base import Backend

__all__ = ["Backend"]
