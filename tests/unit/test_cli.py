"""The command line: init, status, results, and a short real run of the synthetic workspace.

Error messages are checked through the installed ``autoswarm`` console script, because
``main()`` is what turns an AutoswarmError into a red ``error:`` line and exit code 2;
CliRunner calls ``app`` directly, so there the error surfaces as ``result.exception``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoswarm.cli import app
from autoswarm.config import RunConfig, load_config
from autoswarm.errors import ConfigError, RunStateError, WorkspaceError
from autoswarm.ledger import Ledger
from autoswarm.outputs import TSV_HEADER
from autoswarm.testing.synthetic import make_workspace

AUTOSWARM = Path(sys.executable).parent / "autoswarm"
runner = CliRunner()

STATUS_KEYS = {
    "tag",
    "branch",
    "metric",
    "active",
    "experiments",
    "baseline",
    "best",
    "improvement_pct",
    "noise_sigma",
    "elapsed_s",
    "experiments_per_hour",
    "busy_fraction",
    "median_duration_s",
    "sessions",
    "workers",
}
RECORD_KEYS = {
    "id",
    "commit",
    "parent",
    "status",
    "description",
    "metrics",
    "started_at",
    "finished_at",
    "slot",
    "seed",
    "reason",
}


def cli(*args: str, cwd: Path, columns: int | None = 500) -> subprocess.CompletedProcess[str]:
    """Run the console script. A wide COLUMNS keeps Rich from wrapping long tmp paths."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [str(AUTOSWARM), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def error_of(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return " ".join(proc.stderr.split())


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout


# ---------------------------------------------------------------------------
# init


def test_init_creates_a_committed_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    result = runner.invoke(app, ["init", str(ws)])
    assert result.exit_code == 0, result.output
    assert "workspace created" in result.stdout and f"autoswarm run --workspace {ws}" in " ".join(
        result.stdout.split()
    )
    for name in ("prepare.py", "train.py", "program.md", "autoswarm.toml", ".gitignore"):
        assert (ws / name).is_file(), name
    assert len(git(ws, "log", "--oneline").splitlines()) == 1
    tracked = set(git(ws, "ls-files").split())
    assert tracked == {"prepare.py", "train.py", "program.md", "autoswarm.toml", ".gitignore"}
    assert git(ws, "status", "--porcelain") == ""
    assert 'SOURCE = "stdlib"' in (ws / "prepare.py").read_text()
    assert ".autoswarm/" in (ws / ".gitignore").read_text()
    # The workspace it makes is loadable as is.
    assert load_config(ws).run.budget == 60.0


def test_init_gpu_template_defaults_to_climbmix(tmp_path: Path) -> None:
    ws = tmp_path / "gpu"
    result = runner.invoke(app, ["init", str(ws), "--template", "gpu"])
    assert result.exit_code == 0, result.output
    assert 'SOURCE = "climbmix"' in (ws / "prepare.py").read_text()
    assert "budget = 300" in (ws / "autoswarm.toml").read_text()


def test_init_into_a_non_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "full"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    msg = error_of(cli("init", str(target), cwd=tmp_path))
    assert f"{target} already exists and is not empty" in msg
    assert "choose a new directory" in msg
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]  # nothing written
    result = runner.invoke(app, ["init", str(target)])
    assert isinstance(result.exception, WorkspaceError)


def test_init_bad_template_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path / "x"), "--template", "tpu"])
    assert result.exit_code == 2 and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------
# status / results errors


@pytest.mark.parametrize("command", [["status"], ["results"], ["status", "--json"]])
def test_not_a_workspace(tmp_path: Path, command: list[str]) -> None:
    msg = error_of(cli(*command, "--workspace", str(tmp_path), cwd=tmp_path))
    assert "has no autoswarm.toml" in msg
    assert f"autoswarm init {tmp_path}" in msg
    result = runner.invoke(app, [*command, "--workspace", str(tmp_path)])
    assert isinstance(result.exception, ConfigError)


@pytest.mark.parametrize("command", [["status"], ["results", "--format", "json"]])
def test_workspace_without_runs(synth_ws: Path, command: list[str]) -> None:
    msg = error_of(cli(*command, cwd=synth_ws))  # the current directory is the default
    assert "no runs yet" in msg
    assert "autoswarm run --workspace" in msg
    result = runner.invoke(app, [*command, "--workspace", str(synth_ws)])
    assert isinstance(result.exception, RunStateError)


def test_workspace_whose_first_run_failed_to_start(synth_ws: Path) -> None:
    (synth_ws / "train.py").write_text((synth_ws / "train.py").read_text() + "# local edit\n")
    failed = error_of(cli("run", "--skip-prepare", "--no-live", cwd=synth_ws))
    assert "uncommitted changes" in failed
    assert (synth_ws / ".autoswarm" / "ledger.sqlite").exists()
    msg = error_of(cli("status", cwd=synth_ws))
    assert "None" not in msg
    assert "autoswarm run" in msg


def test_unknown_tag(synth_ws: Path) -> None:
    with Ledger(synth_ws / ".autoswarm" / "ledger.sqlite") as led:
        led.create_run(tag="a", branch="autoswarm/a", base_commit="0" * 40, config={}, now=1.0)
    msg = error_of(cli("status", "--tag", "zzz", cwd=synth_ws))
    assert "no run tagged 'zzz'" in msg


def test_config_mistakes_are_one_line_each_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "autoswarm.toml").write_text('[run]\nworkers = "2"\nbudgett = 1\n')
    proc = cli("status", "--workspace", str(tmp_path), cwd=tmp_path)
    error_of(proc)
    path = tmp_path / "autoswarm.toml"
    assert proc.stderr.splitlines() == [
        f"error: {path}: [run] workers must be an integer, got '2'; write e.g. workers = 0",
        f"{path}: unknown key(s) in [run]: budgett; known keys: "
        + ", ".join(sorted(RunConfig.model_fields))
        + "; did you mean budget?",
    ]


def test_error_line_is_not_wrapped(tmp_path: Path) -> None:
    target = tmp_path / "a-directory-with-a-reasonably-long-name"
    target.mkdir()
    proc = cli("status", "--workspace", str(target), cwd=tmp_path, columns=None)
    assert proc.returncode == 2
    assert f"Create one with: autoswarm init {target}" in proc.stderr


# ---------------------------------------------------------------------------
# run


def test_run_with_a_malformed_config_names_the_file(synth_ws: Path) -> None:
    (synth_ws / "autoswarm.toml").write_text("[run]\nbudget = = 1\n")
    msg = error_of(cli("run", "--skip-prepare", "--no-live", cwd=synth_ws))
    assert msg.startswith("error: autoswarm.toml is not valid TOML")  # relative to the cwd
    assert "line 2" in msg and "Fix the file" in msg
    msg = error_of(cli("run", "--workspace", str(synth_ws), "--skip-prepare", cwd=synth_ws.parent))
    assert f"{synth_ws / 'autoswarm.toml'} is not valid TOML" in msg
    assert not (synth_ws / ".autoswarm" / "ledger.sqlite").exists()


def test_run_with_a_bad_option_value(synth_ws: Path) -> None:
    msg = error_of(cli("run", "--skip-prepare", "--no-live", "--tag", "has space", cwd=synth_ws))
    assert "command-line options: tag 'has space'" in msg


def test_run_end_to_end_then_status_and_results(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    result = runner.invoke(
        app,
        [
            "run",
            "--workspace",
            str(ws),
            "--skip-prepare",
            "--budget",
            "0.2",
            "--max-experiments",
            "5",
            "--workers",
            "2",
            "--no-live",
            "--tag",
            "t",
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "run t ended (max experiments)" in " ".join(result.stdout.split())
    assert git(ws, "rev-parse", "--verify", "autoswarm/t").strip()

    status = runner.invoke(app, ["status", "--workspace", str(ws), "--json"])
    assert status.exit_code == 0, status.output
    st = json.loads(status.stdout)
    assert set(st) >= STATUS_KEYS
    assert {"total", "keep", "discard", "crash", "running"} <= set(st["experiments"])
    assert st["experiments"]["total"] == 5 and st["experiments"]["running"] == 0
    assert st["experiments"]["keep"] == 5  # the five baseline repeats (the default)
    assert {"val_bpb", "commit"} <= set(st["baseline"]) and st["baseline"]["runs"] == 5
    assert {"val_bpb", "commit", "id"} <= set(st["best"])
    assert isinstance(st["baseline"]["val_bpb"], float) and st["noise_sigma"] > 0
    assert st["tag"] == "t" and st["branch"] == "autoswarm/t" and st["active"] is False
    assert st["elapsed_s"] > 0 and st["experiments_per_hour"] > 0
    assert 0 < st["busy_fraction"] <= 1

    table = runner.invoke(app, ["status", "--workspace", str(ws)])
    assert table.exit_code == 0 and "busy fraction" in table.stdout

    res = runner.invoke(app, ["results", "--workspace", str(ws), "--format", "json"])
    assert res.exit_code == 0, res.output
    records = json.loads(res.stdout)
    assert len(records) == 5
    for rec in records:
        assert set(rec) >= RECORD_KEYS
        assert isinstance(rec["metrics"], dict)
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    assert [r["kind"] for r in records[:3]] == ["baseline"] * 3
    assert all(r["status"] in ("keep", "discard", "crash", "rejected") for r in records)

    since = json.loads(
        runner.invoke(
            app, ["results", "--workspace", str(ws), "--format", "json", "--since", "3"]
        ).stdout
    )
    assert [r["id"] for r in since] == [r["id"] for r in records if r["id"] > 3]

    tsv = runner.invoke(app, ["results", "--workspace", str(ws), "--format", "tsv"])
    assert tsv.exit_code == 0
    assert tsv.stdout.startswith("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")
    lines = tsv.stdout.splitlines()
    assert lines[0] == TSV_HEADER and len(lines) == 6
    assert [ln.split("\t")[3] for ln in lines[1:4]] == ["keep"] * 3
    # results.tsv in the workspace is the same view, written by the run.
    assert (ws / "results.tsv").read_text().splitlines() == lines

    table = runner.invoke(app, ["results", "--workspace", str(ws)])
    assert table.exit_code == 0 and "run t: 5 experiments" in table.stdout

    # The same run tag cannot be started twice; the message says how to resume.
    again = cli("run", "--skip-prepare", "--no-live", "--tag", "t", "--budget", "0.2", cwd=ws)
    assert "--resume --tag t" in error_of(again)


def test_a_tampered_prepare_py_is_never_run_and_never_advised_for_commit(tmp_path: Path) -> None:
    """prepare (and run, and --resume) restore the locked files from their commit first."""
    ws = make_workspace(tmp_path / "ws", budget=0.2, baseline_repeats=2)
    marker = tmp_path / "tamper-ran"
    committed = (ws / "prepare.py").read_text()
    tamper = f"open({str(marker)!r}, 'w').write('x')\n"
    for args in (["prepare"], ["run", "--no-live", "--max-experiments", "2", "--tag", "t"]):
        (ws / "prepare.py").write_text(committed + tamper)
        proc = subprocess.run(
            [str(AUTOSWARM), *args, "--workspace", str(ws)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "prepare.py differed from its commit" in proc.stderr, proc.stderr
        assert "restored from HEAD" in proc.stderr and "commit -am" not in proc.stderr
        assert not marker.exists(), "the tampered prepare.py ran"
        assert (ws / "prepare.py").read_text() == committed
        kept = sorted((ws / ".autoswarm" / "tampered").glob("*/prepare.py"))
        assert kept and kept[-1].read_text() == committed + tamper  # nothing is lost


# ---------------------------------------------------------------------------
# submit: bad input gets one line (issue 17, 5)


def test_submit_of_a_file_that_is_not_utf8_or_a_missing_diff_is_one_line(tmp_path: Path) -> None:
    """These were a UnicodeDecodeError and a FileNotFoundError traceback."""
    ws = make_workspace(tmp_path / "ws")
    bad = tmp_path / "v" / "train.py"
    bad.parent.mkdir()
    bad.write_bytes(b"LR = 0.04  # caf\xe9 in latin-1\n")
    err = error_of(cli("submit", str(bad), "--desc", "x", cwd=ws))
    assert "is not UTF-8 text (byte 16" in err and "save it as UTF-8" in err
    err = error_of(cli("submit", "--diff", str(tmp_path / "nope.diff"), cwd=ws))
    assert err == f"error: --diff {tmp_path / 'nope.diff'}: no such file"
    (tmp_path / "latin.diff").write_bytes(b"--- a/train.py\n+++ b/train.py\n+caf\xe9\n")
    assert "is not UTF-8 text" in error_of(
        cli("submit", "--diff", str(tmp_path / "latin.diff"), cwd=ws)
    )


def test_init_on_or_under_a_file_is_one_line(tmp_path: Path) -> None:
    """Both were NotADirectoryError tracebacks."""
    (tmp_path / "f").write_text("x")
    err = error_of(cli("init", str(tmp_path / "f"), cwd=tmp_path))
    assert "is a file, not a directory" in err
    err = error_of(cli("init", str(tmp_path / "f" / "ws"), cwd=tmp_path))
    assert f"{tmp_path / 'f'} is a file, so" in err


def test_a_state_directory_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    """`.autoswarm` being a file was a FileExistsError traceback."""
    ws = make_workspace(tmp_path / "ws")
    (ws / ".autoswarm").write_text("not a directory")
    err = error_of(cli("run", "--max-experiments", "1", cwd=ws))
    assert ".autoswarm is not a directory" in err and "move it aside" in err
    assert (ws / ".autoswarm").read_text() == "not a directory"  # nothing lost


def test_down_outside_a_workspace_says_so(tmp_path: Path) -> None:
    """It printed "nothing to tear down" and exited 0, as if the clusters were gone."""
    err = error_of(cli("down", "--workspace", str(tmp_path), cwd=tmp_path))
    assert "is not an autoswarm workspace" in err
