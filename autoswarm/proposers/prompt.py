"""Prompts for code-editing language models, and the parsing of their replies.

Pure functions, no network: :mod:`autoswarm.proposers.llm` sends what
:func:`build_prompt` writes and hands the answer to :func:`parse_reply`, which
either returns the new file contents or raises an error whose message is sent
back to the model once (:func:`repair_prompt`).

The reply format (taught by :data:`SYSTEM_PROMPT`) is deliberately simple, and
parsed tolerantly because models drift from it::

    DESCRIPTION: raise the matrix learning rate to 0.05
    ```diff
    --- a/train.py
    +++ b/train.py
    @@ -10,1 +10,1 @@
    -MATRIX_LR = 0.04
    +MATRIX_LR = 0.05
    ```

or, instead of the diff, the whole new file in a block that names its path::

    ```python train.py
    ...the complete file...
    ```
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from autoswarm.errors import LockedFileError, PatchError
from autoswarm.knobs import parse_module
from autoswarm.patching import apply_diff
from autoswarm.types import Direction, Experiment, Kind, Status

# ---------------------------------------------------------------------------
# What the model is told

SYSTEM_PROMPT = """\
You are an ML researcher improving a training script by experiment. Every proposal \
you make is run for a fixed time budget and judged by one metric; gains smaller than \
the measured seed-to-seed noise are discarded. Propose ONE focused change per reply: \
an idea you expect to improve the metric (architecture, optimizer, schedule, \
hyperparameters, efficiency), different from what was already tried or is running.

Reply in exactly this format and nothing else:

DESCRIPTION: <one line, at most 100 characters, saying what the change is>
```diff
--- a/<file>
+++ b/<file>
@@ -<line>,<count> +<line>,<count> @@
 <context line>
-<removed line>
+<added line>
```

Rules:
- The diff is a unified diff against the files exactly as shown, with a/ and b/ \
prefixes and at least one unchanged context line around each change.
- For large rewrites you may instead give the complete new file in a block that \
names it: ```python train.py (then the whole file, then ```).
- Change only the editable files listed. Never touch other files.
- The result must be valid Python that runs to the end and prints the summary block.
"""

REPAIR_PROMPT = """\
Your reply could not be used: {error}

Reply again in the required format: a DESCRIPTION: line, then a ```diff block \
against the files exactly as shown (or a ```python <path> block with the complete \
new file). Change only the editable files: {editable}."""


def repair_prompt(error: str, editable: Collection[str]) -> str:
    """The follow-up message that sends a parse/validation error back to the model."""
    return REPAIR_PROMPT.format(error=error, editable=", ".join(sorted(editable)))


# ---------------------------------------------------------------------------
# Building the prompt


@dataclass(frozen=True, kw_only=True)
class PromptInput:
    """Everything the prompt is made of (a plain record, so building it is a pure function).

    Attributes:
        program: the workspace's program.md ("" when absent).
        files: the current best editable files (path -> text).
        editable / locked: which files may and may not change.
        metric / direction: what is optimised.
        best_value / noise_sigma: where the run stands (None before the baseline).
        history: finished experiments, oldest first.
        running: experiments in flight now.
        pending: descriptions of proposals made but not yet running (parallel requests).
        variant: which of ``variants`` parallel requests this is (0-based).
        effects: a short text of estimated knob effects ("" when none).
    """

    program: str
    files: Mapping[str, str]
    editable: Sequence[str]
    locked: Sequence[str] = ()
    metric: str = "val_bpb"
    direction: Direction = Direction.MINIMIZE
    best_value: float | None = None
    noise_sigma: float | None = None
    history: Sequence[Experiment] = ()
    running: Sequence[Experiment] = ()
    pending: Sequence[str] = ()
    variant: int = 0
    variants: int = 1
    effects: str = ""


HISTORY_LIMIT = 40  # most recent experiments listed one per line
ERROR_TAIL = 300  # characters of a crash reason shown to the model
PROGRAM_LIMIT = 6000  # characters of program.md


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.6g}"


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def history_lines(
    history: Sequence[Experiment], metric: str, *, limit: int = HISTORY_LIMIT
) -> list[str]:
    """One line per finished experiment, most recent last (baselines summarised as one line)."""
    base = [e.value(metric) for e in history if e.kind is Kind.BASELINE]
    base_vals = [v for v in base if v is not None]
    lines: list[str] = []
    if base_vals:
        mean = sum(base_vals) / len(base_vals)
        lines.append(f"baseline (unmodified files, {len(base_vals)} runs): {metric} {mean:.6g}")
    cands = [e for e in history if e.kind is Kind.CANDIDATE]
    skipped = max(0, len(cands) - limit)
    if skipped:
        lines.append(f"({skipped} older experiments not shown)")
    for e in cands[-limit:]:
        desc = _one_line(e.description, 120)
        if e.status.failed:
            reason = e.reason.strip()
            tail = reason[-ERROR_TAIL:] if reason else "no reason recorded"
            lines.append(
                f"#{e.id} {e.status.value}: {desc} -- error: {_one_line(tail, ERROR_TAIL + 20)}"
            )
        elif e.status is Status.REJECTED:
            lines.append(f"#{e.id} rejected: {desc} -- {_one_line(e.reason, 160)}")
        else:
            lines.append(f"#{e.id} {e.status.value}: {desc} -- {metric} {_fmt(e.value(metric))}")
    return lines


def effects_text(history: Sequence[Experiment], metric: str, sigma: float | None) -> str:
    """Estimated knob effects from factorial waves, or "" when the history has none."""
    if not any(isinstance(e.meta.get("design"), Mapping) for e in history):
        return ""
    from autoswarm.analysis.effects import effects_from_experiments  # numpy/statsmodels: lazy

    table = effects_from_experiments(list(history), metric, sigma, interactions=False)
    rows = sorted(table.terms, key=lambda t: -abs(t.estimate))[:12]
    return "\n".join(
        f"{t.term}: {t.estimate:+.4g} (stderr {t.stderr:.2g}) from one step down to one step up"
        for t in rows
    )


def build_prompt(inp: PromptInput, *, max_chars: int = 120_000) -> str:
    """The user message: goal, files, history, what runs now. At most ``max_chars`` if possible.

    The files are always included whole (a diff needs them); the history, then
    program.md, are shortened first when the prompt is too long.
    """
    better = "lower" if inp.direction is Direction.MINIMIZE else "higher"
    head = [
        f"Goal: make `{inp.metric}` {better}. Current best: {_fmt(inp.best_value)}; "
        f"seed-to-seed noise sigma: {_fmt(inp.noise_sigma)}.",
        f"Editable files: {', '.join(inp.editable)}."
        + (f" Locked (never change): {', '.join(inp.locked)}." if inp.locked else ""),
    ]
    files = []
    for path in inp.editable:
        if path in inp.files:
            files.append(f"=== {path} ===\n```\n{inp.files[path].rstrip()}\n```")
    live = [f"#{e.id}: {_one_line(e.description, 120)}" for e in inp.running]
    live += [f"(being prepared) {_one_line(d, 120)}" for d in inp.pending]
    tail = []
    if live:
        tail.append("## Running now (do NOT propose these or near-duplicates)\n" + "\n".join(live))
    if inp.variants > 1:
        tail.append(
            f"You are one of {inp.variants} parallel proposers (number {inp.variant + 1}); "
            "pick a direction the others are unlikely to pick."
        )
    tail.append("Reply with DESCRIPTION: and one ```diff block (or one whole-file block).")

    program = inp.program.strip()
    hist = history_lines(inp.history, inp.metric)

    def render(program: str, hist: list[str]) -> str:
        parts = list(head)
        if program:
            parts.append("## Instructions (program.md)\n" + program)
        parts.append("## Current best files\n" + "\n\n".join(files))
        if hist:
            parts.append("## Experiments so far (oldest first)\n" + "\n".join(hist))
        if inp.effects:
            parts.append("## Estimated effects of knobs\n" + inp.effects)
        parts.extend(tail)
        return "\n\n".join(parts) + "\n"

    if len(program) > PROGRAM_LIMIT:
        program = program[:PROGRAM_LIMIT] + "\n…(program.md truncated)"
    text = render(program, hist)
    while len(text) > max_chars and len(hist) > 1:
        hist = hist[: 1 if hist[0].startswith("baseline") else 0] + hist[len(hist) // 2 + 1 :]
        text = render(program, ["(older experiments not shown)", *hist])
    if len(text) > max_chars and program:
        text = render(program[:500] + "\n…(program.md truncated)", hist)
    return text


# ---------------------------------------------------------------------------
# Reading the reply


@dataclass(frozen=True)
class ParsedReply:
    """A usable reply: the one-line description and the changed files' new texts."""

    description: str
    files: dict[str, str]


_DESC = re.compile(r"^[\s>*_#-]*description\s*[*_]*\s*:\s*[*_]*\s*(.+?)\s*$", re.IGNORECASE)
_FENCE_OPEN = re.compile(r"^\s*(`{3,}|~{3,})\s*([^\s`]*)\s*([^\s`]*)\s*$")
_FILE_LINE = re.compile(
    r"^[\s>*#-]*(?:file|path)?\s*[*_]*:?\s*[*_`]*([\w./-]+\.\w+)[*_`:]*\s*$", re.IGNORECASE
)


@dataclass(frozen=True)
class _Block:
    info: str
    path: str  # from the fence's second word, or a "FILE: x" line just above
    body: str


def _blocks(text: str) -> tuple[list[_Block], list[str]]:
    """Fenced code blocks (in order) and the lines outside them."""
    lines = text.splitlines()
    blocks: list[_Block] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            prose.append(lines[i])
            i += 1
            continue
        fence, info, second = m.group(1), m.group(2), m.group(3)
        path = second
        if not path and ":" in info:  # ```python:train.py
            info, _, path = info.partition(":")
        if not path and "." in info and "/" not in info and info.lower() not in ("diff", "patch"):
            info, path = "", info  # ```train.py
        if not path and prose:
            fm = _FILE_LINE.match(prose[-1])
            if fm:
                path = fm.group(1)
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence (or the end of an unterminated block)
        blocks.append(_Block(info.lower(), path.removeprefix("./"), "\n".join(body) + "\n"))
    return blocks, prose


def _looks_like_diff(text: str) -> bool:
    return bool(re.search(r"^--- \S", text, re.M) and re.search(r"^\+\+\+ \S", text, re.M)) and (
        "\n@@" in "\n" + text
    )


def _description(prose: Sequence[str], changed: Collection[str]) -> str:
    for line in prose:
        m = _DESC.match(line)
        if m:
            return _one_line(m.group(1).strip("*_` "), 200)
    for line in prose:  # no DESCRIPTION: line; the first sentence of prose will do
        s = line.strip(" #*>-")
        if s and not _looks_like_diff(s) and not s.startswith(("@@", "+", "-")):
            return _one_line(s, 200)
    return f"LLM edit of {', '.join(sorted(changed))}"


def check_python(path: str, text: str) -> None:
    """Raise PatchError if a ``.py`` file does not parse (with the line and the message)."""
    if not path.endswith(".py"):
        return
    try:
        parse_module(text, filename=path)
    except SyntaxError as e:
        line = (e.text or "").strip()
        raise PatchError(
            f"{path} does not parse after your change: line {e.lineno}: {e.msg}"
            + (f" ({line!r})" if line else "")
        ) from None


def parse_reply(text: str, files: Mapping[str, str], editable: Collection[str]) -> ParsedReply:
    """Read a model's reply into new file contents, validated.

    Args:
        text: the reply.
        files: the files the model was shown (path -> text).
        editable: paths the reply may change.

    Returns:
        The description and the changed files (only those that differ).

    Raises:
        LockedFileError: the reply changes a file that is not editable.
        PatchError: no usable edit, a diff that does not apply, a Python file that does
            not parse, or nothing changed. The message is written for the model.
    """
    blocks, prose = _blocks(text)
    current = {p: files[p] for p in editable if p in files}
    changed: set[str] = set()
    found = False
    if not blocks and _looks_like_diff(text):  # a bare diff without fences
        blocks = [_Block("diff", "", text)]
    for b in blocks:
        if b.info in ("diff", "patch", "udiff") or (not b.path and _looks_like_diff(b.body)):
            found = True
            new = apply_diff(current, b.body, allowed=editable)
            current.update(new)
            changed.update(new)
            continue
        path = b.path
        if not path:
            # A bare code block: accept it as the whole file only when there is exactly one
            # editable file of its kind and the block is long enough to be a whole file.
            candidates = [p for p in editable if p.endswith(".py")]
            if (
                b.info in ("python", "py", "")
                and len(candidates) == 1
                and candidates[0] in files
                and len(b.body.splitlines()) >= 0.5 * len(files[candidates[0]].splitlines())
            ):
                path = candidates[0]
            else:
                continue  # an illustration, not an edit
        if path not in editable:
            raise LockedFileError(
                f"the reply changes {path!r}, which is not editable (editable: {', '.join(sorted(editable))})"
            )
        found = True
        current[path] = b.body
        changed.add(path)
    if not found:
        raise PatchError(
            "the reply has no edit: expected a ```diff block with a unified diff, "
            "or a ```python <path> block with a complete file"
        )
    out = {p: current[p] for p in sorted(changed) if current[p] != files.get(p)}
    if not out:
        raise PatchError("the edit changes nothing: propose an actual change")
    for path, new_text in out.items():
        check_python(path, new_text)
    return ParsedReply(_description(prose, out), out)


__all__ = [
    "REPAIR_PROMPT",
    "SYSTEM_PROMPT",
    "ParsedReply",
    "PromptInput",
    "build_prompt",
    "check_python",
    "effects_text",
    "history_lines",
    "parse_reply",
    "repair_prompt",
]
