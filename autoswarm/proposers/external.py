"""External-agent mode: an outside agent (Claude Code, Codex, a person) proposes through the CLI.

``autoswarm run --strategy external`` owns the slots and runs whatever arrives;
the agent drives it from another shell::

    autoswarm submit DIR_OR_FILE --desc "..."     # new versions of editable files
    autoswarm submit --diff change.diff --desc ... # a unified diff against the current best
    autoswarm wait 17 18                           # block until they have verdicts
    autoswarm results --since 16 --format json     # everything that finished since

The two processes share nothing but the ledger. ``submit`` validates the variant
(the diff applies to the current best, no locked file changes) and inserts a row
into the ledger's ``submissions`` table, whose id is reserved from the experiments'
id sequence; :class:`ExternalProposer`, inside the run, hands pending submissions
to the scheduler, which records each as an experiment *under the same id* (or
rejects it as a duplicate, with the id of its twin). ``wait`` polls the ledger.

A submission made while no run is active waits in the table: the next
``autoswarm run --strategy external`` (or ``--resume`` of one) picks it up.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoswarm.config import Config
from autoswarm.errors import LockedFileError, PatchError, RunStateError, WorkspaceError
from autoswarm.ledger import Ledger, RunRecord
from autoswarm.patching import apply_diff, read_plain, touched_paths
from autoswarm.proposers.base import Context
from autoswarm.types import Experiment, Proposal
from autoswarm.workspace import Workspace

# ---------------------------------------------------------------------------
# The proposer inside `autoswarm run --strategy external`


class ExternalProposer:
    """Hands the scheduler the variants queued by ``autoswarm submit``; never runs dry.

    It is never ``exhausted``: with no submission pending it proposes nothing and the
    run waits (``idle_poll_s`` caps the scheduler's idle sleep, so a new submission
    starts within about half a second). The run ends on its limits or Ctrl-C.
    """

    name = "external"
    idle_poll_s = 0.5

    def __init__(self, ledger_path: Path) -> None:
        self.ledger_path = ledger_path
        self._ledger: Ledger | None = None
        self._handed: set[int] = set()  # handed out by this process (admitted at once)

    @property
    def exhausted(self) -> bool:
        return False

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        if n <= 0:
            return []
        if self._ledger is None:
            self._ledger = Ledger(self.ledger_path)
        subs = self._ledger.pending_submissions(
            tag=ctx.tag or None, exclude=sorted(self._handed), limit=n
        )
        out: list[Proposal] = []
        for s in subs:
            self._handed.add(s.id)
            out.append(
                Proposal(
                    description=" ".join(s.description.split())[:200] or f"submission {s.id}",
                    files=dict(s.files),
                    parent=s.parent,
                    proposer=self.name,
                    meta={"submission": s.id},
                )
            )
        return out

    def observe(self, experiment: Experiment) -> None:
        # Submissions carry their own parent; what happened to them is in the ledger,
        # where the agent reads it (`autoswarm wait`, `results`).
        return None

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


# ---------------------------------------------------------------------------
# `autoswarm submit`


@dataclass(frozen=True, kw_only=True)
class Submitted:
    """What ``autoswarm submit`` reports: the id, and whether a run will take it now."""

    id: int
    description: str
    parent: str
    files: tuple[str, ...]
    run_tag: str | None  # the run whose best it is based on (None: the workspace HEAD)
    active: bool  # an `autoswarm run` holds the workspace now
    strategy: str | None  # that run's strategy, when known
    notes: tuple[str, ...] = field(default=())

    def record(self) -> dict[str, object]:
        return {
            "id": self.id,
            "description": self.description,
            "parent": self.parent,
            "files": list(self.files),
            "run": self.run_tag,
            "active": self.active,
            "strategy": self.strategy,
            "notes": list(self.notes),
        }


def run_active(ws: Workspace) -> bool:
    """True while an ``autoswarm run`` holds the workspace's run lock."""
    path = ws.state_dir / "run.lock"
    if not path.exists():
        return False
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def current_best(ws: Workspace, ledger: Ledger, tag: str | None) -> tuple[str, RunRecord | None]:
    """The commit a submission is based on: the head of the run's branch, else HEAD."""
    run = ledger.get_run(tag)
    if run is None:
        return ws.head(), None
    ref = f"refs/heads/{run.branch}"
    return (ws.rev_parse(ref) if ws.ref_exists(ref) else run.base_commit), run


def files_from_path(path: Path, cfg: Config) -> dict[str, str]:
    """New versions of editable (and, to be refused, locked) files found at ``path``.

    A file counts when its name is an editable or locked path (``train.py``); a
    directory is searched for every editable and locked path; other files are ignored.
    """
    wsc = cfg.workspace
    known = (*wsc.editable, *wsc.locked)
    if path.is_file():
        match = [p for p in known if p == path.name or Path(p).name == path.name]
        if not match:
            raise WorkspaceError(
                f"{path} is not one of the workspace's files (editable: {', '.join(wsc.editable)}): "
                "name the file like the one it replaces, or submit a directory"
            )
        return {match[0]: read_plain(path.parent, path.name)}
    if path.is_dir():
        found = {
            p: read_plain(path, p) for p in known if (path / p).is_file() or (path / p).is_symlink()
        }
        if not any(p in found for p in wsc.editable):
            raise WorkspaceError(
                f"{path} holds none of the editable files ({', '.join(wsc.editable)}): submit the "
                "directory you edited them in, or a single file"
            )
        return found
    raise WorkspaceError(f"{path} does not exist: give a file or directory with new versions")


def submit(
    ws: Workspace,
    ledger: Ledger,
    *,
    files: Mapping[str, str] | None = None,
    diff: str | None = None,
    description: str,
    tag: str | None = None,
) -> Submitted:
    """Validate a variant against the current best and queue it for an external run.

    Exactly one of ``files`` (path → new full text) or ``diff`` (unified diff) is given.

    Raises:
        LockedFileError: the variant changes a locked (or any non-editable) file.
        PatchError: the diff is malformed or does not apply, or nothing changes.
    """
    cfg = ws.config
    editable, locked = cfg.workspace.editable, cfg.workspace.locked
    parent, run = current_best(ws, ledger, tag)
    where = f"the best of run {run.tag} ({parent[:10]})" if run else f"HEAD ({parent[:10]})"
    base = ws.read_files(parent)
    if diff is not None:
        bad = [p for p in touched_paths(diff) if p in locked]
        if bad:
            raise LockedFileError(
                f"the diff changes locked file(s) {', '.join(bad)}; only {', '.join(editable)} may "
                "change: drop those hunks and submit again"
            )
        try:
            new = apply_diff(base, diff, allowed=editable)
        except LockedFileError as e:
            raise LockedFileError(f"{e}: drop those hunks and submit again") from e
        except PatchError as e:
            raise PatchError(
                f"{e}. Write the diff against {where} (`git show {parent[:10]}:{editable[0]}`) "
                "and submit again"
            ) from e
    else:
        new = dict(files or {})
    changed: dict[str, str] = {}
    for path, text in sorted(new.items()):
        if path in locked:
            try:
                old: str | None = ws.read_file(parent, path)
            except WorkspaceError:
                old = None
            if old != text:
                raise LockedFileError(
                    f"the submission changes locked file {path}; only {', '.join(editable)} may "
                    "change: restore it and submit again"
                )
            continue
        if path not in editable:
            raise LockedFileError(
                f"the submission changes {path}, which is not editable "
                f"(editable: {', '.join(editable)})"
            )
        if base.get(path) != text:
            changed[path] = text
    if not changed:
        raise PatchError(
            f"the submission changes nothing relative to {where}: edit {', '.join(editable)} "
            "and submit again"
        )
    sub_id = ledger.add_submission(
        parent=parent,
        files=changed,
        diff=diff or "",
        description=" ".join(description.split())[:200],
        now=time.time(),
        tag=tag,
    )
    active = run_active(ws)
    latest = ledger.get_run(tag)
    strategy = Config.from_record(latest.config).run.strategy if latest else None
    notes: list[str] = []
    if not active:
        notes.append(
            f"no `autoswarm run` is active on {ws.root}: #{sub_id} waits in the queue until "
            f"`autoswarm run --strategy external --workspace {ws.root}` (or --resume of an "
            "external run) picks it up"
        )
    elif strategy and strategy != "external":
        notes.append(
            f"the active run uses strategy {strategy!r}, which does not take submissions: "
            f"#{sub_id} waits for an `autoswarm run --strategy external`"
        )
    return Submitted(
        id=sub_id,
        description=" ".join(description.split())[:200],
        parent=parent,
        files=tuple(sorted(changed)),
        run_tag=run.tag if run else None,
        active=active,
        strategy=strategy,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------
# `autoswarm wait`


def lookup(ledger: Ledger, ids: Sequence[int]) -> dict[int, Experiment | None]:
    """Each id's experiment, or None while it is a submission no run has taken yet.

    Raises:
        RunStateError: an id is neither an experiment nor a submission.
    """
    out: dict[int, Experiment | None] = {}
    for i in ids:
        exp = ledger.find(i)
        if exp is None and ledger.get_submission(i) is None:
            raise RunStateError(
                f"there is no experiment or submission #{i} in {ledger.path}: use an id printed "
                "by `autoswarm submit` or listed by `autoswarm results`"
            )
        out[i] = exp
    return out


def wait_for(
    ledger: Ledger, ids: Sequence[int], *, timeout: float = 0.0, poll_s: float = 0.5
) -> tuple[dict[int, Experiment | None], bool]:
    """Poll until every id reaches a final state (keep, discard, crash, rejected).

    Returns the latest rows and whether all finished (False when ``timeout`` > 0 ran out).
    """
    deadline = time.monotonic() + timeout if timeout > 0 else None
    while True:
        rows = lookup(ledger, ids)
        if all(e is not None and e.status.is_finished() for e in rows.values()):
            return rows, True
        if deadline is not None and time.monotonic() >= deadline:
            return rows, False
        time.sleep(poll_s)


def state_of(exp: Experiment | None) -> str:
    """A word for where an id is: ``submitted`` (no run took it yet) or the experiment's status."""
    return "submitted" if exp is None else exp.status.value


__all__ = [
    "ExternalProposer",
    "Submitted",
    "current_best",
    "files_from_path",
    "lookup",
    "run_active",
    "state_of",
    "submit",
    "wait_for",
]
