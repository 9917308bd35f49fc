"""Turn a unified diff into new file contents, and file contents into a diff.

Agents (LLMs, coding-agent CLIs, people through ``autoswarm submit --diff``) hand
us unified diffs. They are applied here, in memory as far as the caller can tell,
with ``git apply`` in a scratch directory: git's parser is the reference for the
format, and ``--recount`` forgives the wrong hunk line counts that language models
often write. Nothing here touches the workspace.

A diff that does not apply, or that touches a file outside ``allowed``, raises a
:class:`~autoswarm.errors.PatchError` whose message says which file and why, so a
proposer can send it back to the model for one repair round-trip. So does a diff that
would make a file anything but a plain file (a symlink to ``/proc/self/environ`` would
put the reader's environment into the ledger): a variant changes file *contents*.
:func:`read_plain` is the one way a proposed file is read from disk, for the same
reason.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path

from autoswarm.errors import LockedFileError, PatchError, WorkspaceError

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*$")
_HEADER = re.compile(r"^(?:---|\+\+\+) (\S+)")
# Extended headers that make a path something other than a file: a symlink (120000) or
# a submodule (160000); binary patches are refused too.
_MODE = re.compile(r"^(?:new file mode|new mode|old mode|deleted file mode) (\d+)\s*$")
_NOT_A_FILE = {"120000": "a symlink", "160000": "a submodule"}


def read_plain(root: Path, rel: str) -> str:
    """The text of ``root/rel`` if it is a plain file inside ``root``.

    Raises:
        WorkspaceError: it is a symlink (or under one), a device, a FIFO or a directory,
            it does not exist, or it is not UTF-8 text; the message names it and says what
            is accepted.
    """
    path = root / rel
    try:
        real_root = root.resolve(strict=True)
        if not path.resolve(strict=True).is_relative_to(real_root):
            raise WorkspaceError(
                f"{path} leads outside {root} (through a symlink): submit plain files only"
            )
        st = os.lstat(path)
    except FileNotFoundError:
        raise WorkspaceError(f"{path} does not exist") from None
    except OSError as e:
        raise WorkspaceError(f"cannot read {path}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise WorkspaceError(f"{path} is a symlink: submit plain files only, never links")
    if not stat.S_ISREG(st.st_mode):
        raise WorkspaceError(f"{path} is not a plain file (a device, FIFO or directory)")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        return utf8_text(f.read(), str(path))


def utf8_text(data: bytes, what: str) -> str:
    """``data`` as UTF-8 text; a WorkspaceError that says where it is not (never mangled)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WorkspaceError(
            f"{what} is not UTF-8 text (byte {e.start}: {e.reason}): variants are text files; "
            "save it as UTF-8"
        ) from None


def strip_fences(text: str) -> str:
    """Remove Markdown code fences around a diff (models add them even when told not to)."""
    lines = [ln for ln in text.strip("\n").splitlines() if not _FENCE.match(ln)]
    return "\n".join(lines) + "\n"


def touched_paths(diff: str) -> list[str]:
    """Workspace-relative paths a diff names in its ``---``/``+++`` headers (``/dev/null`` skipped)."""
    paths: list[str] = []
    for line in diff.splitlines():
        m = _HEADER.match(line)
        if not m:
            continue
        raw = m.group(1)
        if raw == "/dev/null":
            continue
        path = raw[2:] if raw.startswith(("a/", "b/")) else raw
        if path not in paths:
            paths.append(path)
    return paths


def apply_diff(
    files: Mapping[str, str], diff: str, *, allowed: Collection[str] | None = None
) -> dict[str, str]:
    """Apply ``diff`` to ``files`` (path → text) and return the changed files' new texts.

    Raises:
        LockedFileError: the diff touches a path not in ``allowed``.
        PatchError: the text is not a diff, or a hunk does not match the files.
    """
    text = strip_fences(diff)
    paths = touched_paths(text)
    if not paths or "@@" not in text:
        raise PatchError(
            "the text is not a unified diff: expected '--- a/FILE', '+++ b/FILE' and '@@' hunk lines"
        )
    for line in text.splitlines():
        mode = _MODE.match(line)
        if mode and mode.group(1) in _NOT_A_FILE:
            raise PatchError(
                f"the diff makes a file {_NOT_A_FILE[mode.group(1)]} ({line.strip()!r}); "
                "variants change file contents only"
            )
        if line.startswith(("GIT binary patch", "Binary files ")):
            raise PatchError("the diff is a binary patch; variants change text files only")
    for path in paths:
        if path.startswith("/") or ".." in Path(path).parts:
            raise LockedFileError(f"the diff names {path!r}, which is outside the workspace")
        if allowed is not None and path not in allowed:
            raise LockedFileError(
                f"the diff changes {path!r}, which is not editable (editable: {', '.join(sorted(allowed))})"
            )
    strip = "-p1" if any(ln.startswith(("--- a/", "+++ b/")) for ln in text.splitlines()) else "-p0"
    with tempfile.TemporaryDirectory(prefix="autoswarm-patch-") as tmp:
        root = Path(tmp)
        for path in paths:
            if path in files:
                target = root / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(files[path], encoding="utf-8")
        (root / "change.diff").write_text(text, encoding="utf-8")
        errors = []
        # Exact context first; then one line of context (models drift); then hunks
        # without context, which models write too (``@@ -6,1 +6,1 @@``).
        for extra in ((), ("-C1",), ("--unidiff-zero",)):
            proc = subprocess.run(
                ["git", "apply", strip, "--recount", "--whitespace=nowarn", *extra, "change.diff"],
                cwd=root,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode == 0:
                break
            errors.append(proc.stderr.strip())
        else:
            detail = "; ".join(line for line in errors[0].splitlines() if "error" in line.lower())
            raise PatchError(
                f"the diff does not apply: {detail or errors[0] or 'git apply failed'}"
            )
        out: dict[str, str] = {}
        for path in paths:
            target = root / path
            if target.is_symlink() or (target.exists() and not target.is_file()):
                raise PatchError(f"the diff makes {path!r} something other than a plain file")
            if target.is_file():
                new = target.read_text(encoding="utf-8")
                if files.get(path) != new:
                    out[path] = new
            elif path in files:
                raise PatchError(
                    f"the diff deletes {path!r}; variants may change files, not delete them"
                )
        if not out:
            raise PatchError("the diff applies but changes nothing")
        return out


def make_diff(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """A unified diff (``a/``/``b/`` prefixes) from ``old`` to ``new`` for the paths in ``new``."""
    chunks: list[str] = []
    for path in sorted(new):
        before = old.get(path, "")
        if before == new[path]:
            continue
        chunks.extend(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                new[path].splitlines(keepends=True),
                fromfile=f"a/{path}",
                tofile=f"b/{path}",
            )
        )
    return "".join(
        c if c.endswith("\n") else c + "\n\\ No newline at end of file\n" for c in chunks
    )


__all__ = ["apply_diff", "make_diff", "read_plain", "strip_fences", "touched_paths"]
