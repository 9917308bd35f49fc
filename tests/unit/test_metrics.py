"""The '---' summary block and the one-line diagnosis of a crash."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autoswarm.metrics import crash_reason, parse_summary, read_tail

# autoresearch's train.py prints exactly this (CONTEXT.md).
AUTORESEARCH_BLOCK = """\
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8
"""

AUTORESEARCH_METRICS = {
    "val_bpb": 0.9979,
    "training_seconds": 300.1,
    "total_seconds": 325.9,
    "peak_vram_mb": 45060.2,
    "mfu_percent": 39.8,
    "total_tokens_M": 499.6,
    "num_steps": 953.0,
    "num_params_M": 50.3,
    "depth": 8.0,
}


# ---------------------------------------------------------------------------
# parse_summary


def test_autoresearch_block() -> None:
    assert parse_summary(AUTORESEARCH_BLOCK) == AUTORESEARCH_METRICS


def test_noise_before_the_block_is_ignored() -> None:
    log = (
        "compiling...\n"
        "step 00010 (1.2%) | loss: 4.123 | lrm: 1.00 | dt: 300ms\n"
        "val_bpb: 9.999 (an intermediate eval, not the summary)\n"
        "-----\n" + AUTORESEARCH_BLOCK
    )
    assert parse_summary(log) == AUTORESEARCH_METRICS


def test_last_block_wins() -> None:
    log = "---\nval_bpb: 1.5\nonly_first: 3\n" + "more training\n" + "---\nval_bpb: 1.25\n"
    assert parse_summary(log) == {"val_bpb": 1.25}


def test_block_ends_at_first_line_that_is_not_a_pair_and_blank_lines_are_skipped() -> None:
    log = "---\nval_bpb: 1.0\n\n   \npeak_vram_mb: 2.0\ndone training, bye\nlate_key: 5\n"
    assert parse_summary(log) == {"val_bpb": 1.0, "peak_vram_mb": 2.0}


def test_non_numeric_values_are_skipped() -> None:
    assert parse_summary("---\nmodel: gpt\nval_bpb: 1.1\ndevice: cuda:0\n") == {"val_bpb": 1.1}


def test_only_plain_numbers_are_read() -> None:
    # float() would read "0_9" as 9.0 (a typo becomes a great result) and "1_000" as 1000.
    log = "---\nval_bpb: 0_9\nsteps: 1_000\nhex: 0x10\na: +1\nb: -2.5e-3\nc: .5\nd: 7.\n"
    assert parse_summary(log) == {"a": 1.0, "b": -0.0025, "c": 0.5, "d": 7.0}


def test_a_metric_that_is_not_a_plain_number_says_so() -> None:
    r = reason(log="---\nval_bpb: 0_9\n")
    assert r == "no metric: val_bpb is '0_9' in the summary block, not a plain number"


def test_nan_and_inf_are_kept_as_floats() -> None:
    out = parse_summary("---\nval_bpb: nan\nloss: inf\nother: -inf\n")
    assert math.isnan(out["val_bpb"])
    assert out["loss"] == math.inf and out["other"] == -math.inf


@pytest.mark.parametrize("text", ["", "val_bpb: 0.99\n", "training...\nno summary at all\n"])
def test_no_block_gives_empty(text: str) -> None:
    assert parse_summary(text) == {}


def test_windows_line_endings() -> None:
    assert parse_summary(AUTORESEARCH_BLOCK.replace("\n", "\r\n")) == AUTORESEARCH_METRICS


# ---------------------------------------------------------------------------
# read_tail


def test_read_tail(tmp_path: Path) -> None:
    p = tmp_path / "log"
    p.write_bytes(b"a" * 1000 + b"\xff" + b"END")
    assert read_tail(p, limit=4).endswith("END")
    assert len(read_tail(p, limit=10)) == 10
    assert "\ufffd" in read_tail(p, limit=4)  # undecodable bytes do not raise
    assert read_tail(tmp_path / "missing") == ""


# ---------------------------------------------------------------------------
# crash_reason


def reason(
    *,
    exit_code: int | None = 0,
    timed_out: bool = False,
    metrics: dict[str, float] | None = None,
    log: str = "",
    metric: str = "val_bpb",
    error: str = "",
) -> str:
    return crash_reason(
        exit_code=exit_code,
        timed_out=timed_out,
        timeout_s=660.0,
        metrics=metrics if metrics is not None else parse_summary(log),
        metric=metric,
        log_tail=log,
        error=error,
    )


TRACEBACK_VALUE = """\
step 00100 | loss: 3.2
Traceback (most recent call last):
  File "/w/train.py", line 120, in <module>
    x = model(idx)
  File "/w/train.py", line 88, in forward
    raise ValueError("shapes (4, 8) and (9,) do not match")
ValueError: shapes (4, 8) and (9,) do not match
"""


def test_good_run_has_no_reason() -> None:
    assert reason(log="step 1\n" + AUTORESEARCH_BLOCK) == ""


def test_timeout() -> None:
    r = reason(exit_code=-9, timed_out=True, log="step 5\n")
    assert r == "timeout: killed after 660s (hard limit)"


def test_timeout_wins_over_partial_summary() -> None:
    assert reason(exit_code=-9, timed_out=True, log=AUTORESEARCH_BLOCK).startswith("timeout")


def test_backend_error_wins() -> None:
    assert reason(exit_code=None, error="could not start python: not found") == (
        "could not start python: not found"
    )


def test_syntax_error() -> None:
    log = """\
  File "/w/train.py", line 12
    LR = = 0.01
         ^
SyntaxError: invalid syntax
"""
    assert reason(exit_code=1, log=log) == "syntax error: SyntaxError invalid syntax"


def test_indentation_error() -> None:
    log = 'Traceback (most recent call last):\n  File "t.py", line 3\nIndentationError: unexpected indent\n'
    assert reason(exit_code=1, log=log) == "syntax error: IndentationError unexpected indent"


def test_cuda_out_of_memory() -> None:
    log = (
        "Traceback (most recent call last):\n"
        '  File "/w/train.py", line 120, in <module>\n'
        "    loss.backward()\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
        "GPU 0 has a total capacity of 79.10 GiB\n"
    )
    r = reason(exit_code=1, log=log)
    assert r.startswith(
        "out of memory: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"
    )


def test_memory_error() -> None:
    log = 'Traceback (most recent call last):\n  File "t.py", line 1\nMemoryError\n'
    assert reason(exit_code=1, log=log) == "out of memory: MemoryError"


def test_sigkill_hints_at_the_oom_killer() -> None:
    r = reason(exit_code=-9, log="step 1 | loss 3.0\n")
    assert r.startswith("killed by SIGKILL")
    assert "OOM killer" in r


def test_other_signal_has_no_oom_hint() -> None:
    r = reason(exit_code=-11, log="")
    assert r == "killed by SIGSEGV"


def test_nonzero_exit_names_the_exception() -> None:
    r = reason(exit_code=1, log=TRACEBACK_VALUE)
    assert r == "exit code 1: ValueError: shapes (4, 8) and (9,) do not match"


def test_nonzero_exit_without_traceback_quotes_the_last_line() -> None:
    assert reason(exit_code=2, log="starting\nbad flag --foo\n\n") == "exit code 2: bad flag --foo"
    assert reason(exit_code=3, log="") == "exit code 3"


def test_nonzero_exit_with_nan() -> None:
    log = "step 10 | loss: 3.1\nstep 20 | loss: nan\nloss is nan: diverged\n"
    r = reason(exit_code=1, log=log)
    assert r == "NaN: loss is nan: diverged"


def test_nonzero_exit_wins_over_a_printed_summary() -> None:
    # The summary printed, then the process failed at exit: still a crash.
    r = reason(exit_code=1, log=AUTORESEARCH_BLOCK + "RuntimeError: NCCL teardown\n")
    assert r.startswith("exit code 1") and "RuntimeError: NCCL teardown" in r


def test_missing_summary() -> None:
    r = reason(log="trained\n")
    assert r == "no metric: no '---' summary block with 'val_bpb:' in the log"


def test_missing_metric_key() -> None:
    r = reason(log="---\nloss: 1.0\n")
    assert r == "no metric: the summary block has no 'val_bpb:' line"


def test_other_metric_name() -> None:
    assert reason(log="---\naccuracy: 0.9\n", metric="accuracy") == ""
    assert "'accuracy:'" in reason(log="---\nval_bpb: 0.9\n", metric="accuracy")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_metric_with_exit_zero(value: str) -> None:
    r = reason(log=f"---\nval_bpb: {value}\n")
    assert r.startswith("val_bpb is") and "NaN or divergence" in r


def test_a_reason_quoting_the_log_carries_no_terminal_control_sequence() -> None:
    """A hostile log line used to reach the user's terminal raw (events, results, wait)."""
    log = "\x1b[2J\x1b]0;pwned\x07\x1b[31mRuntimeError: boom\x1b[0m\x08\x9b\n"
    r = reason(exit_code=1, log=log)
    assert r == "exit code 1: RuntimeError: boom"


def test_printable_keeps_text_and_drops_controls() -> None:
    from autoswarm.metrics import printable

    assert printable("a\tb\nc é ✓") == "a\tb\nc é ✓"
    assert printable("x\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\y\x00\x7f") == "xlinky"


def test_a_description_is_one_printable_line() -> None:
    from autoswarm.admission import one_line

    assert one_line("LR up\x1b[2J\n\x1b[31mand more\x07") == "LR up and more"


def test_an_impossible_metric_is_a_crash_not_a_best() -> None:
    """A printed val_bpb of -5.0 was kept and became an unbeatable best."""
    from autoswarm.config import MetricConfig

    bounds = MetricConfig().bounds  # val_bpb: bits per byte are never negative
    assert bounds == (0.0, math.inf)
    r = crash_reason(
        exit_code=0,
        timed_out=False,
        timeout_s=10,
        metrics={"val_bpb": -5.0},
        metric="val_bpb",
        log_tail="---\nval_bpb: -5.0\n",
        bounds=bounds,
    )
    assert r.startswith("impossible metric: val_bpb -5 is below its lower bound 0")
    assert reason(log="---\nval_bpb: 0.0\n") == ""  # the bound itself is allowed


def test_metric_bounds_come_from_the_name_or_the_config() -> None:
    from autoswarm.config import MetricConfig

    assert MetricConfig(name="accuracy").bounds == (-math.inf, math.inf)
    assert MetricConfig(name="accuracy", lower=0, upper=1).bounds == (0, 1)
    assert MetricConfig(name="train_loss").bounds[0] == 0.0
    with pytest.raises(ValueError, match=r"\[metric\] lower \(1\) must be below upper \(0\)"):
        MetricConfig(name="accuracy", lower=1, upper=0)
