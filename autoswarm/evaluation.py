"""The locked evaluation: the number a variant is judged by, measured outside its control.

Without ``[metric] evaluate`` the metric is whatever train.py prints (self-reported: a
variant can print any number). With it, every job has a second phase. train.py saves
its model where ``AUTOSWARM_MODEL`` says, and once it has exited 0 the backend runs the
evaluation command in a fresh directory holding only the run's locked files, written
after training ended. In a sandbox, the data named by ``[metric] sealed`` (the
validation and test splits) is hidden from the training process and visible to the
evaluation only, and the run directory is read-only to it.

This module holds what every backend shares: the views of the two phases, the
evaluation's directory and environment, and the pure decision :func:`judge`. It turns
the printed metrics and the evaluation's into the row's metrics, the sealed metrics
(test values: recorded, shown to the human, never used for a decision or shown to a
proposer) and, where they disagree, a ``forged`` verdict.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from autoswarm.metrics import parse_summary, printable, read_tail
from autoswarm.process import ProcessResult
from autoswarm.sandbox import Sandbox
from autoswarm.types import EvalOutcome, Evaluation, Job, Status

# The prefix a printed value gets in the row's metrics, beside the evaluated value.
PRINTED = "printed_"


# ---------------------------------------------------------------------------
# Where things are


def data_cache(env: Mapping[str, str] | None = None) -> Path:
    """The data cache prepare.py writes to: ``$AUTOSWARM_CACHE`` or ``~/.cache/autoswarm``."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    return Path(env.get("AUTOSWARM_CACHE") or home / ".cache" / "autoswarm").expanduser()


def sealed_paths(sealed: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """``[metric] sealed`` as absolute paths: relative entries are inside the data cache."""
    cache = data_cache(env)
    return tuple((cache / Path(s).expanduser()).absolute() for s in sealed)


def eval_dir(job: Job) -> Path:
    """The directory the evaluation runs in: beside the run directory, never inside it."""
    return job.workdir.with_name(job.workdir.name + ".eval")


def model_path(job: Job) -> Path:
    """Where train.py saves its model (``AUTOSWARM_MODEL``)."""
    assert job.evaluation is not None
    return job.workdir / job.evaluation.model


# ---------------------------------------------------------------------------
# The two views


def training_view(
    box: Sandbox, workdir: Path, sealed: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Sandbox:
    """The training process's view: its run directory writable, the sealed data hidden.

    ``env``: the training process's environment (its ``AUTOSWARM_CACHE`` is where the
    evaluation reads the sealed data from), else this process's.
    """
    view = box.with_writable(workdir)
    if not sealed:
        return view
    return replace(view, hidden=(*view.hidden, *sealed_paths(sealed, env)))


def evaluation_view(box: Sandbox, workdir: Path, directory: Path) -> Sandbox:
    """The evaluation's view: nothing writable, the run and evaluation directories
    readable, and the sealed data visible (it is not hidden in ``box``)."""
    return replace(box, readable=(*box.readable, workdir, directory))


def evaluation_env(base: Mapping[str, str], workdir: Path, model: str) -> dict[str, str]:
    """The evaluation's environment: the job's, and where the run and its model are."""
    return {
        **base,
        "AUTOSWARM_RUN_DIR": str(workdir),
        "AUTOSWARM_MODEL": str(workdir / model),
        "AUTOSWARM_EVALUATION": "1",
    }


def training_env(job: Job) -> dict[str, str]:
    """What training gets added to its environment: where to save its model."""
    return {"AUTOSWARM_MODEL": str(model_path(job))} if job.evaluation is not None else {}


def should_run(res: ProcessResult) -> bool:
    """True when training ended by itself with exit code 0: its model may be evaluated."""
    return res.pid is not None and res.exit_code == 0 and not res.timed_out and not res.cancelled


def write_evaluator(evaluation: Evaluation, directory: Path) -> None:
    """A fresh ``directory`` holding only the locked files, read-only.

    Written after training has ended, so nothing the training process did can be in it.
    """
    remove_evaluator(directory)
    directory.mkdir(parents=True)
    for rel, data in evaluation.files:
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def remove_evaluator(directory: Path) -> None:
    """Remove an evaluation directory (its files are read-only)."""
    if not directory.exists():
        return
    for root, dirs, _files in os.walk(directory):
        for d in dirs:
            (Path(root) / d).chmod(stat.S_IRWXU)
    directory.chmod(stat.S_IRWXU)
    shutil.rmtree(directory, ignore_errors=True)


def should_evaluate(job: Job, res: ProcessResult) -> bool:
    """True when training ended by itself with exit code 0 and the job has an evaluation."""
    return job.evaluation is not None and should_run(res)


def outcome(res: ProcessResult, log_path: Path) -> EvalOutcome:
    """What the evaluation process did, with the summary block it printed."""
    return eval_outcome(
        exit_code=res.exit_code,
        timed_out=res.timed_out,
        seconds=res.duration_s,
        error=res.error,
        cancelled=res.cancelled,
        log=read_tail(log_path),
        started=res.pid is not None,
    )


def eval_outcome(
    *,
    exit_code: int | None,
    timed_out: bool,
    seconds: float,
    log: str,
    error: str = "",
    cancelled: bool = False,
    started: bool = True,
) -> EvalOutcome:
    """An :class:`EvalOutcome` from what any backend saw, its summary block read from ``log``
    (the tail of the evaluation's output)."""
    return EvalOutcome(
        exit_code=exit_code,
        timed_out=timed_out,
        seconds=seconds,
        metrics=parse_summary(log) if started else {},
        error=error,
        log_tail=log[-4000:],
        cancelled=cancelled,
    )


# ---------------------------------------------------------------------------
# The decision


@dataclass(frozen=True, kw_only=True)
class Judged:
    """A finished job's numbers after the evaluation was taken into account.

    ``metrics`` is what the row records and proposers see; ``sealed`` what only the
    human sees (the test split); ``failure`` is set when the row cannot count
    (:attr:`Status.CRASH` for a failed evaluation, :attr:`Status.FORGED` for a printed
    metric the evaluation does not confirm), with ``reason``.
    """

    metrics: Mapping[str, float]
    sealed: Mapping[str, float] = field(default_factory=dict)
    failure: Status | None = None
    reason: str = ""


def is_sealed_key(key: str, test: str) -> bool:
    """True for a metric only the human may see: the test metric and any ``test_*`` key."""
    return key == test or key.startswith("test_")


def agree(printed: float, evaluated: float, tolerance: float) -> bool:
    """True when ``printed`` is ``evaluated`` within ``tolerance`` (relative, at least
    absolute 1e-6: the summary block prints six decimals)."""
    if not (math.isfinite(printed) and math.isfinite(evaluated)):
        return printed == evaluated or (math.isnan(printed) and math.isnan(evaluated))
    return abs(printed - evaluated) <= max(tolerance * max(1.0, abs(evaluated)), 1e-6)


def judge(
    printed: Mapping[str, float],
    evaluation: EvalOutcome | None,
    *,
    metric: str,
    test: str = "",
    tolerance: float = 1e-4,
    required: bool = False,
) -> Judged:
    """The row's numbers from what train.py printed and what the evaluation measured.

    A failed evaluation is a crash, unless train.py printed the metric: a number nothing
    confirms is forged (the three-line train.py that prints ``val_bpb: 0.5`` and trains
    nothing).

    ``required``: the job had an evaluation (``evaluation`` None then means training
    itself did not finish: the printed numbers stay for the crash diagnosis, but not the
    metric, which no evaluation confirmed). Without one, the printed metric is the metric
    (self-reported).
    """
    own = {k: v for k, v in printed.items() if not is_sealed_key(k, test)}
    if evaluation is None:
        if required:
            own.pop(metric, None)  # never judged on a number no evaluation confirmed
        return Judged(metrics=own)
    claimed = printed.get(metric)
    failed = ""
    if evaluation.error or evaluation.timed_out or evaluation.exit_code != 0:
        failed = _eval_failure(evaluation)
    elif metric not in evaluation.metrics:
        failed = f"evaluation failed: its summary block has no '{metric}:' line"
    if failed:
        if claimed is None:
            return Judged(metrics=_without(own, metric), failure=Status.CRASH, reason=failed)
        # A printed number that nothing could confirm (no model saved, a refused graph).
        return Judged(
            metrics={**_without(own, metric), PRINTED + metric: claimed},
            failure=Status.FORGED,
            reason=f"forged: train.py printed {metric} {claimed:.6f}, which the locked "
            f"evaluation could not confirm ({failed})",
        )
    measured = evaluation.metrics
    value = measured[metric]
    sealed = {k: v for k, v in measured.items() if is_sealed_key(k, test)}
    extra = {k: v for k, v in measured.items() if not is_sealed_key(k, test) and k != metric}
    if claimed is not None and not agree(claimed, value, tolerance):
        return Judged(
            metrics={
                **_without(own, metric),
                **extra,
                PRINTED + metric: claimed,
                "evaluated_" + metric: value,
            },
            sealed=sealed,
            failure=Status.FORGED,
            reason=(
                f"forged: train.py printed {metric} {claimed:.6f}, the locked evaluation of "
                f"its model measured {value:.6f}"
            ),
        )
    out = {**own, **extra, metric: value}
    if claimed is not None:
        out[PRINTED + metric] = claimed
    return Judged(metrics=out, sealed=sealed)


def _without(metrics: Mapping[str, float], key: str) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != key}


def _eval_failure(ev: EvalOutcome) -> str:
    if ev.error:
        return f"evaluation failed: {ev.error}"
    if ev.timed_out:
        return f"evaluation failed: killed at its timeout after {ev.seconds:.0f}s"
    lines = [ln.strip() for ln in printable(ev.log_tail).splitlines() if ln.strip()]
    detail = next(
        (ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else ""
    )
    return f"evaluation failed (exit code {ev.exit_code})" + (f": {detail[:200]}" if detail else "")


__all__ = [
    "PRINTED",
    "Judged",
    "agree",
    "data_cache",
    "eval_dir",
    "eval_outcome",
    "evaluation_env",
    "evaluation_view",
    "is_sealed_key",
    "judge",
    "model_path",
    "outcome",
    "remove_evaluator",
    "sealed_paths",
    "should_evaluate",
    "should_run",
    "training_env",
    "training_view",
    "write_evaluator",
]
