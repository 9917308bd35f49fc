"""Checks of the ``autoswarm bench`` options, and where a benchmark's table is written.

Every option is checked before anything runs: a typo must not cost a 20-minute run.
Each check raises :class:`ValueError` with the message the command line shows (the
CLI turns it into a usage error, exit code 2). :func:`write_section` puts a table
into its named block of a markdown file (``docs/benchmarks.md``), leaving the others.
"""

from __future__ import annotations

from pathlib import Path

from autoswarm.proposers.registry import KNOB_STRATEGIES, STRATEGIES

# What `autoswarm bench search` and `bench real` compare by default.
DEFAULT_STRATEGIES = "greedy,random,factorial,optuna,swarm,auto"

# ---------------------------------------------------------------------------
# Checks


def csv(text: str) -> list[str]:
    """The comma-separated items of ``text``, stripped, empty ones dropped."""
    return [x.strip() for x in text.split(",") if x.strip()]


def counts(option: str, text: str) -> list[int]:
    """Comma-separated positive integers (slot counts), or a ValueError naming ``option``."""
    items = csv(text)
    if not items or not all(x.isdigit() and int(x) >= 1 for x in items):
        raise ValueError(
            f"{option} {text!r}: write positive whole numbers separated by commas, e.g. 1,4,16"
        )
    return [int(x) for x in items]


def strategies(text: str, *, knobs: bool) -> list[str]:
    """The strategies of ``--strategies``: registered ones (knob strategies if ``knobs``), at least one."""
    names = csv(text)
    allowed = KNOB_STRATEGIES if knobs else STRATEGIES
    for name in names:
        if name not in allowed:
            raise ValueError(
                f"--strategies: unknown {'knob ' if knobs else ''}strategy {name!r}; "
                f"choose from {', '.join(allowed)}"
            )
    if not names:
        raise ValueError("--strategies: name at least one strategy, e.g. auto,greedy")
    return names


def positive(*options: tuple[str, float]) -> None:
    """Each ``(option, value)`` is greater than 0."""
    for opt, value in options:
        if not value > 0:
            raise ValueError(f"{opt} {value:g}: must be greater than 0")


def at_least_one(*options: tuple[str, int]) -> None:
    """Each ``(option, number)`` is 1 or more."""
    for opt, number in options:
        if number < 1:
            raise ValueError(f"{opt} {number}: must be at least 1")


# ---------------------------------------------------------------------------
# Output


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the block between <!-- bench:NAME --> markers in a markdown file."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text)


__all__ = [
    "DEFAULT_STRATEGIES",
    "at_least_one",
    "counts",
    "csv",
    "positive",
    "strategies",
    "write_section",
]
