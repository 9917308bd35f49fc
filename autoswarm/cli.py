"""The ``autoswarm`` command line: thin glue from arguments to config to Scheduler.

autoswarm init DIR [--template cpu|gpu] [--source stdlib|climbmix]
autoswarm prepare [--workspace DIR]
autoswarm run [--workspace DIR] [--workers N] [--budget S] [--max-experiments M]
              [--time-limit 8h] [--strategy NAME] [--tag TAG] [--resume]
autoswarm status [--workspace DIR] [--json]
autoswarm results [--workspace DIR] [--format table|tsv|json] [--since ID]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from autoswarm.config import Config, load_config, parse_duration, with_overrides, with_recorded_run
from autoswarm.errors import AutoswarmError, RunStateError, WorkspaceError
from autoswarm.ledger import Ledger, RunRecord
from autoswarm.outputs import (
    TSV_HEADER,
    effects_record,
    experiment_record,
    status_record,
    tsv_rows,
)
from autoswarm.sandbox import scrubbed_env
from autoswarm.workspace import Workspace

app = typer.Typer(
    name="autoswarm",
    help="Autonomous, parallel ML research: propose, run, measure, keep or discard.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

WorkspaceOpt = Annotated[
    Path,
    typer.Option(
        "--workspace", "-w", help="The workspace directory.", show_default="current directory"
    ),
]
TagOpt = Annotated[str | None, typer.Option("--tag", help="Run tag (default: the latest run).")]


class Template(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class Source(StrEnum):
    stdlib = "stdlib"
    climbmix = "climbmix"


class Format(StrEnum):
    table = "table"
    tsv = "tsv"
    json = "json"


# ---------------------------------------------------------------------------
# init / prepare


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Directory to create.")],
    template: Annotated[
        Template, typer.Option(help="cpu: tiny model, 60 s budget; gpu: autoresearch scale.")
    ] = Template.cpu,
    source: Annotated[
        Source | None, typer.Option(help="Data: stdlib (embedded) or climbmix (HF hub).")
    ] = None,
) -> None:
    """Create a workspace (git repo with prepare.py, train.py, program.md, autoswarm.toml)."""
    from autoswarm.init import init_workspace

    path = init_workspace(
        directory, template=template.value, source=source.value if source else None
    )
    console.print(f"[green]workspace created[/] in {path} ({template.value} template)")
    console.print(f"next: autoswarm run --workspace {path}")


def _load(workspace: Path) -> tuple[Config, Workspace]:
    cfg = load_config(workspace)
    return cfg, Workspace(workspace, cfg)


def run_prepare(ws: Workspace, cfg: Config) -> None:
    """Run the workspace's prepare command (idempotent: fast when data is cached)."""
    argv = [sys.executable if a == "{python}" else a for a in cfg.workspace.prepare]
    if not argv:
        return
    log = ws.state_dir / "prepare.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    err.print(f"[dim]preparing data: {' '.join(cfg.workspace.prepare)}[/]")
    proc = subprocess.run(argv, cwd=ws.root, env=scrubbed_env(os.environ), check=False)
    if proc.returncode != 0:
        raise WorkspaceError(
            f"`{' '.join(cfg.workspace.prepare)}` failed with exit code {proc.returncode} in {ws.root}: "
            "read its output above, fix the cause (disk space, network for remote sources, cache "
            "permissions) and run again"
        )


@app.command()
def prepare(workspace: WorkspaceOpt = Path(".")) -> None:
    """Prepare the workspace's data and tokenizer (run automatically by `run`)."""
    cfg, ws = _load(workspace)
    run_prepare(ws, cfg)


# ---------------------------------------------------------------------------
# run


@app.command()
def run(
    workspace: WorkspaceOpt = Path("."),
    workers: Annotated[
        int | None, typer.Option(help="Parallel slots (0 = one per GPU or core).")
    ] = None,
    budget: Annotated[float | None, typer.Option(help="Training seconds per experiment.")] = None,
    max_experiments: Annotated[
        int | None, typer.Option(help="Stop after this many experiments in all.")
    ] = None,
    time_limit: Annotated[
        str | None, typer.Option(help="Stop after this long in all, e.g. 20m, 8h.")
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help="Proposer: auto, greedy, random, factorial, optuna, optuna-cmaes."),
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Run tag; the branch is autoswarm/<tag>.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run (latest, or --tag).")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="Hard kill after this many seconds.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for candidates and the proposer.")] = None,
    live: Annotated[
        bool | None, typer.Option(help="Live view (default: when stdout is a terminal).")
    ] = None,
    skip_prepare: Annotated[bool, typer.Option(help="Do not run prepare.py first.")] = False,
) -> None:
    """Run the research loop until a limit is reached or Ctrl-C."""
    from autoswarm.backends.local import LocalBackend
    from autoswarm.proposers.registry import make_proposer
    from autoswarm.report.live import LiveView, print_event_lines
    from autoswarm.scheduler import Scheduler

    cfg = load_config(workspace)
    if resume:
        cfg = _recorded_config(workspace, cfg, tag)
    cfg = with_overrides(
        cfg,
        workers=workers,
        budget=budget,
        max_experiments=max_experiments,
        time_limit=parse_duration(time_limit) if time_limit is not None else None,
        strategy=strategy,
        tag=tag,
        timeout=timeout,
        seed=seed,
    )
    ws = Workspace(workspace, cfg)
    if not skip_prepare:
        run_prepare(ws, cfg)
    backend = LocalBackend(
        cfg.run.workers,
        threads_per_worker=cfg.run.threads_per_worker,
        log_max_bytes=cfg.run.log_max_bytes,
    )
    ledger = Ledger(ws.ledger_path)
    proposer = make_proposer(cfg, state_dir=ws.state_dir)
    sched = Scheduler(workspace=ws, ledger=ledger, backend=backend, proposer=proposer, config=cfg)

    interrupts = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            err.print("\n[yellow]stopping: killing running experiments (Ctrl-C again to force)[/]")
            sched.request_stop()
        else:
            raise KeyboardInterrupt

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    use_live = console.is_terminal if live is None else live
    view = LiveView(sched, console) if use_live else None
    if view is None:
        sched.on_change = print_event_lines(sched, err)
    try:
        if view is not None:
            with view:
                outcome = sched.run(tag=cfg.run.tag or None, resume=resume)
        else:
            outcome = sched.run(tag=cfg.run.tag or None, resume=resume)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        ledger.close()
    with Ledger(ws.ledger_path) as led:
        _print_table(led, outcome.run, cfg.metric.name, limit=40)
        st = status_record(led, outcome.run, time.time())
    console.print(_summary_line(st, outcome.reason))
    if outcome.reason == "interrupted":
        console.print(
            f"resume with: autoswarm run --resume --tag {outcome.run.tag} --workspace {workspace}"
        )
        raise typer.Exit(130)


def _recorded_config(workspace: Path, cfg: Config, tag: str | None) -> Config:
    """For --resume: the settings the run was started with (limits, budget, keep rule)."""
    path = workspace / ".autoswarm" / "ledger.sqlite"
    if not path.exists():
        return cfg
    with Ledger(path) as led:
        rec = led.get_run(tag)
    if rec is None:
        return cfg
    return with_recorded_run(cfg, rec.config)


def _summary_line(st: dict[str, Any], reason: str) -> str:
    metric = st["metric"]
    base = st["baseline"].get(metric)
    best = st["best"].get(metric)
    e = st["experiments"]
    parts = [
        f"run [bold]{st['tag']}[/] ended ({reason}):",
        f"{e['total']} experiments ({e['keep']} keep, {e['discard']} discard, {e['crash']} crash)",
    ]
    if base is not None and best is not None:
        parts.append(f"{metric} {base:.6f} -> {best:.6f} ({st['improvement_pct']:.2f}% better)")
    parts.append(f"best on branch {st['branch']}")
    return " ".join(parts)


# ---------------------------------------------------------------------------
# status / results


def _open_run(workspace: Path, tag: str | None) -> tuple[Ledger, RunRecord]:
    _cfg, ws = _load(workspace)
    if not ws.ledger_path.exists():
        raise RunStateError(
            f"no runs yet in {ws.root}: start one with `autoswarm run --workspace {workspace}`"
        )
    ledger = Ledger(ws.ledger_path)
    run_rec = ledger.get_run(tag)
    if run_rec is None:
        ledger.close()
        if tag is None:
            raise RunStateError(
                f"no runs yet in {ws.root}: start one with `autoswarm run --workspace {workspace}`"
            )
        raise RunStateError(
            f"no run tagged {tag!r} in {ws.root}: leave out --tag for the latest run"
        )
    return ledger, run_rec


@app.command()
def status(
    workspace: WorkspaceOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    tag: TagOpt = None,
) -> None:
    """Counts, baseline, best, noise, throughput and slot use of a run."""
    ledger, run_rec = _open_run(workspace, tag)
    with ledger:
        st = status_record(ledger, run_rec, time.time())
    if as_json:
        print(json.dumps(st, indent=2))
        return
    from rich.table import Table

    m = st["metric"]
    t = Table(
        title=f"autoswarm run {st['tag']} ({'active' if st['active'] else 'not running'})",
        show_header=False,
    )
    e = st["experiments"]
    t.add_row(
        "experiments",
        f"{e['total']} total: {e['keep']} keep, {e['discard']} discard, {e['crash']} crash, "
        f"{e['rejected']} rejected, {e['running']} running, {e['queued']} queued",
    )
    t.add_row(
        "baseline",
        _fmt(st["baseline"].get(m))
        + f"  ({st['baseline']['runs']} runs, {st['baseline']['commit'][:7]})",
    )
    t.add_row(
        "best",
        _fmt(st["best"].get(m)) + f"  (#{st['best']['id']}, {str(st['best']['commit'] or '')[:7]}) "
        f"{st['best']['description'] or ''}",
    )
    if st["improvement_pct"] is not None:
        t.add_row("improvement", f"{st['improvement_pct']:.2f}%")
    t.add_row("noise σ", _fmt(st["noise_sigma"]))
    t.add_row("elapsed", f"{st['elapsed_s'] / 60:.1f} min")
    t.add_row("throughput", f"{st['experiments_per_hour']:.1f} experiments/hour")
    t.add_row("busy fraction", f"{100 * st['busy_fraction']:.1f}%")
    t.add_row("branch", st["branch"])
    console.print(t)


@app.command()
def effects(
    workspace: WorkspaceOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    tag: TagOpt = None,
    wave: Annotated[int | None, typer.Option(help="Only this factorial wave.")] = None,
) -> None:
    """Main effects and two-way interactions estimated from the run's factorial waves."""
    from rich.table import Table

    from autoswarm.analysis.noise import baseline_of

    ledger, run_rec = _open_run(workspace, tag)
    metric = run_rec.config.get("metric", {}).get("name", "val_bpb")
    repeats = int(run_rec.config.get("run", {}).get("baseline_repeats", 3))
    with ledger:
        exps = ledger.experiments(run_rec.id)
    base = baseline_of(exps, metric, repeats)
    sigma = base.sigma if base and len(base.values) > 1 else None
    rec = effects_record(exps, metric, sigma, wave)
    if as_json:
        print(json.dumps(rec, indent=2))
        return
    if not rec["terms"]:
        console.print(
            "no effects yet: effects come from factorial waves (`autoswarm run --strategy factorial`)",
            soft_wrap=True,
        )
        return
    t = Table(
        title=f"effects on {metric} (−1 → +1 level; SE from {rec['se_source']}, {rec['runs']} runs)"
    )
    for col in ("term", "estimate", "stderr", "z", "p", "n"):
        t.add_column(col, justify="right" if col != "term" else "left")
    for r in sorted(rec["terms"], key=lambda r: r["p_value"] if r["p_value"] is not None else 2.0):
        t.add_row(
            r["term"],
            _num(r["estimate"]),
            _num(r["stderr"]),
            _num(r["z"], 2),
            _num(r["p_value"], 4),
            str(r["n"]),
        )
    console.print(t)


def _num(v: float | None, digits: int = 5) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.6f}"


@app.command()
def results(
    workspace: WorkspaceOpt = Path("."),
    fmt: Annotated[
        Format, typer.Option("--format", help="table, tsv (autoresearch format) or json.")
    ] = Format.table,
    tag: TagOpt = None,
    since: Annotated[int, typer.Option(help="Only experiments with an id above this.")] = 0,
) -> None:
    """The experiments of a run."""
    ledger, run_rec = _open_run(workspace, tag)
    metric = run_rec.config.get("metric", {}).get("name", "val_bpb")
    with ledger:
        exps = ledger.experiments(run_rec.id, since_id=since)
        if fmt is Format.json:
            print(json.dumps([experiment_record(e) for e in exps], indent=2))
        elif fmt is Format.tsv:
            print("\n".join([TSV_HEADER, *tsv_rows(exps, metric)]))
        else:
            _print_table(ledger, run_rec, metric, since=since)


def _print_table(
    ledger: Ledger, run_rec: RunRecord, metric: str, *, since: int = 0, limit: int = 0
) -> None:
    from rich.table import Table

    from autoswarm.types import Status

    exps = ledger.experiments(run_rec.id, since_id=since)
    shown = exps[-limit:] if limit else exps
    t = Table(
        title=f"run {run_rec.tag}: {len(exps)} experiments"
        + (f" (last {len(shown)})" if len(shown) < len(exps) else "")
    )
    for col in ("id", "commit", metric, "Δ vs best", "status", "time", "description"):
        t.add_column(col, overflow="fold")
    style = {
        Status.KEEP: "green",
        Status.DISCARD: "default",
        Status.CRASH: "red",
        Status.REJECTED: "red",
    }
    for e in shown:
        v = e.value(metric)
        before = dict(e.meta.get("evidence") or {}).get("best_before")
        delta = f"{v - before:+.4f}" if v is not None and isinstance(before, int | float) else ""
        desc = e.description + (
            f" — {e.reason}" if e.reason and e.status in (Status.CRASH, Status.REJECTED) else ""
        )
        t.add_row(
            str(e.id),
            (e.commit or "")[:7],
            "-" if v is None else f"{v:.6f}",
            delta,
            Text(e.status.value, style=style.get(e.status, "yellow")),
            "" if e.duration_s is None else f"{e.duration_s:.0f}s",
            Text(desc),
        )
    console.print(t)


# ---------------------------------------------------------------------------
# bench


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


@app.command()
def bench(
    kind: Annotated[
        str, typer.Argument(help="search (simulated training) or systems (real processes).")
    ],
    objectives: Annotated[
        str, typer.Option(help="Synthetic objectives (search).")
    ] = "bowl,ridge,wide",
    strategies: Annotated[
        str, typer.Option(help="Strategies on N slots (search).")
    ] = "greedy,random,factorial,optuna",
    slots: Annotated[str, typer.Option(help="Slot counts, comma-separated.")] = "1,4,16",
    reps: Annotated[int, typer.Option(help="Repetitions per setting (search).")] = 3,
    hours: Annotated[float, typer.Option(help="Simulated wall-clock per run (search).")] = 8.0,
    budget: Annotated[float, typer.Option(help="Training seconds per experiment.")] = 300.0,
    duration: Annotated[float, typer.Option(help="Seconds per run (systems).")] = 120.0,
    out: Annotated[
        Path | None, typer.Option(help="Write the tables (and plot) into this markdown file.")
    ] = None,
) -> None:
    """Benchmarks: strategies against sequential greedy, or busy fraction and dispatch overhead."""
    from autoswarm.bench.objectives import OBJECTIVES

    if kind == "search":
        from autoswarm.bench.report import markdown_table, plot, summarize
        from autoswarm.bench.simulate import simulate

        results = []
        for obj_name in _csv(objectives):
            if obj_name not in OBJECTIVES:
                raise typer.BadParameter(
                    f"unknown objective {obj_name!r}; known: {', '.join(OBJECTIVES)}"
                )
            obj = OBJECTIVES[obj_name]
            plan = [("greedy", 1)] + [(st, int(n)) for n in _csv(slots) for st in _csv(strategies)]
            for rep in range(reps):
                for strat, n in dict.fromkeys(plan):
                    r = simulate(obj, strat, n, rep=rep, horizon_s=hours * 3600, budget_s=budget)
                    results.append(r)
                    err.print(
                        f"{obj_name:6} {strat:10} ×{n:<3} rep {rep}: {r.experiments:5} experiments, "
                        f"true best {r.best_true:.4f} (simulated in {r.real_seconds:.1f}s)"
                    )
        rows = summarize(results)
        table = markdown_table(rows)
        print(table)
        if out is not None:
            png = plot(results, out.with_name(out.stem + "-search.png"))
            _write_section(
                out, "search", table + f"\n![true best against wall-clock]({png.name})\n"
            )
    elif kind == "systems":
        from autoswarm.bench.systems import markdown, run_local

        res = []
        for count in _csv(slots):
            sr = run_local(int(count), budget, duration)
            err.print(
                f"local ×{count}: {sr.experiments} experiments, busy {100 * sr.busy_fraction:.1f}%"
            )
            res.append(sr)
        table = markdown(res)
        print(table)
        if out is not None:
            _write_section(out, f"systems-{int(budget)}s", table)
    else:
        raise typer.BadParameter("kind must be 'search' or 'systems'")


def _write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the block between <!-- bench:NAME --> markers in a markdown file."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text)


# ---------------------------------------------------------------------------


def main() -> None:
    """Entry point: turn autoswarm's own errors into one red line and exit code 2."""
    try:
        app()
    except AutoswarmError as e:
        # soft_wrap: paths and commands in the message must stay copyable on one line.
        err.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)


__all__ = ["app", "main"]
