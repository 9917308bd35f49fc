"""A scripted backend on a fake clock: the whole loop in milliseconds, for tests and benchmarks.

Each submitted job's outcome comes from a function of the job (and the files of
its snapshot), so a test can say "this variant takes 300 s and scores 0.99, that
one crashes". ``poll`` jumps the fake clock to the next completion instead of
waiting, so hours of simulated research take milliseconds.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from autoswarm.clock import FakeClock
from autoswarm.types import Job, RunResult


@dataclass(frozen=True)
class Outcome:
    """What a fake job does: how long it runs, what it prints, how it ends."""

    duration: float
    metrics: dict[str, float] = field(default_factory=dict)
    exit_code: int = 0
    log: str = ""


class FakeBackend:
    """Implements :class:`~autoswarm.backends.base.Backend` against a :class:`FakeClock`."""

    def __init__(self, slots: int, clock: FakeClock, outcome: Callable[[Job], Outcome]) -> None:
        self.slots = slots
        self.clock = clock
        self.outcome = outcome
        self.submitted: list[Job] = []
        self.cancelled: list[tuple[int, str | None]] = []
        self._heap: list[tuple[float, int, Job, Outcome, float]] = []
        self._done: list[RunResult] = []
        self._seq = 0
        self.closed = False

    def capacity(self) -> int:
        return self.slots

    def submit(self, job: Job) -> str:
        busy = {j.slot for _, _, j, _, _ in self._heap}
        if job.slot in busy:
            raise AssertionError(f"slot {job.slot} is busy")
        self.submitted.append(job)
        out = self.outcome(job)
        start = self.clock.now()
        self._seq += 1
        end = start + min(out.duration, job.timeout_s)
        heapq.heappush(self._heap, (end, self._seq, job, out, start))
        return json.dumps({"fake": job.experiment_id})

    def poll(self, timeout: float) -> list[RunResult]:
        if self._done:
            done, self._done = self._done, []
            return done
        if not self._heap:
            self.clock.sleep(timeout)
            return []
        # Nothing can happen before the next completion: jump straight to it, whatever
        # the timeout (simulated hours then cost one loop turn per finished job).
        self.clock.advance_to(self._heap[0][0])
        results = []
        while self._heap and self._heap[0][0] <= self.clock.now():
            _, _, job, out, start = heapq.heappop(self._heap)
            results.append(self._result(job, out, start, self.clock.now(), cancelled=False))
        return results

    def cancel(self, experiment_id: int, handle: str | None = None) -> None:
        self.cancelled.append((experiment_id, handle))
        keep = []
        for item in self._heap:
            if item[2].experiment_id == experiment_id:
                self._done.append(
                    self._result(item[2], item[3], item[4], self.clock.now(), cancelled=True)
                )
            else:
                keep.append(item)
        self._heap = keep
        heapq.heapify(self._heap)

    def close(self) -> None:
        for item in list(self._heap):
            self.cancel(item[2].experiment_id)
        self.closed = True

    def _result(
        self, job: Job, out: Outcome, start: float, end: float, *, cancelled: bool
    ) -> RunResult:
        timed_out = out.duration > job.timeout_s and not cancelled
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        text = out.log
        if out.metrics and not cancelled and not timed_out:
            text += "\n---\n" + "".join(f"{k}: {v}\n" for k, v in out.metrics.items())
        job.log_path.write_text(text)
        return RunResult(
            experiment_id=job.experiment_id,
            exit_code=None if cancelled else (-9 if timed_out else out.exit_code),
            timed_out=timed_out,
            started_at=start,
            finished_at=end,
            log_path=job.log_path,
            metrics={} if (cancelled or timed_out) else dict(out.metrics),
            cancelled=cancelled,
        )


class ReattachableFakeBackend(FakeBackend):
    """A :class:`FakeBackend` whose jobs outlive the orchestrator (see ``Reattachable``).

    ``survivors`` maps an experiment id to ``(end_time, outcome)`` of a job an earlier
    process started and that still runs "remotely"; :meth:`reattach` adopts exactly those
    (with a handle this backend could have issued) and reports them through :meth:`poll`.
    """

    def __init__(
        self,
        slots: int,
        clock: FakeClock,
        outcome: Callable[[Job], Outcome],
        survivors: dict[int, tuple[float, Outcome]] | None = None,
    ) -> None:
        super().__init__(slots, clock, outcome)
        self.survivors = dict(survivors or {})
        self.reattached: list[Job] = []

    def reattach(self, job: Job, handle: str) -> bool:
        try:
            ours = json.loads(handle).get("fake") == job.experiment_id
        except (ValueError, AttributeError):
            ours = False
        if not ours or job.experiment_id not in self.survivors:
            return False
        if job.slot in {j.slot for _, _, j, _, _ in self._heap}:
            raise AssertionError(f"slot {job.slot} is busy")
        end, out = self.survivors.pop(job.experiment_id)
        self._seq += 1
        start = min(self.clock.now(), end - out.duration)
        heapq.heappush(self._heap, (end, self._seq, job, out, start))
        self.reattached.append(job)
        return True

    def still_running(self) -> dict[int, tuple[float, Outcome]]:
        """What runs now, as ``survivors`` for the next instance (this orchestrator "dies")."""
        return {job.experiment_id: (end, out) for end, _, job, out, _ in self._heap}


__all__ = ["FakeBackend", "Outcome", "ReattachableFakeBackend"]
