"""Knobs: module-level UPPER_CASE literal assignments in the editable files.

``MATRIX_LR = 0.04`` is a knob; ``DEPTH = 8  # one of: 4, 8, 12`` is a knob whose
alternatives are listed in its comment. :func:`find_knobs` finds them with ``ast``;
:func:`set_knob` rewrites just the literal's characters so the diff of a variant
is one readable line. :func:`knob_space` infers a search range for each knob
(ints stay ints, powers of two stay powers of two, positive scales are searched on
a log scale), which ``[knobs.NAME]`` tables in autoswarm.toml can override.
"""

from __future__ import annotations

import ast
import functools
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoswarm.errors import ConfigError

Literal = bool | int | float | str

_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_ALTERNATIVES = re.compile(r"#.*?\b(?:one of|choices|options)\s*:?\s*(.+)$", re.IGNORECASE)

# CPython 3.11's ast.parse is not safe to call from two threads at once (its AST
# conversion shares a recursion counter: "SystemError: AST constructor recursion depth
# mismatch"); an LLM proposer's worker thread parses replies while the scheduler's
# thread parses the best files, so every parse here takes this lock.
_AST_LOCK = threading.Lock()


def parse_module(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source)``, one thread at a time (see ``_AST_LOCK``)."""
    with _AST_LOCK:
        return ast.parse(source, filename=filename)


def _parse_expression(text: str) -> ast.Expression:
    with _AST_LOCK:
        return ast.parse(text, mode="eval")


@dataclass(frozen=True)
class Knob:
    """One knob as it stands in a file."""

    name: str
    value: Literal
    path: str
    line: int  # 1-based
    col: int  # 0-based start of the literal on that line
    end_col: int
    alternatives: tuple[Literal, ...] = ()


def find_knobs(source: str, path: str = "train.py") -> list[Knob]:
    """All knobs of ``source`` in file order. Raises SyntaxError if it does not parse."""
    return list(_find_knobs(source, path))


@functools.lru_cache(maxsize=512)
def _find_knobs(source: str, path: str) -> tuple[Knob, ...]:
    # Proposers look at the same best files many times per second: parse each text once.
    tree = parse_module(source)
    lines = source.splitlines()
    knobs: list[Knob] = []
    for node in tree.body:
        target: ast.expr | None = None
        value: ast.expr | None = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if not isinstance(target, ast.Name) or not _NAME.match(target.id) or value is None:
            continue
        lit = _literal(value)
        if lit is None or value.lineno != value.end_lineno or value.end_col_offset is None:
            continue
        line = lines[value.lineno - 1].encode("utf-8")
        rest = line[value.end_col_offset :].decode("utf-8", errors="replace")
        alts: tuple[Literal, ...] = ()
        if m := _ALTERNATIVES.search(rest):
            alts = tuple(_parse_alt(a) for a in re.split(r"[,|/]", m.group(1)) if a.strip())
        knobs.append(
            Knob(
                name=target.id,
                value=lit,
                path=path,
                line=value.lineno,
                col=value.col_offset,
                end_col=value.end_col_offset,
                alternatives=alts,
            )
        )
    return tuple(knobs)


def _literal(node: ast.expr) -> Literal | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, bool | int | float | str):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        return -node.operand.value
    return None


@functools.lru_cache(maxsize=4096)
def _literal_text(text: str) -> Literal | None:
    """The value of a literal's source text (cached: the same few texts recur)."""
    try:
        return _literal(_parse_expression(text).body)
    except SyntaxError:
        return None


def _parse_alt(text: str) -> Literal:
    t = text.strip().strip("'\"")
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if t in ("True", "False"):
        return t == "True"
    return t


def format_literal(value: Literal, like: Literal | None = None) -> str:
    """Python source for ``value``, short and stable (0.05, not 0.05000000000000001)."""
    if isinstance(value, (bool, str)):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if value == 0:
        return "0.0"
    # The shortest text that reads back as the same float, unless that is long noise
    # such as 0.30000000000000004, which is shown to 6 significant digits instead.
    text = repr(value)
    if len(text) <= 10 and "e" not in text and 1e-4 <= abs(value) < 1e5:
        return text
    text = f"{value:.6g}"
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant}e{int(exp)}"
    elif "." not in text:
        text += ".0"
    return text


def set_knob(source: str, knob: Knob, value: Literal) -> str:
    """``source`` with ``knob``'s literal replaced by ``value``; everything else untouched."""
    lines = source.splitlines(keepends=True)
    # ast reports columns as UTF-8 byte offsets: slice bytes, not characters.
    line = lines[knob.line - 1].encode("utf-8")
    current = line[knob.col : knob.end_col].decode("utf-8")
    if _literal_text(current) != knob.value:
        raise ValueError(f"{knob.name} at line {knob.line} is not {knob.value!r} any more")
    new = format_literal(value, knob.value).encode("utf-8")
    lines[knob.line - 1] = (line[: knob.col] + new + line[knob.end_col :]).decode("utf-8")
    return "".join(lines)


def apply_values(files: Mapping[str, str], values: Mapping[str, Literal]) -> dict[str, str]:
    """Set several knobs (by name, in any editable file) at once."""
    out = dict(files)
    remaining = dict(values)
    for path in out:
        if not path.endswith(".py"):
            continue
        # Edit from the bottom so earlier positions stay valid.
        for knob in sorted(find_knobs(out[path], path), key=lambda k: k.line, reverse=True):
            if knob.name in remaining:
                out[path] = set_knob(out[path], knob, remaining.pop(knob.name))
    if remaining:
        raise KeyError(f"no knob named {', '.join(sorted(remaining))}")
    return out


def knobs_of(files: Mapping[str, str], exclude: Sequence[str] = ()) -> dict[str, Knob]:
    """Knobs of every editable Python file, by name (first definition wins)."""
    found: dict[str, Knob] = {}
    for path in sorted(files):
        if path.endswith(".py"):
            for k in find_knobs(files[path], path):
                if k.name not in exclude:
                    found.setdefault(k.name, k)
    return found


# ---------------------------------------------------------------------------
# Search spaces


@dataclass(frozen=True)
class Space:
    """Where a knob may move. ``kind`` is one of: float, int, pow2, bool, choice."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Literal, ...] = ()


# Sizes that are conventionally powers of two; small counts such as DEPTH = 4 are not.
_SIZE_NAME = re.compile(r"(BATCH|DIM|SIZE|TOKENS|WIDTH|SEQ|HIDDEN|VOCAB|EMBD|CHANNELS)")


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


# Names whose value is a fraction in [0, 1] (searched linearly, clipped).
_FRACTION = re.compile(r"(RATIO|FRAC|FRACTION|DROPOUT|PROB|BETA\d?|MOMENTUM|EMA|DECAY_RATE)$")


def infer_space(knob: Knob, override: Mapping[str, Any] | None = None) -> Space | None:
    """A search range for ``knob`` from its current value, or None if it is not searchable."""
    ov = dict(override or {})
    v = knob.value
    if "choices" in ov:
        return Space(knob.name, "choice", choices=tuple(ov["choices"]))
    if knob.alternatives:
        return Space(knob.name, "choice", choices=knob.alternatives)
    if isinstance(v, bool):
        return Space(knob.name, "bool", choices=(False, True))
    if isinstance(v, str):
        return None
    if isinstance(v, int):
        if v <= 0 and "low" not in ov:
            return None
        pow2 = _is_pow2(v) and (v >= 16 or bool(_SIZE_NAME.search(knob.name)))
        if pow2 and ov.get("kind", "pow2") == "pow2":
            low, high = ov.get("low", max(1, v // 4)), ov.get("high", v * 4)
            return Space(knob.name, "pow2", low=float(low), high=float(high), log=True)
        low = ov.get("low", max(1, math.floor(v / 2)))
        high = ov.get("high", max(v + 2, math.ceil(v * 2)))
        return Space(
            knob.name, "int", low=float(low), high=float(high), log=bool(ov.get("log", v >= 8))
        )
    # float
    if _FRACTION.search(knob.name) and 0.0 <= v <= 1.0:
        if knob.name.startswith("ADAM_BETA") or "BETA" in knob.name or "MOMENTUM" in knob.name:
            # Betas live near 1: search 1-β on a log scale through explicit bounds.
            low, high = (
                ov.get("low", max(0.5, v - (1 - v) * 2)),
                ov.get("high", min(0.999, v + (1 - v) * 0.9)),
            )
            return Space(knob.name, "float", low=float(low), high=float(high), log=False)
        return Space(
            knob.name,
            "float",
            low=float(ov.get("low", 0.0)),
            high=float(ov.get("high", min(1.0, max(0.5, 2 * v)))),
        )
    if v > 0:
        return Space(
            knob.name,
            "float",
            low=float(ov.get("low", v / 4)),
            high=float(ov.get("high", v * 4)),
            log=bool(ov.get("log", True)),
        )
    if v == 0 and "high" in ov:
        return Space(knob.name, "float", low=float(ov.get("low", 0.0)), high=float(ov["high"]))
    return None


def knob_spaces(
    files: Mapping[str, str],
    exclude: Sequence[str] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Space]:
    """Search spaces of every searchable knob; unknown override names are a config error."""
    overrides = overrides or {}
    knobs = knobs_of(files, exclude)
    unknown = sorted(set(overrides) - set(knobs))
    if unknown:
        raise ConfigError(
            f"[knobs] has settings for {', '.join(unknown)}, which the editable files do not define "
            f"as UPPER_CASE literals (knobs found: {', '.join(sorted(knobs)) or 'none'})"
        )
    out = {}
    for name, knob in knobs.items():
        space = infer_space(knob, overrides.get(name))
        if space is not None:
            out[name] = space
    return out


__all__ = [
    "Knob",
    "Space",
    "apply_values",
    "find_knobs",
    "format_literal",
    "infer_space",
    "knob_spaces",
    "knobs_of",
    "parse_module",
    "set_knob",
]
