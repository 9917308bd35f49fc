"""Near-duplicate detection: two variants that differ only in layout or comments are one.

Agents (LLMs, coding-agent CLIs, people submitting through ``autoswarm submit``)
often hand back the same change twice: re-indented, with a comment reworded, with
CRLF line endings or trailing spaces. Running it again wastes a slot and, worse,
counts the same evidence twice. The scheduler therefore compares a *normalised*
fingerprint of every variant's editable files against everything already tried or
running, and records a twin as ``rejected: duplicate of #ID``.

What is normalised away:

* line endings (CRLF, CR) and trailing whitespace;
* in Python files, everything :mod:`tokenize` calls layout or commentary: comments,
  blank lines, spacing inside a line (``x=1`` vs ``x = 1``), line continuations and
  the width of indentation (its *structure* is kept: INDENT/DEDENT tokens stay, so a
  statement moved in or out of a block is a different program);
* in other files (and Python that does not tokenize), runs of spaces and blank lines.

The fingerprint is taken over the variant's *resulting* files, not over the diff
text, so the same change reached from two parents, or written as a whole-file
replacement once and as a diff once, is still recognised. A variant whose only
change is a comment is a twin of its parent (the best or the baseline).

Use :func:`dedup_key` for a variant's key and :func:`normalise` to see what is compared.
"""

from __future__ import annotations

import hashlib
import io
import re
import tokenize
from collections.abc import Mapping

# Tokens that carry no meaning for the program.
_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
_SPACES = re.compile(r"[ \t\f\v]+")


def _unify_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def normalise_text(text: str) -> str:
    """Any text: unified line endings, no trailing or repeated spaces, no blank lines."""
    lines = (_SPACES.sub(" ", line).strip() for line in _unify_newlines(text).split("\n"))
    return "\n".join(line for line in lines if line)


def normalise_python(text: str) -> str:
    """Python source as its meaningful tokens, one logical line per line.

    Falls back to :func:`normalise_text` for source that does not tokenize (a
    syntax error is still a variant, and still deserves dedup).
    """
    out: list[str] = []
    line: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(_unify_newlines(text)).readline):
            if tok.type in _LAYOUT:
                continue
            if tok.type == tokenize.NEWLINE:
                if line:
                    out.append(" ".join(line))
                line = []
            elif tok.type == tokenize.INDENT:
                line.append("<indent>")
            elif tok.type == tokenize.DEDENT:
                line.append("<dedent>")
            else:
                line.append(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return normalise_text(text)
    if line:
        out.append(" ".join(line))
    return "\n".join(out)


def normalise(path: str, text: str) -> str:
    """The form of one file that dedup compares (by file type)."""
    return normalise_python(text) if path.endswith(".py") else normalise_text(text)


def dedup_key(files: Mapping[str, str]) -> str:
    """A hash of a variant's normalised files (path → full text); equal keys = twins."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode())
        h.update(b"\0")
        h.update(normalise(path, files[path]).encode())
        h.update(b"\0")
    return "n" + h.hexdigest()[:19]


__all__ = ["dedup_key", "normalise", "normalise_python", "normalise_text"]
