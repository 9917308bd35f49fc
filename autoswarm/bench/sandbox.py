"""The sandbox's cost: how much longer an experiment takes to start inside bubblewrap.

``autoswarm bench sandbox`` starts the same short command through the product's process
runner (:mod:`autoswarm.process`) with and without the run's sandbox, alternating the two
so that load on the machine falls on both alike, and reports the wall time of each,
start to exit (medians and 95th percentiles). Two commands: an interpreter that does
nothing (the floor) and the cpu template's imports (``import torch``: the interpreter's
and the libraries' files are read through the sandbox's mounts).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autoswarm.process import ProcessRunner, ProcessSpec
from autoswarm.sandbox import experiment_view, find_bwrap

COMMANDS = {
    "python -c pass": "pass",
    "python -c 'import torch'": "import torch",
}


@dataclass(frozen=True)
class SandboxCost:
    command: str
    runs: int
    plain_median_s: float
    plain_p95_s: float
    sandboxed_median_s: float
    sandboxed_p95_s: float

    @property
    def overhead_s(self) -> float:
        return self.sandboxed_median_s - self.plain_median_s


def _p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]


def measure(runs: int = 20, commands: dict[str, str] | None = None) -> list[SandboxCost]:
    """``runs`` starts of each command, plain and sandboxed, alternating."""
    if find_bwrap()[0] is None:
        raise RuntimeError(find_bwrap()[1])
    out = []
    with tempfile.TemporaryDirectory() as tmp, ProcessRunner() as runner:
        ws = Path(tmp) / "ws"
        run = ws / ".autoswarm" / "runs" / "00001"
        run.mkdir(parents=True)
        view = experiment_view(workspace=ws, state_dir=ws / ".autoswarm").with_writable(run)
        for label, code in (commands or COMMANDS).items():
            times: dict[bool, list[float]] = {False: [], True: []}
            for i in range(2 * runs + 2):  # the first pair warms the page cache
                boxed = i % 2 == 1
                res = runner.run(
                    ProcessSpec(
                        argv=(sys.executable, "-c", code),
                        cwd=run,
                        env={"PATH": "/usr/bin:/bin"},
                        log_path=Path(tmp) / "bench.log",
                        sandbox=view if boxed else None,
                    )
                )
                if res.exit_code != 0:
                    raise RuntimeError(f"{label} failed: {(Path(tmp) / 'bench.log').read_text()}")
                if i >= 2:
                    times[boxed].append(res.duration_s)
            out.append(
                SandboxCost(
                    command=label,
                    runs=runs,
                    plain_median_s=statistics.median(times[False]),
                    plain_p95_s=_p95(times[False]),
                    sandboxed_median_s=statistics.median(times[True]),
                    sandboxed_p95_s=_p95(times[True]),
                )
            )
    return out


def markdown(rows: list[SandboxCost]) -> str:
    lines = [
        "| command | runs | plain median (s) | plain p95 (s) | sandboxed median (s) "
        "| sandboxed p95 (s) | cost per start (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r.command}` | {r.runs} | {r.plain_median_s:.3f} | {r.plain_p95_s:.3f} | "
            f"{r.sandboxed_median_s:.3f} | {r.sandboxed_p95_s:.3f} | {r.overhead_s:+.3f} |"
        )
    return "\n".join(lines) + "\n"


__all__ = ["COMMANDS", "SandboxCost", "markdown", "measure"]
