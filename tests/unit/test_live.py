"""The live view renders the scheduler's snapshot: slots, what each runs, progress, best."""

from __future__ import annotations

import io

from rich.console import Console

from autoswarm.proposers.knobs import KnobProposer
from autoswarm.report.live import print_event_lines, render
from tests.conftest import Harness


def test_live_view_shows_slots_progress_and_best(harness: Harness) -> None:
    sched, backend, _ = harness.scheduler(KnobProposer(seed=0), slots=2, max_experiments=9)
    frames: list[str] = []
    original = backend.poll

    def poll(timeout: float):  # render a frame while experiments are in flight
        if sched.snapshot().slots[0] is not None:
            console = Console(file=io.StringIO(), width=120)
            console.print(render(sched.snapshot(), "val_bpb"))
            frames.append(console.file.getvalue())  # type: ignore[attr-defined]
        return original(timeout)

    backend.poll = poll  # type: ignore[method-assign]
    sched.run(tag="t")
    first, last = frames[0], frames[-1]
    assert "run t" in first and "slot" in first and "baseline" in first
    assert "waiting for the baseline" in first
    assert "best val_bpb:" in last and "σ=" in last and "of 9" not in last
    assert "max 9" in last and "#" in last


def test_event_lines_print_each_experiment_once(harness: Harness) -> None:
    sched, _, _ = harness.scheduler(KnobProposer(seed=0), slots=2, max_experiments=6)
    buf = io.StringIO()
    sched.on_change = print_event_lines(sched, Console(file=buf, width=200))
    sched.run(tag="t")
    lines = buf.getvalue().splitlines()
    starts = [ln for ln in lines if ln.startswith("start")]
    ends = [ln for ln in lines if not ln.startswith("start")]
    assert len(starts) == 6 and len(ends) == 6
    assert sum("baseline" in ln for ln in ends) == 3
