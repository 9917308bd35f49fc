"""The ``autoswarm`` command line: thin glue from arguments to config to Scheduler.

autoswarm init DIR [--template cpu|gpu] [--source stdlib|climbmix]
autoswarm prepare [--workspace DIR]
autoswarm run [--workspace DIR] [--workers N] [--budget S] [--max-experiments M]
              [--time-limit 8h] [--strategy NAME] [--tag TAG] [--resume]
              [--max-cost USD] [--max-gpu-hours H]
autoswarm status [--workspace DIR] [--json]
autoswarm results [--workspace DIR] [--format table|tsv|json] [--since ID]
autoswarm submit PATH | --diff FILE --desc TEXT [--json]   (external-agent mode)
autoswarm wait ID... [--timeout 20m] [--json]
autoswarm skill [--out PATH]                                (SKILL.md for a coding agent)
autoswarm run --dry-run                   (print the SkyPilot tasks / slot plan, launch nothing)
autoswarm down [--workspace DIR]          (tear down the SkyPilot clusters runs launched)
autoswarm bench search|systems|real|rule [...]   (benchmarks; see docs/benchmarks.md)

Strategy names come from one list, autoswarm/proposers/registry.py; the benchmarks'
work is in autoswarm/bench/ (each bench command only parses its options).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from autoswarm.bench.options import DEFAULT_STRATEGIES
from autoswarm.config import (
    CONFIG_NAME,
    Config,
    load_config,
    parse_duration,
    with_overrides,
    with_recorded_run,
)
from autoswarm.errors import AutoswarmError, ConfigError, RunStateError, WorkspaceError
from autoswarm.heldout import HIDDEN, held_out_values
from autoswarm.ledger import Ledger, RunRecord
from autoswarm.outputs import (
    TSV_HEADER,
    effects_record,
    experiment_record,
    status_record,
    tsv_rows,
)
from autoswarm.proposers.registry import KNOB_STRATEGIES, REGISTRY, STRATEGIES
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
ShowTestOpt = Annotated[
    bool,
    typer.Option(
        "--show-test",
        help="Show the held-out test values while the run is active (an agent must not see them).",
    ),
]


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
    """Run the workspace's prepare command (idempotent: fast when data is cached).

    A locked file (prepare.py) that differs from its commit is restored first: it would
    run a tamper.
    """
    from autoswarm.lifecycle import restore_locked_files, tampered_dir

    argv = [sys.executable if a == "{python}" else a for a in cfg.workspace.prepare]
    if not argv:
        return
    for line in restore_locked_files(ws, tampered_dir(ws)):
        err.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)
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


def _strategies_help() -> str:
    """The strategies under ``autoswarm run --help``, one per line, from the registry."""
    return "\n".join(
        ["Strategies:"] + [f"  {s.name}: {escape(s.summary)}" for s in REGISTRY.values()]
    )


def _first_saying(line: str, then: Callable[[], None]) -> Callable[[], None]:
    """An ``on_change`` that prints ``line`` (how experiments are contained) once the run
    has started, then does what ``then`` does."""
    said = False

    def on_change() -> None:
        nonlocal said
        if not said:
            said = True
            err.print(line, markup=False, highlight=False)
        then()

    return on_change


@app.command(epilog=_strategies_help())
def run(
    workspace: WorkspaceOpt = Path("."),
    workers: Annotated[
        int | None, typer.Option(help="Parallel slots (0 = one per GPU or core).")
    ] = None,
    budget: Annotated[float | None, typer.Option(help="Training seconds per experiment.")] = None,
    max_experiments: Annotated[
        int | None,
        typer.Option(
            help="Stop after this many experiments in all (baseline repeats and re-runs count)."
        ),
    ] = None,
    time_limit: Annotated[
        str | None, typer.Option(help="Stop after this long in all, e.g. 20m, 8h.")
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(help=f"Proposer (each is described below): {', '.join(STRATEGIES)}."),
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
    max_cost: Annotated[
        float | None, typer.Option(help="Stop at this many dollars of tier time in all.")
    ] = None,
    max_gpu_hours: Annotated[
        float | None, typer.Option(help="Stop at this many accelerator-hours in all.")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print what would be launched (SkyPilot task YAML, slots); run nothing.",
        ),
    ] = False,
) -> None:
    """Run the research loop until a limit is reached or Ctrl-C."""
    from autoswarm.backends.factory import make_backend, sandbox_line
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
        max_cost=max_cost,
        max_gpu_hours=max_gpu_hours,
    )
    if dry_run:
        _dry_run(cfg, workspace)
        return
    contained = sandbox_line(cfg)  # before anything runs: mode = "bwrap" may refuse
    ws = Workspace(workspace, cfg)
    if not skip_prepare:
        run_prepare(ws, cfg)
    backend = make_backend(cfg, workspace_root=ws.root, state_dir=ws.state_dir)
    _say_oversubscribed(backend)
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
    view = LiveView(sched, console, banner=contained) if use_live else None
    if view is None:
        sched.on_change = _first_saying(contained, print_event_lines(sched, err))
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
        st = status_record(led, outcome.run, time.time(), effects=False)
    console.print(_summary_line(st, outcome.reason))
    if outcome.reason == "interrupted":
        console.print(
            f"resume with: autoswarm run --resume --tag {outcome.run.tag} --workspace {workspace}"
        )
        raise typer.Exit(130)


def _say_oversubscribed(backend: object) -> None:
    """One note at the start of a run whose CPU slots outnumber this machine's cores."""
    from autoswarm.backends.local import LocalBackend, oversubscribed, usable_cores

    note = (
        oversubscribed(backend.plans, len(usable_cores()))
        if isinstance(backend, LocalBackend)
        else ""
    )
    if note:
        err.print(escape(note))


def _dry_run(cfg: Config, workspace: Path) -> None:
    """``run --dry-run``: the SkyPilot tasks of the first jobs, or the slot plan; nothing runs."""
    if cfg.pool.backend == "skypilot":
        import yaml

        from autoswarm.backends.skytask import cluster_name, parse_pool, plan_tasks

        opts = parse_pool(cfg.pool)
        count = min(opts.capacity, max(1, cfg.run.baseline_repeats))
        tasks = plan_tasks(cfg, workspace.resolve(), count)

        class _Literal(yaml.SafeDumper):
            pass

        def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
            style = "|" if "\n" in data else None
            return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

        _Literal.add_representer(str, _str)
        for i, task in enumerate(tasks):
            tier, index = opts.slot_tier(i)
            where = (
                f"cluster {cluster_name(opts, cfg.run.tag, tier.name, index)} (sky launch, "
                "then sky exec for its later experiments)"
                if opts.mode == "clusters"
                else "a managed job (sky jobs launch)"
            )
            print(f"# experiment {i + 1}, slot {i}, tier {tier.name}: {where}")
            print(yaml.dump(task, Dumper=_Literal, sort_keys=False), end="")
            print("---")
        err.print(
            f"[dim]skypilot {opts.mode} mode, {opts.capacity} slots: "
            + ", ".join(f"{t.name} {t.slots} × {t.accelerator}" for t in opts.tiers)
            + f"; first {len(tasks)} task(s) shown, nothing launched[/]"
        )
        return
    if cfg.pool.backend == "local":
        from autoswarm.backends.factory import local_workers
        from autoswarm.backends.local import oversubscribed, plan_slots, usable_cores

        plans = plan_slots(local_workers(cfg), threads_per_worker=cfg.run.threads_per_worker)
        for i, p in enumerate(plans):
            where = f"GPU {p.gpu}" if p.gpu is not None else f"cores {list(p.cores)}"
            print(f"slot {i}: {where}, {p.threads} thread(s)")
        if note := oversubscribed(plans, len(usable_cores())):
            err.print(escape(note))
    else:
        for t in cfg.pool.tiers:
            print(f"tier {t.name}: {t.slots} slot(s) × {t.accelerator or 'CPU'} ({t.role.value})")
    err.print(f"[dim]{cfg.pool.backend} backend; nothing launched[/]")


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
    show_test: ShowTestOpt = False,
) -> None:
    """Counts, baseline, best, noise, throughput and slot use of a run."""
    from autoswarm.backends.factory import sandbox_line

    ledger, run_rec = _open_run(workspace, tag)
    with ledger:
        shown = show_test or not _active(ledger, run_rec)
        # The table has no effects (they are fitted for --json only).
        st = status_record(ledger, run_rec, time.time(), effects=as_json, show_test=shown)
    try:  # how experiments of this run are contained on this machine
        st["sandbox"] = sandbox_line(Config.from_record(run_rec.config))
    except ConfigError as refused:
        st["sandbox"] = f"sandbox: cannot start here: {refused}"
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
    b = st["best"]
    t.add_row(
        "best",
        _fmt(b.get(m)) + f"  (#{b['id']}, {str(b['commit'] or '')[:7]}) {b['description'] or ''}",
    )
    if b.get("selected") is not None:
        se = f" ± {b['se']:.6f}" if b.get("se") is not None else ""
        t.add_row(
            "  evidence",
            f"selected at {b['selected']:.6f}; {'validated' if b['validated'] else 'replicated'} "
            f"mean {_fmt(b.get('replicated'))}{se} over {b['runs']} fresh run(s) "
            f"(winner's curse {b['replicated'] - b['selected']:+.6f})",
        )
    if st["improvement_pct"] is not None:
        t.add_row("improvement", f"{st['improvement_pct']:.2f}%")
    n = st["noise"]
    t.add_row(
        "noise σ",
        _fmt(n["sigma"])
        + f"  ({n['df']:g} degrees of freedom over {n['groups']} repeated commit(s); "
        f"baseline repeats alone {_fmt(n['baseline_sigma'])}"
        + (f"; {n['unstable']} unstable left out" if n["unstable"] else "")
        + (f"; {n['slowed_repeats']} slowed repeat(s) re-run" if n["slowed_repeats"] else "")
        + ")",
    )
    if e.get("revoked"):
        t.add_row("revoked", f"{e['revoked']} keep(s) whose re-measured evidence did not hold")
    t.add_row("elapsed", f"{st['elapsed_s'] / 60:.1f} min")
    t.add_row("throughput", f"{st['experiments_per_hour']:.1f} experiments/hour")
    t.add_row("busy fraction", f"{100 * st['busy_fraction']:.1f}%")
    t.add_row("cost", f"${st['cost_usd']:.2f}, {st['gpu_hours']:.2f} GPU-hours")
    for name, c in st["tiers"].items():
        t.add_row(
            f"  tier {name}",
            f"{c['experiments']} runs, ${c['cost_usd']:.2f}, {c['gpu_hours']:.2f} GPU-hours",
        )
    t.add_row("metric", Text(st["metric_source"]))
    _test_rows(t, st["test"], m)
    t.add_row("branch", st["branch"])
    t.add_row("sandbox", st["sandbox"].removeprefix("sandbox: "))
    console.print(t)
    if st["test"] and st["test"].get("warning"):
        err.print(f"[yellow]warning:[/] {st['test']['warning']}")


def _test_rows(t: Any, test: dict[str, Any] | None, metric: str) -> None:
    """The test split's rows of the status table (autoswarm.heldout)."""
    if not test:
        return
    if "hidden" in test:
        t.add_row("test split", test["hidden"])
        return
    name = test["metric"]
    for label, e in (("baseline", test["baseline"]), ("best", test["best"])):
        if e is not None:
            t.add_row(
                f"test: {label}",
                f"{name} {e['test']:.6f} beside {metric} {e['val']:.6f} "
                f"(gap {e['gap']:+.6f} over {e['runs']} run(s); held out, never decided on)",
            )
    if test.get("gap_growth") is not None:
        se = test.get("gap_growth_se")
        t.add_row(
            "  gap growth",
            f"{test['gap_growth']:+.6f}"
            + (f" ± {se:.6f}" if se is not None else "")
            + " since the baseline (warned above 2 standard errors)",
        )
    for k in test.get("keeps", []):
        t.add_row(
            f"  keep #{k['id']}",
            f"{metric} {k['val']:.6f}, {name} {k['test']:.6f}, gap {k['gap']:+.6f}",
        )


def _active(ledger: Ledger, run_rec: RunRecord) -> bool:
    """True while an orchestrator runs this run (a session with a recent heartbeat)."""
    now = time.time()
    return any(s.live(now) for s in ledger.sessions(run_rec.id))


@app.command()
def reproduce(
    experiment: Annotated[int, typer.Argument(help="The experiment id (see `autoswarm results`).")],
    workspace: WorkspaceOpt = Path("."),
    runs: Annotated[int, typer.Option(help="Re-runs with fresh seeds.")] = 3,
    tier: Annotated[
        str, typer.Option(help="Run them on this tier of [pool] (default: its own).")
    ] = "",
    tag: TagOpt = None,
    skip_prepare: Annotated[bool, typer.Option(help="Do not run prepare.py first.")] = False,
) -> None:
    """Re-run a recorded commit with fresh seeds: does its recorded value hold?

    The runs join the run's ledger; for a kept variant they are re-measurements, so a
    reproduction that contradicts the keep revokes it (the branch moves back).
    """
    from autoswarm import judge
    from autoswarm.analysis.noise import groups_of
    from autoswarm.backends.factory import make_backend, sandbox_line
    from autoswarm.proposers.registry import make_proposer
    from autoswarm.scheduler import Reproduce, Scheduler
    from autoswarm.types import Kind, Purpose, Status

    if runs < 1:
        raise typer.BadParameter(f"--runs {runs}: must be at least 1")
    ledger, run_rec = _open_run(workspace, tag)
    with ledger:
        found = [e for e in ledger.experiments(run_rec.id) if e.id == experiment]
    before = found[0] if found else None
    if before is None:
        raise RunStateError(
            f"no experiment #{experiment} in run {run_rec.tag!r}: pick an id from "
            f"`autoswarm results --workspace {workspace}`"
        )
    cfg = with_overrides(
        _recorded_config(workspace, load_config(workspace), run_rec.tag), strategy="greedy"
    )
    metric = cfg.metric.name
    ev = before.evidence
    recorded = (
        (ev.replicated if ev else None) or (ev.mean if ev and ev.values else None)
    ) or before.value(metric)
    if before.kind is Kind.BASELINE:
        with Ledger(_load(workspace)[1].ledger_path) as led:
            base = [
                v
                for e in led.experiments(run_rec.id)
                if e.kind is Kind.BASELINE
                and e.status is Status.KEEP
                and (v := e.value(metric)) is not None
            ]
        recorded = statistics.fmean(base) if base else recorded
    if recorded is None:
        raise RunStateError(f"experiment #{experiment} has no recorded {metric} to reproduce")
    contained = sandbox_line(cfg)  # before anything runs: mode = "bwrap" may refuse
    ws = Workspace(workspace, cfg)
    if not skip_prepare:
        run_prepare(ws, cfg)
    backend = make_backend(cfg, workspace_root=ws.root, state_dir=ws.state_dir)
    ledger = Ledger(ws.ledger_path)
    sched = Scheduler(
        workspace=ws,
        ledger=ledger,
        backend=backend,
        proposer=make_proposer(cfg, state_dir=None),
        config=cfg,
    )
    sched.on_change = _first_saying(contained, lambda: None)
    try:
        sched.run(tag=run_rec.tag, reproduce=Reproduce(experiment, runs, tier))
        exps = ledger.experiments(run_rec.id)
        after = ledger.get(experiment)
    finally:
        ledger.close()
    rows = [e for e in exps if e.purpose is Purpose.REPRODUCE and e.rerun_of == experiment]
    rows = rows[-runs:]
    values = [v for e in rows if (v := e.value(metric)) is not None]
    if not values:
        err.print(f"[red]no re-run of #{experiment} produced {metric}[/]: see their logs")
        raise typer.Exit(1)
    noise = judge.noise_model(groups_of(exps, metric, run_rec.base_commit))
    rule = judge.Rule(direction=cfg.metric.direction)
    holds, mean, se = judge.claim(rule, float(recorded), values, noise)
    console.print(
        f"#{experiment} {before.description}: recorded {metric} {float(recorded):.6f}; "
        f"re-run {len(values)}× with fresh seeds: {mean:.6f} ± {se:.6f} (se)"
    )
    verdict = "[green]holds[/]" if holds else "[red]does not hold[/]"
    console.print(
        f"the claim {verdict}: the recorded value is "
        f"{'within' if holds else 'outside'} the 95% interval of the new mean"
    )
    if after is not None and before.status is Status.KEEP and after.status is Status.REVOKED:
        console.print(f"[yellow]the keep was revoked:[/] {after.reason}")
    if not holds:
        raise typer.Exit(1)


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
    recorded = Config.from_record(run_rec.config)
    metric, repeats = recorded.metric.name, recorded.run.baseline_repeats
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
    show_test: ShowTestOpt = False,
) -> None:
    """The experiments of a run (test values once the run has ended, or with --show-test)."""
    ledger, run_rec = _open_run(workspace, tag)
    recorded = Config.from_record(run_rec.config)
    metric = recorded.metric.name
    with ledger:
        exps = ledger.experiments(run_rec.id, since_id=since)
        tests = _tests(ledger, run_rec, show_test)
        if fmt is Format.json:
            records = []
            for e in exps:
                rec = experiment_record(e, recorded.pool)
                if e.id in tests:
                    rec["test"] = dict(tests[e.id])
                records.append(rec)
            print(json.dumps(records, indent=2))
        elif fmt is Format.tsv:  # autoresearch's columns only; agents read this file
            print("\n".join([TSV_HEADER, *tsv_rows(exps, metric)]))
        else:
            _print_table(ledger, run_rec, metric, since=since, tests=tests)
            if not tests and recorded.metric.evaluate and _active(ledger, run_rec):
                err.print(f"test values: {HIDDEN}")


def _tests(ledger: Ledger, run_rec: RunRecord, show: bool) -> dict[int, Mapping[str, float]]:
    """id -> test values, when they may be shown: the run has ended, or --show-test."""
    if not show and _active(ledger, run_rec):
        return {}
    return held_out_values(ledger.sealed_metrics(run_rec.id))


def _print_table(
    ledger: Ledger,
    run_rec: RunRecord,
    metric: str,
    *,
    since: int = 0,
    limit: int = 0,
    tests: Mapping[int, Mapping[str, float]] | None = None,
) -> None:
    from rich.table import Table

    from autoswarm.types import Status

    exps = ledger.experiments(run_rec.id, since_id=since)
    shown = exps[-limit:] if limit else exps
    t = Table(
        title=f"run {run_rec.tag}: {len(exps)} experiments"
        + (f" (last {len(shown)})" if len(shown) < len(exps) else "")
    )
    test_key = Config.from_record(run_rec.config).metric.test
    columns = ["id", "commit", metric, "Δ vs best", "status", "time", "description"]
    if tests:
        columns.insert(3, f"{test_key} (held out)")
    for col in columns:
        t.add_column(col, overflow="fold")
    style = {
        Status.KEEP: "green",
        Status.DISCARD: "default",
        Status.CRASH: "red",
        Status.FORGED: "bold red",
        Status.REJECTED: "red",
    }
    for e in shown:
        v = e.value(metric)
        ev = e.evidence.as_meta() if e.evidence else {}
        before = ev.get("best_before")
        delta = f"{v - before:+.4f}" if v is not None and isinstance(before, int | float) else ""
        desc = e.description + (
            f" — {e.reason}"
            if e.reason
            and e.status in (Status.CRASH, Status.FORGED, Status.REJECTED, Status.REVOKED)
            else ""
        )
        if (
            e.status is Status.KEEP
            and ev.get("replicated_mean") is not None
            and ev.get("selected_mean") is not None
        ):
            desc += f" — selected {ev['selected_mean']:.6f}, replicated {ev['replicated_mean']:.6f}"
        cells = [str(e.id), (e.commit or "")[:7], "-" if v is None else f"{v:.6f}"]
        if tests:
            tv = tests.get(e.id, {}).get(test_key)
            cells.append("-" if tv is None else f"{tv:.6f}")
        t.add_row(
            *cells,
            delta,
            Text(e.status.value, style=style.get(e.status, "yellow")),
            "" if e.duration_s is None else f"{e.duration_s:.0f}s",
            Text(desc),
        )
    console.print(t)


# ---------------------------------------------------------------------------
# external-agent mode: submit / wait / skill (see autoswarm/proposers/external.py)


@app.command()
def doctor(
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace", "-w", help="Check this workspace's [sandbox] (default: defaults)."
        ),
    ] = None,
) -> None:
    """Run hostile probes in this machine's sandbox and print what held (docs/security.md)."""
    from autoswarm import doctor as probes

    box = load_config(workspace).sandbox if workspace is not None else Config().sandbox
    try:
        line, found = probes.check(box)
    except RuntimeError as e:
        raise ConfigError(
            f'[sandbox] mode = "bwrap" but {e}; install it, or set [sandbox] mode = "auto"'
        ) from None
    console.print(probes.table(line, found), markup=False, highlight=False)
    if not all(p.held for p in found):
        raise typer.Exit(1)


def _diff_text(diff: Path) -> str:
    """The text of ``--diff FILE`` ('-' = stdin), or one line that says why not."""
    from autoswarm.patching import utf8_text

    if str(diff) == "-":
        return utf8_text(sys.stdin.buffer.read(), "the diff on stdin")
    try:
        data = diff.read_bytes()
    except FileNotFoundError:
        raise WorkspaceError(f"--diff {diff}: no such file") from None
    except OSError as e:
        raise WorkspaceError(f"--diff {diff}: cannot read it ({e.strerror})") from None
    return utf8_text(data, f"--diff {diff}")


@app.command()
def submit(
    path: Annotated[
        Path | None,
        typer.Argument(help="A file or directory with new versions of editable files."),
    ] = None,
    diff: Annotated[
        Path | None,
        typer.Option("--diff", help="A unified diff against the current best ('-' = stdin)."),
    ] = None,
    desc: Annotated[str, typer.Option("--desc", help="One line: what the variant changes.")] = "",
    workspace: WorkspaceOpt = Path("."),
    tag: Annotated[
        str | None, typer.Option("--tag", help="Only the run with this tag may take it.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Queue a variant for `autoswarm run --strategy external`; prints its experiment id."""
    from autoswarm.proposers.external import files_from_path
    from autoswarm.proposers.external import submit as queue_variant

    if (path is None) == (diff is None):
        raise typer.BadParameter("give either PATH or --diff FILE (exactly one)")
    cfg, ws = _load(workspace)
    with Ledger(ws.ledger_path) as ledger:
        if diff is not None:
            text = _diff_text(diff)
            sub = queue_variant(
                ws, ledger, diff=text, description=desc or f"diff {diff.name}", tag=tag
            )
        else:
            assert path is not None
            files = files_from_path(path, cfg)
            sub = queue_variant(
                ws, ledger, files=files, description=desc or f"files from {path}", tag=tag
            )
    if as_json:
        print(json.dumps(sub.record(), indent=2))
        return
    print(sub.id)
    err.print(f"queued #{sub.id}: {escape(sub.description)} ({', '.join(sub.files)})")
    for note in sub.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)


@app.command()
def wait(
    ids: Annotated[list[int], typer.Argument(help="Experiment ids (as printed by submit).")],
    workspace: WorkspaceOpt = Path("."),
    timeout: Annotated[
        str, typer.Option(help="Give up after this long, e.g. 90s, 20m (0 = never).")
    ] = "0",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Block until the experiments reach a final state, then print their results."""
    from rich.table import Table

    from autoswarm.proposers.external import state_of, wait_for

    cfg, ws = _load(workspace)
    if not ws.ledger_path.exists():
        raise RunStateError(
            f"no ledger in {ws.root} yet: queue a variant with `autoswarm submit` first"
        )
    with Ledger(ws.ledger_path) as ledger:
        rows, done = wait_for(ledger, ids, timeout=parse_duration(timeout))
        runs = {r.id: r for r in ledger.runs()}
    records = []
    for i, e in rows.items():
        if e is None:
            records.append({"id": i, "status": state_of(None), "description": "", "value": None})
            continue
        run_rec = runs.get(e.run_id)
        recorded = Config.from_record(run_rec.config, base=cfg) if run_rec else cfg
        rec = experiment_record(e)
        rec["metric"] = recorded.metric.name or cfg.metric.name
        rec["value"] = e.value(rec["metric"])
        rec["duplicate_of"] = e.duplicate_of
        records.append(rec)
    if as_json:
        print(json.dumps(records, indent=2))
    else:
        t = Table(title="results" if done else "results so far (timed out)")
        for col in ("id", "status", "value", "description"):
            t.add_column(col, overflow="fold")
        for r in records:
            desc = str(r["description"]) + (f" — {r['reason']}" if r.get("reason") else "")
            value = "-" if r["value"] is None else f"{r['value']:.6f}"
            t.add_row(str(r["id"]), str(r["status"]), value, Text(desc))
        console.print(t)
    if not done:
        left = [str(r["id"]) for r in records if r["status"] not in _FINAL_WORDS]
        err.print(f"[yellow]timed out[/] waiting for {', '.join(left)}: run `autoswarm wait` again")
        raise typer.Exit(1)


_FINAL_WORDS = ("keep", "discard", "crash", "rejected", "forged", "revoked")


@app.command()
def skill(
    workspace: WorkspaceOpt = Path("."),
    out: Annotated[
        Path | None, typer.Option(help="Where to write it (default: <workspace>/SKILL.md).")
    ] = None,
) -> None:
    """Write SKILL.md: how a coding agent drives the swarm (submit, wait, results)."""
    from autoswarm.skill import write_skill

    cfg = load_config(workspace)
    path = write_skill(cfg, workspace, out)
    console.print(f"wrote {path}")
    console.print(
        "Claude Code: copy it to .claude/skills/autoswarm/SKILL.md; other agents: point them at it"
    )


# ---------------------------------------------------------------------------
# down


@app.command()
def down(workspace: WorkspaceOpt = Path(".")) -> None:
    """Tear down the SkyPilot clusters (and cancel the managed jobs) runs here launched."""
    from autoswarm.backends.skypilot import STATE_FILE, down_recorded, read_state

    if not (workspace / CONFIG_NAME).is_file():
        raise ConfigError(
            f"{workspace} has no {CONFIG_NAME}: it is not an autoswarm workspace, so it "
            "launched nothing; run `autoswarm down --workspace DIR` with the workspace that did"
        )
    state_dir = workspace / ".autoswarm"
    state = read_state(state_dir)
    if not state.get("clusters") and not state.get("jobs"):
        console.print(f"nothing to tear down: {state_dir / STATE_FILE} records no clusters or jobs")
        return
    downed, failed = down_recorded(state_dir)
    for name in downed:
        console.print(f"[green]down[/] {name}")
    if failed:
        err.print(
            f"[red]could not tear down:[/] {', '.join(failed)}; try `sky down {' '.join(failed)}` "
            "and check `sky status`",
            soft_wrap=True,
        )
        raise typer.Exit(1)


# ---------------------------------------------------------------------------
# bench: one command per benchmark; the work is in autoswarm/bench/

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks: strategies on simulated training (search), the orchestrator's busy "
    "fraction and dispatch overhead (systems), strategies on a real template (real), the "
    "keep rule alone (rule).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")

OutOpt = Annotated[
    Path | None,
    typer.Option(help="Write the table (search: and a plot) into its block of this markdown file."),
]
SlotsOpt = Annotated[str, typer.Option(help="Slot counts, comma-separated.")]
BudgetOpt = Annotated[float, typer.Option(help="Training seconds per experiment.")]


@contextmanager
def _options() -> Iterator[None]:
    """A bench module's ValueError about an option becomes a usage error (exit code 2)."""
    try:
        yield
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


@bench_app.command("search")
def bench_search(
    objectives: Annotated[
        str,
        typer.Option(
            help="Synthetic objectives (default bowl,ridge,wide,far with --table main, "
            "null,lottery,edge with --table noise)."
        ),
    ] = "",
    strategies: Annotated[
        str,
        typer.Option(help=f"Knob strategies on N slots: {', '.join(KNOB_STRATEGIES)}."),
    ] = DEFAULT_STRATEGIES,
    slots: SlotsOpt = "1,4,16",
    extra: Annotated[
        str, typer.Option(help="More settings as STRATEGY@SLOTS, comma-separated, e.g. auto@64.")
    ] = "",
    jobs: Annotated[
        int, typer.Option(help="Simulations run in parallel processes (results are the same).")
    ] = 1,
    reps: Annotated[int, typer.Option(help="Repetitions per setting.")] = 3,
    hours: Annotated[float, typer.Option(help="Simulated wall-clock per run.")] = 8.0,
    budget: BudgetOpt = 300.0,
    out: OutOpt = None,
    section: Annotated[
        str,
        typer.Option(
            help="Name of the block the table replaces in --out (e.g. search-64 for a second "
            "table beside the main one)."
        ),
    ] = "search",
    table: Annotated[
        str,
        typer.Option(
            help="Which table: main (speedup and GPU-hours to the first time the target was "
            "reached) or noise (reported best against its true value, false keeps per 1000 "
            "candidates, time to a target still held at the end; issue 13)."
        ),
    ] = "main",
    keep: Annotated[
        Path | None,
        typer.Option(
            help="Append each finished simulation to this file; run again with the same file "
            "to skip what it holds for this code version (a long benchmark continues)."
        ),
    ] = None,
) -> None:
    """Strategies on N slots against sequential greedy, on simulated training (a fake clock)."""
    from autoswarm.bench import search

    with _options():
        plan = search.search_plan(
            objectives=objectives,
            strategies=strategies,
            slots=slots,
            extra=extra,
            reps=reps,
            hours=hours,
            budget=budget,
            jobs=jobs,
            section=section,
            table=table,
        )
    results = search.run(plan, on_result=lambda r: err.print(search.progress(r)), keep=keep)
    text = search.render(plan, results)
    print(text)
    if out is not None:
        search.write(plan, results, text, out)


@bench_app.command("systems")
def bench_systems(
    slots: SlotsOpt = "1,4,16",
    budget: BudgetOpt = 300.0,
    duration: Annotated[float, typer.Option(help="Seconds per run.")] = 120.0,
    backend: Annotated[
        str, typer.Option(help="Backends, comma-separated: local, ray (a local Ray cluster).")
    ] = "local",
    final_runs: Annotated[
        int | None,
        typer.Option(help="[run] final_runs (0: no end-of-run validation of the best)."),
    ] = None,
    out: OutOpt = None,
) -> None:
    """Busy fraction and dispatch overhead of N slots of real processes (a sleeping train.py)."""
    from autoswarm.bench import options, systems

    with _options():
        counts = options.counts("--slots", slots)
        options.positive(("--budget", budget), ("--duration", duration))
        backends = systems.backends_of(backend)
        if final_runs is not None and final_runs < 0:
            raise ValueError(f"--final-runs must be 0 or more, got {final_runs}")
    res = systems.run_all(
        counts,
        budget,
        duration,
        backends,
        on_result=lambda r: err.print(systems.progress(r)),
        final_runs=final_runs,
    )
    text = systems.markdown(res)
    print(text)
    if out is not None:
        section = systems.section(backends, options.csv(slots), budget)
        if final_runs is not None:
            section += f"-final{final_runs}"
        options.write_section(out, section, text)


@bench_app.command("sandbox")
def bench_sandbox(
    runs: Annotated[int, typer.Option(help="Starts of each command, plain and sandboxed.")] = 20,
    out: OutOpt = None,
) -> None:
    """The sandbox's cost per experiment: start-up time with and without bubblewrap."""
    from autoswarm.bench import options
    from autoswarm.bench import sandbox as cost

    with _options():
        options.at_least_one(("--runs", runs))
    try:
        rows = cost.measure(runs)
    except RuntimeError as e:
        raise AutoswarmError(f"cannot measure the sandbox here: {e}") from None
    text = cost.markdown(rows)
    print(text)
    if out is not None:
        options.write_section(out, "sandbox", text)


@bench_app.command("real")
def bench_real(
    strategies: Annotated[
        str,
        typer.Option(
            help="Strategies, one after the other (any of --strategy's); the last is the reference."
        ),
    ] = DEFAULT_STRATEGIES,
    slots: Annotated[str, typer.Option(help="Parallel slots of every run.")] = "1",
    budget: BudgetOpt = 300.0,
    duration: Annotated[float, typer.Option(help="Seconds of wall-clock per strategy.")] = 120.0,
    template: Annotated[str, typer.Option(help="Workspace template.")] = "cpu",
    workdir: Annotated[
        Path, typer.Option("--dir", help="Where the runs' workspaces go (one per strategy).")
    ] = Path("bench-real"),
    out: OutOpt = None,
) -> None:
    """Strategies on a real template, one after the other, same slots and wall-clock.

    E.g. --strategies auto,greedy --slots 2 --budget 60 --duration 1200 (docs/benchmarks.md).
    """
    from autoswarm.bench import options, real

    with _options():
        counts = options.counts("--slots", slots)
        names = options.strategies(strategies, knobs=False)
        options.positive(("--budget", budget), ("--duration", duration))
    runs = real.run_all(
        names,
        workdir.resolve(),
        template=template,
        workers=counts[0],
        budget_s=budget,
        duration_s=duration,
        on_result=lambda r: err.print(real.progress(r)),
    )
    text = real.markdown(runs, reference=names[-1])
    print(text)
    if out is not None:
        options.write_section(out, f"real-{template}", text)


@bench_app.command("rule")
def bench_rule(out: OutOpt = None) -> None:
    """The keep rule alone, Monte Carlo: how often candidates with no real effect are kept."""
    from autoswarm.bench.options import write_section
    from autoswarm.bench.rule import keep_rates, markdown

    text = markdown(keep_rates())
    print(text)
    if out is not None:
        write_section(out, "rule", text)


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
