"""The run's lifecycle: who owns the workspace, which run it is, and what a crash left.

Three jobs the scheduler does once, before its loop and never in it:

- :class:`RunLock`: one orchestrator per workspace (an ``flock`` the kernel releases
  when the process dies, so a crash never leaves a stale lock);
- :func:`open_run`: the run's ledger row and branch, new (from ``HEAD``) or resumed,
  after :func:`restore_locked_files` (a changed ``prepare.py`` is restored, never run);
- :func:`recover`: experiments a dead or stopped orchestrator left ``RUNNING`` or
  ``INTERRUPTED`` are re-attached (a :class:`~autoswarm.backends.base.Reattachable`
  backend whose job still runs) or killed and re-queued under the same id;
- :func:`reconcile_branch`: the branch head holds the best's files (a keep or a
  revocation recorded in the ledger but cut short before the branch moved is completed),
  and :func:`repair_pins`: every experiment's pinned ref points at its commit.

What a repair replaces is kept under ``.autoswarm/tampered/<date-time>/``.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from autoswarm.backends.base import Backend
from autoswarm.clock import Clock
from autoswarm.config import Config
from autoswarm.errors import RunLockedError, RunStateError
from autoswarm.ledger import Ledger, RunRecord
from autoswarm.sandbox import kill_strays
from autoswarm.types import Experiment, Kind, Status
from autoswarm.workspace import Workspace

# ---------------------------------------------------------------------------
# Ownership of a workspace: one orchestrator at a time


class RunLock:
    """An exclusive ``flock`` on ``.autoswarm/run.lock``; the kernel releases it if we die."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "run.lock"
        self._f: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            f.close()
            raise RunLockedError(
                f"another `autoswarm run` (pid {owner}) is active on this workspace: wait for it, "
                f"watch it with `autoswarm status`, or stop it with `kill {owner}` (then --resume)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._f = f

    def release(self) -> None:
        if self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None


# ---------------------------------------------------------------------------
# Which run: a new one, or the one to resume


def tampered_dir(ws: Workspace, clock: Clock | None = None) -> Path:
    """Where a repair keeps what it replaced: ``.autoswarm/tampered/<date-time>``."""
    now = time.time() if clock is None else clock.now()
    return ws.state_dir / "tampered" / time.strftime("%Y%m%d-%H%M%S", time.localtime(now))


def restore_locked_files(ws: Workspace, aside: Path) -> list[str]:
    """Locked files that differ from their committed version are restored from ``HEAD``.

    Done before ``prepare`` and every ``autoswarm run`` (new or resumed): a locked file
    changed outside a commit may be a variant's tamper (issue 15), and ``prepare.py``
    runs with the orchestrator's rights. The changed copy is kept under ``aside``, and
    the line never advises committing it (a commit would make a tamper the baseline).

    Returns:
        One line per restored file, to show the user.

    Raises:
        RunStateError: a locked file is still dirty after the restore (a staged change).
    """
    locked = [p for p in ws.dirty_files() if p in ws.config.workspace.locked]
    lines = []
    for path in locked:
        kept = ws.restore_file(path, aside)
        where = f", the changed copy kept at {ws.relative(kept)}" if kept else ""
        lines.append(
            f"{path} differed from its commit (a variant outside the sandbox, or an edit "
            f"not committed): restored from HEAD{where}"
        )
    still = [p for p in ws.dirty_files() if p in locked]
    if still:
        names = " ".join(still)
        raise RunStateError(
            f"locked file(s) {', '.join(still)} differ from their committed version in the "
            f"index; look at `git -C {ws.root} diff --cached -- {names}` and restore them with "
            f"`git -C {ws.root} restore --staged --worktree -- {names}`"
        )
    return lines


def repair_pins(
    ws: Workspace, run: RunRecord, rows: Iterable[Experiment], aside: Path
) -> list[str]:
    """Each candidate's pin ``refs/autoswarm/<tag>/<id>`` points at its commit (ledger).

    A pin keeps a variant's commit from ``git gc``; one that is missing (a crash between
    the ledger's row and the pin), corrupt or moved is set again from the ledger.
    """
    lines = []
    for e in rows:
        if e.kind is Kind.CANDIDATE and e.commit:  # re-runs and baselines share others' commits
            fixed = ws.set_ref(f"refs/autoswarm/{run.tag}/{e.id}", e.commit, aside)
            if fixed is not None:
                lines.append(fixed)
    if len(lines) > 3:
        lines[3:] = [f"... and {len(lines) - 3} more pins repaired the same way"]
    return lines


def open_run(
    ws: Workspace,
    ledger: Ledger,
    cfg: Config,
    clock: Clock,
    tag: str | None,
    resume: bool,
    say: Callable[[str], None],
) -> RunRecord:
    """The run's record: found (``resume``; its branch repaired or recreated if it is
    corrupt or missing, a changed config recorded) or created (a clean workspace, ``HEAD``
    as the base, a new branch). Locked files are restored first; ``say`` gets the lines."""
    tag = tag or cfg.run.tag or None
    for line in restore_locked_files(ws, tampered_dir(ws, clock)):
        say(line)
    if resume:
        run = ledger.get_run(tag)
        if run is None:
            what = f"tagged {tag!r}" if tag else "at all"
            raise RunStateError(
                f"there is no run {what} to resume in {ws.root}: start one with `autoswarm run`"
            )
        if not ws.ref_exists(f"refs/heads/{run.branch}"):  # reconcile_branch moves it on
            fixed = ws.set_ref(f"refs/heads/{run.branch}", run.base_commit, tampered_dir(ws, clock))
            if fixed is not None:
                say(f"the run's branch {fixed}")
        config = cfg.to_record()
        if config != dict(run.config):  # flags of the resuming command (a longer limit, ...)
            ledger.update_run_config(run.id, config)
            run = ledger.get_run(run.tag) or run
        return run
    if tag is None:
        tag = fresh_tag(ws, ledger, clock)
    elif ledger.get_run(tag) is not None:
        raise RunStateError(
            f"a run tagged {tag!r} already exists: continue it with "
            f"`autoswarm run --resume --tag {tag}`, or choose a new --tag"
        )
    dirty = ws.dirty_files()
    if dirty:
        raise RunStateError(
            f"{', '.join(dirty)} has uncommitted changes; the baseline must be a commit: "
            f"`git -C {ws.root} commit -am 'my change'` (or `git stash`) and run again"
        )
    base = ws.head()
    branch = f"autoswarm/{tag}"
    if ws.ref_exists(f"refs/heads/{branch}"):
        raise RunStateError(
            f"branch {branch} already exists but the ledger has no run {tag!r}: "
            f"choose another --tag or delete it with `git branch -D {branch}`"
        )
    ws.ensure_branch(branch, base)
    return ledger.create_run(
        tag=tag, branch=branch, base_commit=base, config=cfg.to_record(), now=clock.now()
    )


def fresh_tag(ws: Workspace, ledger: Ledger, clock: Clock) -> str:
    """Today's date (``dec01``), with ``-2``, ``-3``, ... if a run or branch has it."""
    base = time.strftime("%b%d", time.localtime(clock.now())).lower()
    tag, n = base, 1
    while ledger.get_run(tag) is not None or ws.ref_exists(f"refs/heads/autoswarm/{tag}"):
        n += 1
        tag = f"{base}-{n}"
    return tag


# ---------------------------------------------------------------------------
# What a crash or a stop left


# An experiment that was running when this many orchestrators died is taken for one that
# ends the run (it signals its parent, exhausts the machine, ...): recorded as a crash.
ENDS_THE_RUN = 2


def recover(
    ledger: Ledger,
    backend: Backend,
    run: RunRecord,
    reattach: Callable[[Experiment, str], bool],
    run_dir: Callable[[int], Path],
    now: float,
) -> None:
    """Orphans (RUNNING from a dead orchestrator) are re-attached if ``reattach`` adopts
    them; the others are killed and, with interrupted ones, re-queued (same id), except
    an orphan of the :data:`ENDS_THE_RUN`-th dead orchestrator: recorded as a crash
    (outside the sandbox a variant can kill its orchestrator, and every resume would
    run it again).

    ``Ledger.mark_running`` (status RUNNING, no handle) is the intent to submit, written
    before ``Backend.submit``; ``set_handle`` follows once the backend answers. A RUNNING
    row without a handle is one whose orchestrator died in between: its job may have
    started, so besides the backend's cancel by id, a local process still running in its
    run directory with its id is killed (:func:`autoswarm.sandbox.kill_strays`): it
    would otherwise run on unwatched beside its re-run.
    """
    for exp in ledger.experiments(run.id, statuses=[Status.RUNNING, Status.INTERRUPTED]):
        if exp.status is Status.RUNNING:
            handle = ledger.handle(exp.id)
            if handle and reattach(exp, handle):
                continue
            if not handle:
                kill_strays(run_dir(exp.id), exp.id)
            backend.cancel(exp.id, handle)
            deaths = ledger.orphaned(exp.id)
            if deaths >= ENDS_THE_RUN:
                ledger.finish(
                    exp.id,
                    status=Status.CRASH,
                    metrics={},
                    metric=None,
                    finished_at=now,
                    reason=f"it was running each of the {deaths} times the orchestrator died: "
                    "taken for a variant that ends the run; not re-queued (read its log)",
                )
                continue
            why = "orphaned by an orchestrator that died; re-queued"
        else:
            why = "interrupted; re-queued"
        ledger.requeue(exp.id, reason=why)


def reconcile_branch(ws: Workspace, run: RunRecord, best_commit: str | None) -> None:
    """The branch head must hold the best's files (a crash may have cut a keep short)."""
    target = best_commit or run.base_commit
    head = ws.rev_parse(f"refs/heads/{run.branch}")
    if ws.tree_id(head) != ws.tree_id(target):
        ws.advance_branch(run.branch, target, f"autoswarm: restore best ({target[:10]})")


__all__ = [
    "ENDS_THE_RUN",
    "RunLock",
    "fresh_tag",
    "open_run",
    "reconcile_branch",
    "recover",
    "repair_pins",
    "restore_locked_files",
    "tampered_dir",
]
