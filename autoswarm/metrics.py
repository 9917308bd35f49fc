"""Read what a training run printed: the ``---`` summary block and the cause of a crash.

train.py ends with autoresearch's summary block::

    ---
    val_bpb:          0.997900
    training_seconds: 300.1
    ...

:func:`parse_summary` returns the *last* such block as ``{key: float}``;
:func:`crash_reason` turns an exit code and a log tail into one line a human can act on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

_KV = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(\S+)\s*$")
# A plain decimal number as Python's print writes one, or nan/inf. Not float()'s whole
# syntax: "0_9" (a typo) would read as 9.0, and "0x10" or "١" are not what train.py prints.
_NUMBER = re.compile(
    r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|infinity)", re.IGNORECASE
)

# Terminal control sequences (CSI, OSC, other ESC sequences) and control characters: what
# an experiment prints must never drive the terminal of whoever reads its reason.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves, clear screen
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks
    r"|\x1b[@-_]?"  # other ESC sequences, and a lone ESC
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # C0 (but tab and newline) and C1 controls
)


def printable(text: str) -> str:
    """``text`` without terminal control sequences or control characters."""
    return _CONTROL.sub("", text)


# How much of a log the diagnosis reads: the summary and the traceback are at the end.
TAIL_BYTES = 64_000


def read_tail(path: Path, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a log file, decoded leniently ('' if missing)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def parse_summary(text: str) -> dict[str, float]:
    """Parse the last ``---`` block of ``text`` into numeric metrics.

    Lines after the ``---`` marker of the form ``key: value`` are read until the
    first line that is neither such a pair nor blank. Values that are not plain numbers
    (:data:`_NUMBER`) are skipped; ``nan``/``inf`` are kept as floats so the caller can
    call them a crash.
    """
    return {k: float(v) for k, v in _last_block(text) if _NUMBER.fullmatch(v)}


def raw_value(text: str, key: str) -> str | None:
    """What the last summary block printed for ``key``, as text (None if no such line)."""
    return next((v for k, v in reversed(_last_block(text)) if k == key), None)


def _last_block(text: str) -> list[tuple[str, str]]:
    """The ``key: value`` pairs of the last ``---`` block, as text."""
    lines = text.splitlines()
    start = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() == "---":
            start = i
            break
    if start is None:
        return []
    out: list[tuple[str, str]] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        m = _KV.match(line)
        if not m:
            break
        out.append((m.group(1), m.group(2)))
    return out


# ---------------------------------------------------------------------------
# Crash diagnosis: the first matching rule wins, most specific first.

_OOM = re.compile(
    r"(CUDA out of memory|OutOfMemoryError|MemoryError|out of memory|Cannot allocate memory)",
    re.IGNORECASE,
)
_SYNTAX = re.compile(r"^\s*(SyntaxError|IndentationError|TabError):?\s*(.*)$", re.MULTILINE)
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)):?\s*(.*)$", re.MULTILINE)

_NAN = re.compile(r"\b(nan|NaN|NAN)\b|non-finite|diverged")

_SIGNALS = {9: "SIGKILL", 15: "SIGTERM", 6: "SIGABRT", 11: "SIGSEGV", 2: "SIGINT", 7: "SIGBUS"}


def crash_reason(
    *,
    exit_code: int | None,
    timed_out: bool,
    timeout_s: float,
    metrics: Mapping[str, float],
    metric: str,
    log_tail: str,
    error: str = "",
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> str:
    """Why a run has no usable metric, or '' if it has one.

    ``bounds``: the values the metric can take (``[metric] lower/upper``); one outside
    them is impossible, and is a crash rather than an unbeatable best.

    Order of the checks matters: a timeout explains a missing summary; a syntax
    error or an OOM explains a non-zero exit better than the exit code itself. The
    reason is :func:`printable`: it quotes the log, which the experiment wrote.
    """
    log_tail, error = printable(log_tail), printable(error)
    if error:
        return error
    if timed_out:
        return f"timeout: killed after {timeout_s:g}s (hard limit)"
    if m := _SYNTAX.search(log_tail):
        return f"syntax error: {m.group(1)} {m.group(2)}".strip()
    if _OOM.search(log_tail):
        return "out of memory: " + _last_line_matching(log_tail, _OOM)
    if (
        exit_code is not None
        and exit_code != 0
        and (line := _last_line_matching(log_tail[-4000:], _NAN))
    ):
        return f"NaN: {line}"
    if exit_code is not None and exit_code != 0:
        detail = _last_exception(log_tail)
        if exit_code < 0:
            sig = _SIGNALS.get(-exit_code, f"signal {-exit_code}")
            hint = " (the kernel's OOM killer sends SIGKILL)" if -exit_code == 9 else ""
            return f"killed by {sig}{hint}" + (f": {detail}" if detail else "")
        return f"exit code {exit_code}" + (f": {detail}" if detail else "")
    value = metrics.get(metric)
    if value is None:
        raw = raw_value(log_tail, metric)
        if raw is not None:
            return f"no metric: {metric} is {raw!r} in the summary block, not a plain number"
        if not metrics:
            return f"no metric: no '---' summary block with '{metric}:' in the log"
        return f"no metric: the summary block has no '{metric}:' line"
    if not math.isfinite(value):
        return f"{metric} is {value} (NaN or divergence)"
    lower, upper = bounds
    if not lower <= value <= upper:
        side = (
            f"below its lower bound {lower:g}"
            if value < lower
            else f"above its upper bound {upper:g}"
        )
        return (
            f"impossible metric: {metric} {value:g} is {side} ([metric] lower/upper): "
            "a broken evaluation or a made-up number"
        )
    return ""


def _last_exception(text: str) -> str:
    found = _EXC.findall(text)
    if not found:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()]
        return tail[-1][:200] if tail else ""
    name, msg = found[-1]
    return f"{name}: {msg}".strip().rstrip(":")[:200]


def _last_line_matching(text: str, pattern: re.Pattern[str]) -> str:
    for line in reversed(text.splitlines()):
        if pattern.search(line):
            return line.strip()[:200]
    return ""


__all__ = ["TAIL_BYTES", "crash_reason", "parse_summary", "read_tail"]
