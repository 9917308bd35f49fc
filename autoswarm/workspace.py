"""A workspace on disk: a git repository with prepare.py, train.py, program.md, autoswarm.toml.

Git gives every variant provenance. A proposal becomes a commit (parent = the best
it was derived from) built through a temporary index, so the user's working tree
and index are never touched; the commit is pinned by ``refs/autoswarm/<tag>/<id>``
so ``git gc`` keeps it. Each experiment runs in its own directory exported from its
commit, so concurrent variants never share files. A keep advances the branch
``autoswarm/<tag>``, whose head always holds the best accepted files.
"""

from __future__ import annotations

import collections
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pygit2

from autoswarm.config import CONFIG_NAME, Config
from autoswarm.errors import WorkspaceError
from autoswarm.types import Problem

STATE_DIR = ".autoswarm"
LEDGER_NAME = "ledger.sqlite"
RESULTS_NAME = "results.tsv"

# Commits autoswarm makes carry its own identity, so they work on machines where
# git has no user configured and never impersonate the user.
_SIGNATURE = pygit2.Signature("autoswarm", "autoswarm@localhost")
# Status flags that do not make a watched file dirty: a file git does not track.
_UNTRACKED_OR_IGNORED = pygit2.enums.FileStatus.WT_NEW | pygit2.enums.FileStatus.IGNORED


@dataclass(frozen=True)
class Check:
    """The verdict of :meth:`Workspace.check_proposal`: which files change, and whether allowed."""

    changed: tuple[str, ...]
    problem: Problem | None = None  # None when the variant may run
    message: str = ""  # the problem in words, for the row's reason


class Workspace:
    """Git and file operations on one workspace directory."""

    def __init__(self, root: Path, config: Config) -> None:
        self.root = root.resolve()
        self.config = config
        self._repo: pygit2.Repository | None = None
        self._file_cache: dict[tuple[str, str], str] = {}
        self._spares: collections.deque[Path] = collections.deque()
        self._spare_names: tuple[str, ...] = ()
        self._spare_count = 0
        if not (self.root / ".git").exists():
            raise WorkspaceError(
                f"{self.root} is not a git repository, so it is not an autoswarm workspace: "
                f"create one with `autoswarm init {root}`"
            )
        state = self.root / STATE_DIR
        if (state.exists() or state.is_symlink()) and not state.is_dir():
            raise WorkspaceError(
                f"{state} is not a directory: autoswarm keeps its ledger, logs and run "
                f"directories there; move it aside (mv {state} {state}.aside) and run again"
            )
        for name in (*config.workspace.editable, *config.workspace.locked):
            if not (self.root / name).is_file():
                raise WorkspaceError(
                    f"{self.root / name} is missing but {CONFIG_NAME} lists it: restore it "
                    f"(git checkout -- {name}) or fix [workspace] in {CONFIG_NAME}"
                )

    # -- paths ---------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / LEDGER_NAME

    @property
    def results_path(self) -> Path:
        return self.root / RESULTS_NAME

    def run_dir(self, exp_id: int) -> Path:
        return self.state_dir / "runs" / f"{exp_id:05d}"

    def log_path(self, exp_id: int) -> Path:
        return self.state_dir / "logs" / f"{exp_id:05d}.log"

    # -- git plumbing --------------------------------------------------------
    # Every git operation goes through libgit2 (pygit2), in-process. It is fast (the
    # scheduler makes a commit, a ref and a snapshot per experiment, and forking git a
    # dozen times for each would dominate the dispatch overhead), and it runs nothing
    # the repository's config names: no core.fsmonitor, no hooks, no filter or diff
    # drivers, no pager, no ssh command. The git CLI does run those, so a variant that
    # wrote `core.fsmonitor = <script>` into .git/config would run its script with the
    # orchestrator's environment on the next `git status`.

    @property
    def repo(self) -> pygit2.Repository:
        if self._repo is None:
            try:
                self._repo = pygit2.Repository(str(self.root))
            except pygit2.GitError as e:
                raise WorkspaceError(f"cannot open the git repository in {self.root}: {e}") from e
        return self._repo

    def _commit(self, ref: str) -> pygit2.Commit:
        try:
            obj = self.repo.revparse_single(ref)
            commit = obj.peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError) as e:
            raise WorkspaceError(f"{ref!r} is not a commit in {self.root}") from e
        return commit

    def rev_parse(self, ref: str) -> str:
        return str(self._commit(ref).id)

    def tree_id(self, ref: str) -> str:
        return str(self._commit(ref).tree_id)

    def ref_exists(self, ref: str) -> bool:
        try:
            self._commit(ref)
            return True
        except WorkspaceError:
            return False

    def head(self) -> str:
        try:
            return self.rev_parse("HEAD")
        except WorkspaceError:
            raise WorkspaceError(
                f"{self.root} has no commit yet: commit the workspace files first "
                "(git add -A && git commit -m 'initial')"
            ) from None

    def read_file(self, commit: str, path: str) -> str:
        key = (commit, path)
        if key not in self._file_cache:
            try:
                entry = self._commit(commit).tree[path]
                blob = self.repo[entry.id].peel(pygit2.Blob)
            except (KeyError, pygit2.InvalidSpecError):
                raise WorkspaceError(f"{path} does not exist in commit {commit[:10]}") from None
            self._file_cache[key] = blob.data.decode("utf-8", errors="replace")
        return self._file_cache[key]

    def read_bytes(self, commit: str, path: str) -> bytes:
        """A file of ``commit`` as it is stored (no decoding: a locked file may be binary)."""
        try:
            entry = self._commit(commit).tree[path]
            return bytes(self.repo[entry.id].peel(pygit2.Blob).data)
        except (KeyError, pygit2.InvalidSpecError):
            raise WorkspaceError(f"{path} does not exist in commit {commit[:10]}") from None

    def read_files(self, commit: str, paths: Sequence[str] | None = None) -> dict[str, str]:
        return {p: self.read_file(commit, p) for p in (paths or self.config.workspace.editable)}

    def dirty_files(self) -> list[str]:
        """Tracked workspace files (editable or locked) with uncommitted changes."""
        watched = [*self.config.workspace.editable, *self.config.workspace.locked]
        dirty = []
        for path in watched:
            try:
                flags = self.repo.status_file(path)
            except KeyError:  # neither tracked nor in the working tree
                continue
            if flags & ~_UNTRACKED_OR_IGNORED:
                dirty.append(path)
        return dirty

    # -- proposals -----------------------------------------------------------

    def check_proposal(self, parent: str, files: Mapping[str, str]) -> Check:
        """Which files a proposal changes and whether it may run.

        A variant may change only editable files; touching a locked file (or any
        other file) is refused before it runs, with a reason that says why.
        """
        ws = self.config.workspace
        changed: list[str] = []
        normalised: dict[str, str] = {}
        for path, text in sorted(files.items()):
            norm = os.path.normpath(path)
            if norm.startswith("..") or os.path.isabs(norm):
                return Check((), Problem.OUTSIDE, f"path {path!r} is outside the workspace")
            normalised[norm] = text
            try:
                old: str | None = self.read_file(parent, norm)
            except WorkspaceError:
                old = None
            if old != text:
                changed.append(norm)
        locked = [p for p in changed if p in ws.locked]
        if locked:
            return Check(
                tuple(changed),
                Problem.LOCKED,
                f"edits locked file(s) {', '.join(locked)}; only {', '.join(ws.editable)} may change "
                f"([workspace] in {CONFIG_NAME})",
            )
        other = [p for p in changed if p not in ws.editable]
        if other:
            return Check(
                tuple(changed),
                Problem.NOT_EDITABLE,
                f"changes non-editable file(s) {', '.join(other)}; only {', '.join(ws.editable)} may "
                f"change (add them to [workspace] editable in {CONFIG_NAME} to allow it)",
            )
        for p in changed:
            if p.endswith(".py"):
                try:
                    compile(normalised[p], p, "exec")
                except SyntaxError as e:
                    return Check(
                        tuple(changed),
                        Problem.SYNTAX,
                        f"syntax error: {p} line {e.lineno}: {e.msg}",
                    )
        return Check(tuple(changed))

    def commit_files(self, parent: str, files: Mapping[str, str], message: str) -> str:
        """A new commit = ``parent`` with ``files`` replaced; the working tree is untouched."""
        repo = self.repo
        base = self._commit(parent)
        index = pygit2.Index()
        index.read_tree(base.tree)
        for path, text in files.items():
            blob = repo.create_blob(text.encode("utf-8"))
            index.add(pygit2.IndexEntry(path, blob, pygit2.enums.FileMode.BLOB))
        tree = index.write_tree(repo)
        oid = repo.create_commit(None, _SIGNATURE, _SIGNATURE, message, tree, [base.id])
        return str(oid)

    def diff(self, parent: str, commit: str) -> str:
        patch = self.repo.diff(self._commit(parent), self._commit(commit))
        return patch.patch or ""

    def pin(self, ref: str, commit: str) -> None:
        """Keep ``commit`` reachable under ``ref`` (refs/autoswarm/...)."""
        self.repo.references.create(ref, pygit2.Oid(hex=commit), force=True)

    def set_ref(self, ref: str, commit: str, aside: Path) -> str | None:
        """Point ``ref`` at ``commit``, whatever state it is in; what was wrong, or None.

        A loose ref file with garbage in it (a variant outside the sandbox can write one)
        makes every libgit2 call on that name fail, so it is moved to ``aside`` first.

        Raises:
            WorkspaceError: ``commit`` is not in the repository (nothing to point at).
        """
        try:
            found = self.repo.references.get(ref)
        except pygit2.GitError:
            loose = Path(self.repo.path) / ref
            dest = aside / ref
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(loose, dest)
            why = f"was corrupt (its file is kept at {self.relative(dest)})"
        else:
            target = None if found is None else str(found.resolve().target)
            if target == commit:
                return None
            why = "was missing" if target is None else f"pointed at {target[:10]}"
        try:
            self.repo.references.create(ref, pygit2.Oid(hex=commit), force=True)
        except (pygit2.GitError, ValueError) as e:
            raise WorkspaceError(
                f"{ref} {why} and cannot be set to {commit[:10]} from the ledger ({e}); "
                f"check the repository with `git -C {self.root} fsck`"
            ) from None
        return f"{ref} {why}; set to {commit[:10]} from the ledger"

    def relative(self, path: Path) -> str:
        """``path`` as the user would type it from the workspace (absolute if outside)."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def restore_file(self, path: str, aside: Path) -> Path | None:
        """Put ``path``'s committed (``HEAD``) version back; the changed copy is moved to
        ``aside/path`` (returned; None if ``path`` was absent, only restored)."""
        try:
            entry = self._commit("HEAD").tree[path]
        except KeyError:
            raise WorkspaceError(f"{path} is not in the commit HEAD; nothing to restore") from None
        blob = self.repo[entry.id].peel(pygit2.Blob)
        target = self.root / path
        dest: Path | None = None
        if target.exists() or target.is_symlink():
            dest = aside / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(target, dest)
        target.write_bytes(blob.data)
        target.chmod(0o755 if entry.filemode == pygit2.enums.FileMode.BLOB_EXECUTABLE else 0o644)
        return dest

    # -- branch --------------------------------------------------------------

    def ensure_branch(self, branch: str, commit: str) -> None:
        if f"refs/heads/{branch}" not in self.repo.references:
            self.repo.references.create(f"refs/heads/{branch}", pygit2.Oid(hex=commit))

    def advance_branch(self, branch: str, source: str, message: str) -> str:
        """Make the head of ``branch`` hold ``source``'s tree; return the new head.

        ``source`` may be based on an older best (variants run concurrently), so the
        head gets a new commit with ``source``'s tree on top of the current head: the
        branch stays linear and its head is always the best accepted files.
        """
        try:
            ref = self.repo.references[f"refs/heads/{branch}"]
        except (KeyError, pygit2.GitError) as e:
            raise WorkspaceError(
                f"the branch {branch} is missing or corrupt ({e}; an experiment outside the "
                "sandbox?): stopped. `autoswarm run --resume` repairs it from the ledger"
            ) from None
        head = self._commit(f"refs/heads/{branch}")
        tree = self._commit(source).tree_id
        if tree == head.tree_id:
            return str(head.id)
        new = self.repo.create_commit(None, _SIGNATURE, _SIGNATURE, message, tree, [head.id])
        if ref.resolve().target != head.id:  # compare-and-swap: nobody else may move it
            raise WorkspaceError(f"branch {branch} moved while autoswarm was updating it")
        ref.set_target(new, f"autoswarm: {message}")
        return str(new)

    # -- snapshots -----------------------------------------------------------

    def materialize(self, commit: str, dest: Path) -> Path:
        """Export ``commit``'s files into a fresh directory ``dest`` (replacing it).

        A spare directory made ahead (:meth:`make_spares`) becomes ``dest`` when there is
        one: on some disks making a file (a new inode) costs ten times writing into one
        that exists (1.1 ms against 0.1 ms here), and a run directory is six of them,
        made while a slot waits for its next experiment.
        """
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tree = self._commit(commit).tree
        self._spare_names = tuple(str(e.name) for e in tree if e.type_str == "blob")
        spare = self._take_spare()
        if spare is None:
            dest.mkdir()
        else:
            os.rename(spare, dest)
            for leftover in set(os.listdir(dest)) - set(self._spare_names):
                (dest / leftover).unlink()  # an empty file of our own making
        self._export(tree, dest)
        return dest

    def make_spares(self, count: int) -> None:
        """Keep ``count`` empty run directories ready for :meth:`materialize`, each with
        an empty file for every file of the last snapshot; meant for a thread off the
        loop's path. They are ours alone until they become a run directory."""
        names = self._spare_names
        if not names:
            return
        where = self.state_dir / "spare"
        where.mkdir(parents=True, exist_ok=True)
        while len(self._spares) < count:
            self._spare_count += 1
            d = where / f"{os.getpid()}-{self._spare_count}"
            d.mkdir()
            for name in names:
                (d / name).touch()
            self._spares.append(d)

    def drop_spares(self) -> None:
        """Remove the spare directories (a run's end; stale ones of a dead run too)."""
        self._spares.clear()
        shutil.rmtree(self.state_dir / "spare", ignore_errors=True)

    def _take_spare(self) -> Path | None:
        try:
            return self._spares.popleft()
        except IndexError:
            return None

    def _export(self, tree: pygit2.Tree, dest: Path) -> None:
        for entry in tree:
            target = dest / str(entry.name)
            if entry.type_str == "tree":
                target.mkdir()
                self._export(self.repo[entry.id].peel(pygit2.Tree), target)
            elif entry.type_str == "blob":
                target.write_bytes(self.repo[entry.id].peel(pygit2.Blob).data)
                target.chmod(
                    0o755 if entry.filemode == pygit2.enums.FileMode.BLOB_EXECUTABLE else 0o644
                )
            # submodules and symlinks are not part of a workspace snapshot


__all__ = ["LEDGER_NAME", "RESULTS_NAME", "STATE_DIR", "Check", "Workspace"]
