"""The real-run comparison's arithmetic (the runs themselves are documented in docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoswarm.bench.real import markdown, summarize_run


def _row(i: int, kind: str, status: str, value: float, t: float, **meta: Any) -> dict[str, Any]:
    return {
        "id": i,
        "kind": kind,
        "status": status,
        "metrics": {"val_bpb": value},
        "started_at": t - 60,
        "finished_at": t,
        "meta": meta,
    }


def _status(best: float, n: int) -> dict[str, Any]:
    return {
        "metric": "val_bpb",
        "baseline": {"val_bpb": 2.0},
        "best": {"val_bpb": best, "description": "X 1 -> 2"},
        "noise_sigma": 0.02,
        "elapsed_s": 1200.0,
        "experiments_per_hour": 100.0,
        "busy_fraction": 0.99,
        "experiments": {"total": n, "crash": 1},
    }


def test_trace_follows_kept_means_and_time_to_target() -> None:
    rows = [
        _row(1, "baseline", "keep", 2.0, 1060.0),
        _row(2, "baseline", "keep", 2.0, 1060.0),
        _row(3, "candidate", "keep", 1.9, 1300.0, kept_at=1400.0, evidence={"mean": 1.91}),
        _row(4, "candidate", "discard", 1.95, 1500.0),
        _row(5, "candidate", "keep", 1.8, 1700.0, kept_at=1800.0),
    ]
    r = summarize_run("auto", Path("ws"), "t", _status(1.8, 5), rows)
    assert r.trace == ((60.0, 2.0), (400.0, 1.91), (800.0, 1.8))
    assert r.keeps == 2 and r.crashes == 1
    assert r.time_to(1.91) == 400.0
    assert r.time_to(1.85) == 800.0
    assert r.time_to(1.7) is None


def test_markdown_times_every_run_to_the_reference_best() -> None:
    rows = [
        _row(1, "baseline", "keep", 2.0, 1060.0),
        _row(3, "candidate", "keep", 1.9, 1300.0, kept_at=1300.0),
    ]
    ref = summarize_run("greedy", Path("g"), "t", _status(1.9, 2), rows)
    fast = summarize_run("auto", Path("a"), "t", _status(1.9, 2), rows[:1])
    table = markdown([fast, ref], reference="greedy")
    lines = table.splitlines()
    assert lines[0].startswith("| strategy |") and "time to greedy's best" in lines[0]
    assert "| auto |" in lines[2] and "| — |" in lines[2]  # never reached 1.9
    assert "| greedy |" in lines[3] and "| 5.0 |" in lines[3]  # 300 s after the start
    assert "5.00%" in lines[3]
