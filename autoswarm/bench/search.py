"""``autoswarm bench search``: which simulated runs, run in worker processes, and their table.

A :class:`SearchPlan` is every (objective, strategy, slots, repetition) to simulate
(:func:`autoswarm.bench.simulate.simulate`); it always starts with greedy on one
slot, the sequential reference every table is measured against
(:mod:`autoswarm.bench.report`). The simulations are independent, so ``jobs`` worker
processes share them; the results are the same for any number of jobs.

Usage::

    plan = search_plan(objectives="bowl", strategies="auto", slots="4", extra="auto@64")
    results = run(plan)
    print(render(plan, results))
"""

from __future__ import annotations

import pickle
import re
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from autoswarm.bench import options
from autoswarm.bench.objectives import NOISE_OBJECTIVES, OBJECTIVES, SEARCH_OBJECTIVES
from autoswarm.bench.report import markdown_table, noise_table, plot, summarize, summarize_noise
from autoswarm.bench.simulate import SimResult, simulate
from autoswarm.proposers.registry import KNOB_STRATEGIES

# The sequential reference (autoresearch's loop): every plan runs it.
REFERENCE = ("greedy", 1)
# main: speedup and GPU-hours to the first time the target was reached; noise: reported
# best against its true value, false keeps, time to a target still held at the end.
TABLES = ("main", "noise")


@dataclass(frozen=True, kw_only=True)
class SearchPlan:
    """What one ``autoswarm bench search`` simulates, and where its table goes."""

    objectives: tuple[str, ...]
    settings: tuple[tuple[str, int], ...]  # (strategy, slots), the reference first, no repeats
    reps: int
    horizon_s: float  # simulated wall-clock per run
    budget_s: float  # training seconds per experiment
    table: str  # one of TABLES
    section: str  # the block of the markdown file the table replaces
    jobs: int = 1  # worker processes

    def tasks(self) -> list[tuple[str, str, int, int]]:
        """(objective, strategy, slots, repetition) of every run, in the order they are reported."""
        return [
            (obj, strat, n, rep)
            for obj in self.objectives
            for rep in range(self.reps)
            for strat, n in self.settings
        ]


def search_plan(
    *,
    objectives: str = "",
    strategies: str = options.DEFAULT_STRATEGIES,
    slots: str = "1,4,16",
    extra: str = "",
    reps: int = 3,
    hours: float = 8.0,
    budget: float = 300.0,
    jobs: int = 1,
    section: str = "search",
    table: str = "main",
) -> SearchPlan:
    """The plan for these option values (as typed), or a ValueError saying which is wrong."""
    slot_counts = options.counts("--slots", slots)
    names = options.strategies(strategies, knobs=True)
    options.positive(("--hours", hours), ("--budget", budget))
    options.at_least_one(("--reps", reps), ("--jobs", jobs))
    if not re.fullmatch(r"[a-z0-9-]+", section):
        raise ValueError(f"--section {section!r}: use lower-case letters, digits, '-'")
    if table not in TABLES:
        raise ValueError(f"--table {table!r}: use 'main' or 'noise'")
    settings = [REFERENCE] + [(st, n) for n in slot_counts for st in names]
    for item in options.csv(extra):
        strat, _, at = item.partition("@")
        if strat not in KNOB_STRATEGIES or not at.isdigit() or int(at) < 1:
            raise ValueError(
                f"--extra {item!r}: write STRATEGY@SLOTS with a knob strategy "
                f"({', '.join(KNOB_STRATEGIES)}) and at least one slot, e.g. auto@64"
            )
        settings.append((strat, int(at)))
    chosen = options.csv(objectives) or list(
        NOISE_OBJECTIVES if table == "noise" else SEARCH_OBJECTIVES
    )
    for name in chosen:
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return SearchPlan(
        objectives=tuple(chosen),
        settings=tuple(dict.fromkeys(settings)),
        reps=reps,
        horizon_s=hours * 3600,
        budget_s=budget,
        table=table,
        section=section,
        jobs=jobs,
    )


# ---------------------------------------------------------------------------
# Running and reporting


def code_version() -> str:
    """The commit of the product code simulated (``+dirty`` with uncommitted changes), or ""."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return ""
    return head + ("+dirty" if dirty else "") if head else ""


def _key(plan: SearchPlan, task: tuple[str, str, int, int], version: str) -> tuple[object, ...]:
    return (*task, plan.horizon_s, plan.budget_s, version)


def kept_results(path: Path, version: str) -> dict[tuple[object, ...], SimResult]:
    """The simulations a ``--keep`` file holds for this code version (others are ignored)."""
    found: dict[tuple[object, ...], SimResult] = {}
    if not path.exists():
        return found
    with path.open("rb") as f:
        while True:
            try:
                key, result = pickle.load(f)
            except EOFError:
                break
            except (pickle.UnpicklingError, ValueError, AttributeError):
                break  # a write cut short by a kill: what follows it is lost
            if key[-1] == version:
                found[key] = result
    return found


def run(
    plan: SearchPlan,
    on_result: Callable[[SimResult], None] | None = None,
    keep: Path | None = None,
) -> list[SimResult]:
    """Every run of ``plan`` in ``plan.jobs`` processes; ``on_result`` sees each, in plan order.

    With ``keep``, each simulation is appended to that file as it finishes, and one the file
    already holds for the same code version (:func:`code_version`) is not run again, so a
    long benchmark that was stopped continues where it was.
    """
    version = code_version() if keep is not None else ""
    done = kept_results(keep, version) if keep is not None else {}
    tasks = plan.tasks()
    results: list[SimResult] = []
    with ProcessPoolExecutor(max_workers=max(1, plan.jobs)) as pool:
        futures = {
            i: pool.submit(
                simulate,
                OBJECTIVES[obj],
                strat,
                n,
                rep=rep,
                horizon_s=plan.horizon_s,
                budget_s=plan.budget_s,
            )
            for i, (obj, strat, n, rep) in enumerate(tasks)
            if _key(plan, (obj, strat, n, rep), version) not in done
        }
        if keep is not None:
            lock = threading.Lock()

            def kept(key: tuple[object, ...]) -> Callable[[Future[SimResult]], None]:
                def write(fut: Future[SimResult]) -> None:
                    if fut.exception() is None:  # as soon as it finishes, in any order
                        with lock, keep.open("ab") as f:
                            pickle.dump((key, fut.result()), f)

                return write

            for i, fut in futures.items():
                fut.add_done_callback(kept(_key(plan, tasks[i], version)))
        for i, task in enumerate(tasks):
            r = futures[i].result() if i in futures else done[_key(plan, task, version)]
            results.append(r)
            if on_result is not None:
                on_result(r)
    return results


def progress(r: SimResult) -> str:
    """One line per finished simulation (the command prints it to stderr)."""
    return (
        f"{r.objective:7} {r.strategy:10} ×{r.slots:<3} rep {r.rep}: {r.experiments:5} "
        f"experiments, true best {r.best_true:.4f}, {r.false_keeps}/{r.keeps} keeps "
        f"false (simulated in {r.real_seconds:.1f}s)"
    )


def render(plan: SearchPlan, results: list[SimResult]) -> str:
    """The plan's markdown table of ``results``."""
    if plan.table == "noise":
        return noise_table(summarize_noise(results))
    return markdown_table(summarize(results))


def write(plan: SearchPlan, results: list[SimResult], text: str, out: Path) -> None:
    """``text`` and a plot (``<out>-<section>.png``) into the plan's section of ``out``."""
    png = plot(results, out.with_name(f"{out.stem}-{plan.section}.png"))
    options.write_section(
        out, plan.section, text + f"\n![true best against wall-clock]({png.name})\n"
    )


__all__ = [
    "REFERENCE",
    "TABLES",
    "SearchPlan",
    "code_version",
    "kept_results",
    "progress",
    "render",
    "run",
    "search_plan",
    "write",
]
