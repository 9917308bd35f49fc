"""The benchmark machinery: objectives, the simulator and the report arithmetic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoswarm.bench.objectives import OBJECTIVES
from autoswarm.bench.report import markdown_table, summarize
from autoswarm.bench.simulate import SimResult, simulate
from autoswarm.bench.systems import dispatch_gaps


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_script_prints_what_the_simulator_computes(name: str, tmp_path: Path) -> None:
    obj = OBJECTIVES[name]
    script = tmp_path / "train.py"
    script.write_text(obj.train_py())
    out = subprocess.run(
        [sys.executable, str(script)],
        env={"AUTOSWARM_BUDGET": "0", "AUTOSWARM_SEED": "7"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    printed = float(
        next(line.split()[1] for line in out.splitlines() if line.startswith("val_bpb:"))
    )
    import hashlib

    variant = hashlib.sha256(script.read_bytes()).hexdigest()[:16]
    assert printed == pytest.approx(obj.measure(dict(obj.start), 7, variant), abs=1e-6)
    # Every objective but the pure null has a crash region; every start runs.
    assert obj.true_value(dict(obj.start)) is not None
    assert obj.crash != "False" or name == "null"


@pytest.mark.parametrize(
    "strategy", ["greedy", "swarm", "random", "factorial", "optuna", "optuna-cmaes", "auto"]
)
def test_simulated_run_improves_and_reports_a_trace(strategy: str) -> None:
    # Every knob strategy against the fake backend on injected time: slots stay busy
    # and the best's true value improves within two simulated hours.
    r = simulate(OBJECTIVES["ridge"], strategy, 4, horizon_s=2 * 3600, budget_s=300)
    assert r.experiments >= 4 * 2 * 3600 / 330 * 0.8
    assert r.busy_fraction > 0.9
    assert r.best_true < r.baseline_true
    times = [t for t, _ in r.trace]
    assert times == sorted(times)
    assert r.time_to(r.best_true) is not None and r.time_to(-1.0) is None


def _result(strategy: str, slots: int, trace: tuple[tuple[float, float], ...]) -> SimResult:
    return SimResult(
        objective="o",
        strategy=strategy,
        slots=slots,
        rep=0,
        horizon_s=8 * 3600,
        experiments=10,
        busy_fraction=1.0,
        best_measured=trace[-1][1],
        best_true=trace[-1][1],
        baseline_true=trace[0][1],
        trace=trace,
        real_seconds=0.0,
    )


def test_speedup_and_gpu_hours_are_measured_against_sequential_greedy() -> None:
    seq = _result("greedy", 1, ((0.0, 1.2), (3600.0, 1.1), (7200.0, 1.0)))
    par = _result("factorial", 16, ((0.0, 1.2), (300.0, 0.99)))
    rows = {(r.strategy, r.slots): r for r in summarize([seq, par])}
    fac = rows[("factorial", 16)]
    assert fac.speedup == pytest.approx(7200 / 300)
    assert fac.gpu_hours_ratio == pytest.approx(16 * 300 / 7200)
    assert "factorial" in markdown_table(list(rows.values()))


def test_dispatch_gaps_are_per_slot() -> None:
    rows = [(0, 0.0, 2.0), (0, 2.01, 4.0), (1, 0.0, 2.5), (1, 2.52, 5.0)]
    assert dispatch_gaps(rows) == pytest.approx([0.01, 0.02])


def test_bench_search_writes_its_table_into_a_named_section(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from autoswarm.cli import app

    out = tmp_path / "b.md"
    out.write_text("# B\n\n<!-- bench:search -->\nmain table\n<!-- /bench:search -->\n")
    args = ["bench", "search", "--objectives", "bowl", "--strategies", "random", "--slots", "4"]
    args += ["--reps", "1", "--hours", "0.5", "--out", str(out), "--section", "search-64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    # The main table stays; the new one goes into its own block, with its own plot.
    assert "<!-- bench:search -->\nmain table\n<!-- /bench:search -->" in text
    block = text[text.index("<!-- bench:search-64 -->") : text.index("<!-- /bench:search-64 -->")]
    assert "| bowl | random | 4 | 1 |" in block and "| bowl | greedy | 1 | 1 |" in block
    assert "(b-search-64.png)" in block and (tmp_path / "b-search-64.png").exists()
    bad = CliRunner().invoke(app, [*args[:-1], "Search 64"])
    assert bad.exit_code != 0 and "--section" in bad.output


def test_an_objective_that_was_evaluated_still_pickles() -> None:
    import pickle

    obj = OBJECTIVES["bowl"]
    value = obj.true_value({})
    copy = pickle.loads(pickle.dumps(obj))  # to a worker process of bench search --jobs
    assert copy.true_value({}) == value and copy == obj


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "--strategies", "random,gready"], "unknown knob strategy 'gready'"),
        (["search", "--strategies", "llm"], "unknown knob strategy 'llm'"),
        (["search", "--slots", "4,x"], "--slots '4,x'"),
        (["search", "--slots", "0"], "--slots '0'"),
        (["search", "--extra", "auto@0"], "--extra 'auto@0'"),
        (["search", "--reps", "0"], "--reps 0"),
        (["search", "--hours", "-1"], "--hours -1"),
        (["search", "--table", "nois"], "--table 'nois'"),
        (["systems", "--backend", "dask"], "--backend 'dask'"),
        (["real", "--strategies", "auto,gready"], "unknown strategy 'gready'"),
        (["real", "--strategies", ","], "at least one strategy"),
        (["sarch"], "No such command 'sarch'"),
    ],
)
def test_bad_bench_options_fail_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from autoswarm.cli import app

    out, real_dir = tmp_path / "b.md", tmp_path / "real"
    # --dir is an option of `bench real` alone (each kind is its own command).
    where = ["--dir", str(real_dir)] if args[0] == "real" else []
    result = CliRunner().invoke(
        app, ["bench", *args, "--out", str(out), *where], terminal_width=400
    )
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    # Nothing ran: no greedy reference, no table, no workspaces.
    assert "experiments" not in result.output
    assert not out.exists() and not real_dir.exists()


def test_bench_search_defaults_cover_every_objective_and_the_default_strategy() -> None:
    import inspect

    from autoswarm.cli import bench_search
    from autoswarm.config import KNOB_STRATEGIES, RunConfig

    params = inspect.signature(bench_search).parameters
    # By table: the main one on the homoscedastic objectives, the noise one on the rest.
    from autoswarm.bench.objectives import NOISE_OBJECTIVES, SEARCH_OBJECTIVES

    assert params["objectives"].default == ""
    assert sorted(SEARCH_OBJECTIVES + NOISE_OBJECTIVES) == sorted(OBJECTIVES)
    strategies = params["strategies"].default.split(",")
    assert RunConfig().strategy in strategies and set(strategies) <= set(KNOB_STRATEGIES)


def _documented_bench_commands() -> list[list[str]]:
    """Every ``autoswarm bench …`` line of a code block in docs/ and README.md, as argv."""
    import shlex

    root = Path(__file__).resolve().parents[2]
    found = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        fenced = False
        lines = iter(doc.read_text().splitlines())
        for line in lines:
            if line.startswith("```"):
                fenced = not fenced
                continue
            if not (fenced and line.startswith("autoswarm bench ")):
                continue
            while line.endswith("\\"):
                line = line[:-1] + next(lines)
            found.append(shlex.split(line)[1:])
    return found


def test_the_documented_bench_command_lines_still_parse() -> None:
    """Each kind is its own command now; every documented option must still be accepted."""
    import typer

    from autoswarm.cli import app

    commands = _documented_bench_commands()
    assert {argv[1] for argv in commands} == {"search", "systems", "real", "rule", "sandbox"}
    root = typer.main.get_command(app)
    for argv in commands:
        ctx = root.make_context("autoswarm", list(argv))
        kind = root.get_command(ctx, "bench").get_command(ctx, argv[1])  # type: ignore[attr-defined]
        assert kind is not None, argv
        # Parses and converts every option (a usage error raises) but runs nothing.
        parsed = kind.make_context(argv[1], argv[2:], parent=ctx)
        assert parsed.params and not parsed.args, argv


def test_an_option_of_another_kind_is_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from autoswarm.cli import app

    result = CliRunner().invoke(app, ["bench", "systems", "--dir", str(tmp_path / "real")])
    assert result.exit_code == 2 and "No such option" in result.output
    assert not (tmp_path / "real").exists()
    listing = CliRunner().invoke(app, ["bench", "--help"]).output
    assert all(kind in listing for kind in ("search", "systems", "real", "rule"))


def test_bench_sandbox_times_plain_and_sandboxed_starts() -> None:
    from autoswarm.bench import sandbox as cost

    (row,) = cost.measure(runs=2, commands={"python -c pass": "pass"})
    assert row.runs == 2 and row.plain_median_s > 0 and row.sandboxed_median_s > 0
    assert row.overhead_s == row.sandboxed_median_s - row.plain_median_s
    table = cost.markdown([row])
    assert table.count("\n") == 3 and "`python -c pass` | 2 |" in table


def test_bench_search_keeps_what_finished_and_does_not_run_it_again(tmp_path: Path) -> None:
    from autoswarm.bench import search

    plan = search.search_plan(
        objectives="bowl", strategies="random", slots="4", extra="", reps=1, hours=0.25,
        budget=300.0, jobs=1, section="search", table="main",
    )  # fmt: skip
    keep = tmp_path / "kept.pkl"
    first = search.run(plan, keep=keep)
    version = search.code_version()
    assert len(search.kept_results(keep, version)) == len(plan.tasks()) == 2
    seen: list[str] = []
    again = search.run(plan, on_result=lambda r: seen.append(r.strategy), keep=keep)
    assert again == first and seen == ["greedy", "random"]  # from the file, in plan order
    assert search.kept_results(keep, "another-version") == {}  # never mixed across versions
    with keep.open("ab") as f:
        f.write(b"\x80cut")  # a write cut short by a kill
    assert len(search.kept_results(keep, version)) == 2
