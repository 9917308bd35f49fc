"""Fakes, synthetic workspaces and contract suites that every implementation must pass."""
