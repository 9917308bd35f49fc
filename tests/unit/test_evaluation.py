"""Unit tests of the locked evaluation's decisions and views (autoswarm.evaluation, heldout)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autoswarm.config import Config, render_default_config
from autoswarm.errors import ConfigError
from autoswarm.evaluation import (
    agree,
    evaluation_view,
    judge,
    remove_evaluator,
    sealed_paths,
    training_view,
    write_evaluator,
)
from autoswarm.heldout import gap_sigma, heldout_record
from autoswarm.ledger import HeldOut
from autoswarm.sandbox import Sandbox, bwrap_argv
from autoswarm.types import Direction, EvalOutcome, Evaluation, Job, Kind, Status


def ok(**metrics: float) -> EvalOutcome:
    return EvalOutcome(exit_code=0, timed_out=False, seconds=1.0, metrics=metrics)


# ---------------------------------------------------------------------------
# judge: printed vs evaluated


def test_an_honest_print_agrees_and_the_evaluated_value_is_the_metric() -> None:
    j = judge(
        {"val_bpb": 1.234567, "training_seconds": 60.0},
        ok(val_bpb=1.2345671, test_bpb=1.25, eval_seconds=2.0),
        metric="val_bpb",
        test="test_bpb",
    )
    assert j.failure is None
    assert j.metrics == {
        "val_bpb": 1.2345671,
        "printed_val_bpb": 1.234567,
        "training_seconds": 60.0,
        "eval_seconds": 2.0,
    }
    assert j.sealed == {"test_bpb": 1.25}


def test_a_print_that_differs_beyond_tolerance_is_forged_with_both_numbers() -> None:
    j = judge({"val_bpb": 0.5}, ok(val_bpb=1.2, test_bpb=1.3), metric="val_bpb", test="test_bpb")
    assert j.failure is Status.FORGED
    assert "0.500000" in j.reason and "1.200000" in j.reason
    assert "val_bpb" not in j.metrics  # nothing to decide on
    assert j.metrics["printed_val_bpb"] == 0.5 and j.metrics["evaluated_val_bpb"] == 1.2
    assert j.sealed == {"test_bpb": 1.3}


def test_a_small_scaling_of_the_loss_is_forged_too() -> None:
    j = judge({"val_bpb": 1.2 * 0.999}, ok(val_bpb=1.2), metric="val_bpb")
    assert j.failure is Status.FORGED


def test_no_printed_metric_is_fine_when_the_split_is_sealed() -> None:
    j = judge({"num_steps": 10.0}, ok(val_bpb=1.1), metric="val_bpb")
    assert j.failure is None and j.metrics == {"val_bpb": 1.1, "num_steps": 10.0}


def test_a_printed_test_value_is_never_trusted_nor_shown() -> None:
    j = judge({"val_bpb": 1.0, "test_bpb": 0.1, "test_x": 2.0}, ok(val_bpb=1.0), metric="val_bpb")
    assert "test_bpb" not in j.metrics and "test_x" not in j.metrics and j.sealed == {}


@pytest.mark.parametrize(
    ("outcome", "says"),
    [
        (
            EvalOutcome(
                exit_code=1,
                timed_out=False,
                seconds=1.0,
                log_tail="prepare.py: error: no model at /r/model.pt2\n",
            ),
            "no model",
        ),
        (
            EvalOutcome(exit_code=None, timed_out=False, seconds=0.0, error="could not start"),
            "could not start",
        ),
        (EvalOutcome(exit_code=-9, timed_out=True, seconds=600.0), "timeout"),
        (ok(test_bpb=1.0), "no 'val_bpb:' line"),
    ],
)
def test_a_failed_evaluation_is_a_crash_that_says_why(outcome: EvalOutcome, says: str) -> None:
    j = judge({"num_steps": 3.0}, outcome, metric="val_bpb")
    assert j.failure is Status.CRASH and says in j.reason and "evaluation failed" in j.reason
    assert "val_bpb" not in j.metrics
    # The same failure after train.py printed the metric: a claim nothing confirms.
    j = judge({"val_bpb": 0.5}, outcome, metric="val_bpb")
    assert j.failure is Status.FORGED and says in j.reason and "could not confirm" in j.reason
    assert j.metrics == {"printed_val_bpb": 0.5}


def test_without_an_evaluation_the_print_is_the_metric_unless_one_was_required() -> None:
    assert judge({"val_bpb": 1.0}, None, metric="val_bpb").metrics == {"val_bpb": 1.0}
    assert judge({"val_bpb": 1.0}, None, metric="val_bpb", required=True).metrics == {}


def test_agree_is_relative_with_a_print_precision_floor() -> None:
    assert agree(1.0000004, 1.0, 1e-9)  # six printed decimals
    assert agree(100.0, 100.009, 1e-4) and not agree(100.0, 100.02, 1e-4)
    assert not agree(math.nan, 1.0, 1e-4) and agree(math.inf, math.inf, 1e-4)


# ---------------------------------------------------------------------------
# The two views


def job(tmp: Path, sealed: tuple[str, ...] = ("src/sealed",)) -> Job:
    return Job(
        experiment_id=7,
        workdir=tmp / "ws" / ".autoswarm" / "runs" / "00007",
        argv=("python", "train.py"),
        env={},
        timeout_s=10,
        slot=0,
        log_path=tmp / "ws" / ".autoswarm" / "logs" / "00007.log",
        budget_s=1,
        evaluation=Evaluation(argv=("python", "prepare.py", "evaluate"), files=(), sealed=sealed),
    )


def test_sealed_data_is_hidden_from_training_even_inside_the_readable_cache(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    (cache / "src" / "sealed").mkdir(parents=True)
    env = {"AUTOSWARM_CACHE": str(cache), "HOME": str(tmp_path)}
    assert sealed_paths(["src/sealed", "/abs/x"], env) == (cache / "src" / "sealed", Path("/abs/x"))
    j = job(tmp_path)
    j.workdir.mkdir(parents=True)
    box = Sandbox(hidden=(tmp_path / "ws",), readable=(cache,))
    argv = bwrap_argv(
        "bwrap", training_view(box, j.workdir, ("src/sealed",), env), ["python"], j.workdir
    )
    sealed = str(cache / "src" / "sealed")
    # The cache is bound read-only, and the sealed directory is hidden again after it.
    last = len(argv) - 1 - argv[::-1].index(sealed)
    assert last > argv.index(str(cache)) and argv[last - 1] == "--tmpfs"
    # The evaluation sees it (not hidden), and the run directory only read-only.
    ev = bwrap_argv(
        "bwrap",
        evaluation_view(box, j.workdir, j.workdir.with_name("00007.eval")),
        ["python"],
        j.workdir,
    )
    assert sealed not in ev
    w = str(j.workdir)
    binds = [ev[i : i + 3] for i in range(len(ev) - 2)]
    assert ["--ro-bind", w, w] in binds and "--bind" not in ev


def test_the_evaluator_directory_holds_only_the_locked_files_read_only(tmp_path: Path) -> None:
    ev = Evaluation(argv=("python",), files=(("prepare.py", b"x = 1\n"), ("lib/m.py", b"")))
    d = tmp_path / "00007.eval"
    d.mkdir()
    (d / "stale.py").write_text("left by someone")
    write_evaluator(ev, d)
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()) == [
        "lib/m.py",
        "prepare.py",
    ]
    assert (d / "prepare.py").stat().st_mode & 0o222 == 0  # read-only (root could still write)
    remove_evaluator(d)
    assert not d.exists()


# ---------------------------------------------------------------------------
# Configuration


def test_the_evaluation_must_run_a_locked_script() -> None:
    good = {"metric": {"evaluate": ["{python}", "prepare.py", "evaluate"]}}
    assert Config.model_validate(good).metric.evaluate[1] == "prepare.py"
    with pytest.raises(ConfigError, match=r"evaluate runs eval\.py, which \[workspace\] locked"):
        from autoswarm.config import _checked

        _checked(Config, {"metric": {"evaluate": ["python", "eval.py"]}}, "autoswarm.toml")


def test_the_template_config_turns_the_locked_evaluation_on() -> None:
    import tomllib

    cfg = Config.model_validate(tomllib.loads(render_default_config(budget=60, sealed=("s/x",))))
    assert cfg.metric.evaluate and cfg.metric.sealed == ("s/x",) and cfg.metric.test == "test_bpb"
    plain = Config.model_validate(tomllib.loads(render_default_config(budget=60)))
    assert plain.metric.evaluate == ()  # self-reported, as before


# ---------------------------------------------------------------------------
# heldout: the val − test gap and the overfitting warning


def row(i: int, commit: str, val: float, test: float, kind: Kind = Kind.CANDIDATE) -> HeldOut:
    return HeldOut(
        id=i, kind=kind, status=Status.KEEP, commit=commit, value=val, sealed={"test_bpb": test}
    )


def test_gap_growth_beyond_two_standard_errors_warns() -> None:
    base = [
        row(i, "b", 1.00 + d, 1.01 + d, Kind.BASELINE) for i, d in enumerate((0, 0.001, -0.001))
    ]
    # The best looks 0.05 better on validation than on test; the baseline's gap was 0.01.
    best = [row(10 + i, "k", 0.90 + d, 0.96 + d) for i, d in enumerate((0, 0.001, -0.001))]
    rec = heldout_record(
        base + best,
        test="test_bpb",
        direction=Direction.MINIMIZE,
        base_commit="b",
        best_commit="k",
        keeps=[(10, "k", "LR up")],
    )
    assert rec is not None
    assert rec["baseline"]["gap"] == pytest.approx(0.01) and rec["best"]["gap"] == pytest.approx(
        0.06
    )
    assert rec["gap_growth"] == pytest.approx(0.05) and "overfitting" in rec["warning"]
    assert rec["keeps"][0]["id"] == 10 and rec["keeps"][0]["test"] == pytest.approx(0.96)


def test_a_gap_within_its_noise_does_not_warn() -> None:
    base = [row(i, "b", 1.0 + d, 1.01 - d, Kind.BASELINE) for i, d in enumerate((0, 0.01, -0.01))]
    best = [row(10 + i, "k", 0.9 + d, 0.912 - d) for i, d in enumerate((0, 0.01, -0.01))]
    rec = heldout_record(
        base + best, test="test_bpb", direction=Direction.MINIMIZE, base_commit="b", best_commit="k"
    )
    assert rec is not None and rec["warning"] == "" and rec["gap_growth"] == pytest.approx(0.002)


def test_failed_rows_and_missing_values_are_left_out() -> None:
    crash = HeldOut(id=1, kind=Kind.CANDIDATE, status=Status.FORGED, commit="k", value=None,
                    sealed={"test_bpb": 0.1})  # fmt: skip
    assert (
        heldout_record(
            [crash], test="test_bpb", direction=Direction.MINIMIZE, base_commit="b", best_commit="k"
        )
        is None
    )
    assert gap_sigma([[(1.0, 1.1)]], Direction.MINIMIZE) is None  # one run: no spread


def test_maximize_gaps_point_the_other_way() -> None:
    rows = [row(1, "b", 0.80, 0.78, Kind.BASELINE), row(2, "b", 0.81, 0.79, Kind.BASELINE)]
    rec = heldout_record(
        rows, test="test_bpb", direction=Direction.MAXIMIZE, base_commit="b", best_commit=None
    )
    assert rec is not None and rec["baseline"]["gap"] == pytest.approx(0.02)
