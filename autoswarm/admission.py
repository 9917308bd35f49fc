"""Admission: what becomes of a proposal before it may take a slot.

:meth:`Admission.admit` checks a proposal and says which row it becomes, without writing
the ledger (the scheduler records it):

- a :class:`~autoswarm.types.Problem` from :meth:`Workspace.check_proposal` (a path
  outside the workspace, a locked or non-editable file): ``REJECTED``, no commit;
- the same code as an earlier experiment, exactly (:func:`fingerprint` of the full
  editable files) or up to layout and comments (:func:`autoswarm.dedup.dedup_key`):
  ``REJECTED`` as ``Problem.DUPLICATE``, no commit;
- no change at all: ``REJECTED`` as ``Problem.NO_CHANGE``;
- a syntax error: ``CRASH`` with a commit, so it counts as a tried variant, but it
  spends no slot;
- otherwise ``QUEUED``, with a commit on the proposal's parent and its diff.

It keeps the indexes of what was tried (``seen``: fingerprints, the proposers' own
``ctx.seen``; ``twins``: normalised keys), filled from the ledger's rows by :meth:`index`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoswarm.config import Config
from autoswarm.dedup import dedup_key
from autoswarm.knobs import knobs_of
from autoswarm.metrics import printable
from autoswarm.proposers.base import fingerprint
from autoswarm.types import Experiment, Kind, Problem, Proposal, Status
from autoswarm.workspace import Workspace


@dataclass(frozen=True)
class Admitted:
    """The row a proposal becomes (:meth:`Admission.admit`)."""

    status: Status  # QUEUED, REJECTED or CRASH
    problem: Problem | None
    reason: str  # the problem in words ("" when it may run)
    commit: str  # "" when rejected
    diff: str
    description: str
    facts: Mapping[str, Any] = field(default_factory=dict)  # fingerprint, dedup, knobs, ...


class Admission:
    """Checks proposals against the workspace's rules and what the run already tried."""

    def __init__(self, ws: Workspace, cfg: Config) -> None:
        self.ws = ws
        self.cfg = cfg
        self.seen: dict[str, int] = {}  # fingerprint -> first experiment
        self.twins: dict[str, int] = {}  # normalised key (autoswarm.dedup) -> first experiment
        self._files_cache: dict[str, dict[str, str]] = {}

    def files(self, commit: str) -> dict[str, str]:
        """The editable files at ``commit`` (cached: commits never change)."""
        if commit not in self._files_cache:
            self._files_cache[commit] = self.ws.read_files(commit)
        return self._files_cache[commit]

    def index(self, e: Experiment) -> None:
        """Remember a recorded row's code (on start and resume: every row, in id order)."""
        if e.status is Status.REJECTED:
            return
        if e.fingerprint:
            self.seen.setdefault(e.fingerprint, e.id)
        if e.kind is not Kind.CONFIRM and e.commit:
            key = e.dedup or dedup_key(self.files(e.commit))  # older rows: none
            self.twins.setdefault(key, e.id)

    def tried(self, e: Experiment) -> None:
        """A queued row's code is tried: later proposals of it are duplicates."""
        if e.fingerprint:
            self.seen[e.fingerprint] = e.id
        if e.dedup:
            self.twins.setdefault(e.dedup, e.id)

    def admit(self, p: Proposal) -> Admitted:
        """Which row ``p`` becomes (see the module docstring); a commit is made if it has one."""
        files = {os.path.normpath(k): v for k, v in p.files.items()}
        check = self.ws.check_proposal(p.parent, files)
        parent_files = self.files(p.parent)
        full = {
            path: files.get(path, parent_files.get(path, ""))
            for path in self.cfg.workspace.editable
        }
        fp, key = fingerprint(full), dedup_key(full)
        facts: dict[str, Any] = {"fingerprint": fp, "dedup": key, "knobs": knob_values(full)}
        description = one_line(p.description)
        twin = self.seen.get(fp)
        if twin is None:  # near-identical: same code up to layout and comments
            twin = self.twins.get(key)

        def rejected(problem: Problem, reason: str, diff: str) -> Admitted:
            return Admitted(Status.REJECTED, problem, reason, "", diff, description, facts)

        if check.problem is not None and check.problem is not Problem.SYNTAX:
            return rejected(check.problem, check.message, text_diff(self.ws, p))
        if twin is not None:
            facts["duplicate_of"] = twin
            return rejected(Problem.DUPLICATE, f"duplicate of #{twin}", text_diff(self.ws, p))
        if not check.changed:
            return rejected(Problem.NO_CHANGE, Problem.NO_CHANGE.value, "")
        changed = {path: files[path] for path in check.changed}
        commit = self.ws.commit_files(p.parent, changed, f"autoswarm: {description}")
        diff = self.ws.diff(p.parent, commit)
        if check.problem is Problem.SYNTAX:  # a crash, without spending a slot
            return Admitted(
                Status.CRASH, check.problem, check.message, commit, diff, description, facts
            )
        return Admitted(Status.QUEUED, None, "", commit, diff, description, facts)


# ---------------------------------------------------------------------------
# Small helpers


def knob_values(files: Mapping[str, str]) -> dict[str, Any]:
    """All knob values of a variant (for effect analysis); {} if a file does not parse."""
    try:
        return {name: k.value for name, k in knobs_of(files).items()}
    except SyntaxError:
        return {}


def one_line(text: str) -> str:
    """A description or event as one printable line (no terminal control sequences)."""
    line = " ".join(printable(text).split())
    return line[:200] if line else "(no description)"


def text_diff(ws: Workspace, p: Proposal) -> str:
    """A unified diff for a proposal that never became a commit (rejected)."""
    out: list[str] = []
    for path, new in sorted(p.files.items()):
        try:
            old = ws.read_file(p.parent, path)
        except Exception:
            old = ""
        out.extend(
            difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                f"a/{path}",
                f"b/{path}",
            )
        )
    return "".join(out)


__all__ = ["Admission", "Admitted", "knob_values", "one_line", "text_diff"]
