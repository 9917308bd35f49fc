"""Benchmarks: synthetic objectives, simulated search runs, real-process systems runs."""
