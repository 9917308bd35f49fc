"""Git snapshots of a workspace: commits through a private index, checks, branch, export."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from autoswarm.config import Config, load_config
from autoswarm.errors import WorkspaceError
from autoswarm.testing.synthetic import make_workspace
from autoswarm.types import Problem
from autoswarm.workspace import Workspace


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def ws(synth_ws: Path) -> Workspace:
    return Workspace(synth_ws, load_config(synth_ws))


def lr(ws: Workspace, commit: str, value: str) -> dict[str, str]:
    text = ws.read_file(commit, "train.py")
    assert "LR = 0.01" in text
    return {"train.py": text.replace("LR = 0.01", f"LR = {value}")}


# ---------------------------------------------------------------------------
# Opening


def test_not_a_git_repo(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "w")
    cfg = load_config(root)
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("train.py", "prepare.py", "autoswarm.toml"):
        (plain / name).write_text((root / name).read_text())
    with pytest.raises(WorkspaceError) as e:
        Workspace(plain, cfg)
    assert "not a git repository" in str(e.value)
    assert f"autoswarm init {plain}" in str(e.value)


@pytest.mark.parametrize("name", ["train.py", "prepare.py"])
def test_missing_listed_file(synth_ws: Path, name: str) -> None:
    (synth_ws / name).unlink()
    with pytest.raises(WorkspaceError) as e:
        Workspace(synth_ws, load_config(synth_ws))
    msg = str(e.value)
    assert f"{name} is missing" in msg
    assert f"git checkout -- {name}" in msg and "[workspace]" in msg


def test_head_of_a_repo_without_commits(tmp_path: Path) -> None:
    root = tmp_path / "w"
    root.mkdir()
    for name in ("train.py", "prepare.py"):
        (root / name).write_text("X = 1\n")
    git(root, "init", "-q")
    with pytest.raises(WorkspaceError, match="no commit yet: commit the workspace files"):
        Workspace(root, Config()).head()


# ---------------------------------------------------------------------------
# Commits


def test_commit_files_makes_a_child_commit_and_leaves_the_tree_alone(ws: Workspace) -> None:
    head = ws.head()
    before = git(ws.root, "status", "--porcelain")
    index_before = (ws.root / ".git" / "index").read_bytes()
    commit = ws.commit_files(head, lr(ws, head, "0.02"), "autoswarm: LR 0.01 -> 0.02")
    assert git(ws.root, "rev-parse", f"{commit}^").strip() == head
    assert "LR = 0.02" in ws.read_file(commit, "train.py")
    assert ws.read_file(commit, "prepare.py") == ws.read_file(head, "prepare.py")
    assert git(ws.root, "log", "-1", "--format=%s%n%an", commit).split("\n")[:2] == [
        "autoswarm: LR 0.01 -> 0.02",
        "autoswarm",
    ]
    # The user's branch, working tree and index are untouched.
    assert ws.head() == head
    assert "LR = 0.01" in (ws.root / "train.py").read_text()
    assert git(ws.root, "status", "--porcelain") == before == ""
    assert (ws.root / ".git" / "index").read_bytes() == index_before
    assert not list(ws.state_dir.glob("index.*"))  # the temporary index is removed
    assert ws.diff(head, commit).count("\n+LR") == 1


def test_commit_files_can_add_a_new_file(ws: Workspace) -> None:
    head = ws.head()
    commit = ws.commit_files(head, {"extra.py": "Y = 1\n"}, "add")
    assert ws.read_file(commit, "extra.py") == "Y = 1\n"
    assert not (ws.root / "extra.py").exists()


def test_pin_and_ref_exists(ws: Workspace) -> None:
    head = ws.head()
    commit = ws.commit_files(head, lr(ws, head, "0.03"), "x")
    assert not ws.ref_exists("refs/autoswarm/t/1")
    ws.pin("refs/autoswarm/t/1", commit)
    assert ws.rev_parse("refs/autoswarm/t/1") == commit


def test_set_ref_repairs_a_missing_moved_or_corrupt_ref(ws: Workspace, tmp_path: Path) -> None:
    head = ws.head()
    commit = ws.commit_files(head, lr(ws, head, "0.03"), "x")
    aside = tmp_path / "aside"
    ref = "refs/autoswarm/t/1"
    assert "was missing" in (ws.set_ref(ref, commit, aside) or "")
    assert ws.set_ref(ref, commit, aside) is None  # already right: nothing said
    ws.pin(ref, head)
    assert f"pointed at {head[:10]}" in (ws.set_ref(ref, commit, aside) or "")
    loose = ws.root / ".git" / ref
    loose.write_text("garbage a variant wrote\n")
    assert not ws.ref_exists(ref)
    said = ws.set_ref(ref, commit, aside) or ""
    assert "was corrupt" in said and ws.rev_parse(ref) == commit
    assert (aside / ref).read_text() == "garbage a variant wrote\n"  # kept, not lost
    with pytest.raises(WorkspaceError, match="fsck"):
        ws.set_ref(ref, "0" * 40, aside)


def test_restore_file_puts_back_the_committed_version(ws: Workspace, tmp_path: Path) -> None:
    committed = (ws.root / "prepare.py").read_bytes()
    (ws.root / "prepare.py").write_text("import os  # the tamper\n")
    kept = ws.restore_file("prepare.py", tmp_path / "aside")
    assert (ws.root / "prepare.py").read_bytes() == committed
    assert kept is not None and kept.read_text() == "import os  # the tamper\n"
    assert ws.dirty_files() == []
    (ws.root / "prepare.py").unlink()
    assert ws.restore_file("prepare.py", tmp_path / "aside2") is None
    assert (ws.root / "prepare.py").read_bytes() == committed


# ---------------------------------------------------------------------------
# check_proposal


def test_check_allowed_change(ws: Workspace) -> None:
    head = ws.head()
    check = ws.check_proposal(head, lr(ws, head, "0.02"))
    assert check.changed == ("train.py",) and check.problem is None and check.message == ""


def test_check_locked_file(ws: Workspace) -> None:
    check = ws.check_proposal(ws.head(), {"prepare.py": "# hacked metric\n"})
    assert check.changed == ("prepare.py",)
    assert check.problem is Problem.LOCKED
    assert "locked" in check.message and "prepare.py" in check.message
    assert "only train.py may change" in check.message


@pytest.mark.parametrize("path", ["program.md", "new_module.py"])
def test_check_non_editable_file(ws: Workspace, path: str) -> None:
    check = ws.check_proposal(ws.head(), {path: "x = 1\n"})
    assert check.changed == (path,)
    assert check.problem is Problem.NOT_EDITABLE
    assert f"non-editable file(s) {path}" in check.message
    assert "[workspace] editable" in check.message


@pytest.mark.parametrize("path", ["../outside.py", "/etc/passwd", "sub/../../x.py"])
def test_check_path_outside_workspace(ws: Workspace, path: str) -> None:
    check = ws.check_proposal(ws.head(), {path: "x = 1\n"})
    assert check.problem is Problem.OUTSIDE
    assert "outside the workspace" in check.message and check.changed == ()


def test_check_syntax_error(ws: Workspace) -> None:
    check = ws.check_proposal(ws.head(), {"train.py": "LR = 0.01\nX = = 2\n"})
    assert check.changed == ("train.py",)
    assert check.problem is Problem.SYNTAX
    assert check.message.startswith("syntax error: train.py line 2")


def test_check_unchanged(ws: Workspace) -> None:
    head = ws.head()
    check = ws.check_proposal(head, {"train.py": ws.read_file(head, "train.py")})
    assert check.changed == () and check.problem is None and check.message == ""
    assert ws.check_proposal(head, {}).changed == ()


def test_check_locked_wins_over_editable_changes(ws: Workspace) -> None:
    head = ws.head()
    files = {**lr(ws, head, "0.02"), "prepare.py": "# hacked\n"}
    check = ws.check_proposal(head, files)
    assert set(check.changed) == {"train.py", "prepare.py"}
    assert check.problem is Problem.LOCKED and "locked" in check.message


def test_check_accepts_a_dot_slash_path(ws: Workspace) -> None:
    head = ws.head()
    check = ws.check_proposal(head, {"./train.py": lr(ws, head, "0.02")["train.py"]})
    assert check.changed == ("train.py",)


# ---------------------------------------------------------------------------
# Branch


def test_advance_branch_stays_linear_with_the_source_tree(ws: Workspace) -> None:
    base = ws.head()
    branch = "autoswarm/t"
    ws.ensure_branch(branch, base)
    ws.ensure_branch(branch, base)  # idempotent
    a = ws.commit_files(base, lr(ws, base, "0.02"), "A")
    # b is based on the *old* best (base), as a variant that ran concurrently with a.
    b_files = {"train.py": ws.read_file(base, "train.py").replace("WIDTH = 64", "WIDTH = 128")}
    b = ws.commit_files(base, b_files, "B")
    head1 = ws.advance_branch(branch, a, "keep A")
    assert ws.rev_parse(f"refs/heads/{branch}") == head1
    assert git(ws.root, "rev-parse", f"{head1}^{{tree}}") == git(
        ws.root, "rev-parse", f"{a}^{{tree}}"
    )
    head2 = ws.advance_branch(branch, b, "keep B")
    assert git(ws.root, "rev-parse", f"{head2}^{{tree}}") == git(
        ws.root, "rev-parse", f"{b}^{{tree}}"
    )
    # Linear: every commit on the branch has exactly one parent, and it leads back to base.
    chain = git(ws.root, "rev-list", "--parents", branch).splitlines()
    assert [len(line.split()) for line in chain] == [2, 2, 1]
    assert [line.split()[0] for line in chain] == [head2, head1, base]
    assert git(ws.root, "log", "-1", "--format=%s", head2).strip() == "keep B"
    # The user's branch did not move.
    assert ws.head() == base


def test_advance_branch_to_the_same_tree_is_a_no_op(ws: Workspace) -> None:
    base = ws.head()
    ws.ensure_branch("autoswarm/t", base)
    same = ws.commit_files(base, {"train.py": ws.read_file(base, "train.py")}, "same")
    assert ws.advance_branch("autoswarm/t", same, "noop") == base


# ---------------------------------------------------------------------------
# Snapshots and dirtiness


def test_materialize_exports_exactly_the_commit(ws: Workspace, tmp_path: Path) -> None:
    head = ws.head()
    commit = ws.commit_files(head, lr(ws, head, "0.05"), "x")
    (ws.root / "untracked.txt").write_text("not in git\n")
    (ws.root / "train.py").write_text("LR = 123\n")  # the working tree differs
    dest = tmp_path / "run" / "00001"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("from a previous attempt")
    out = ws.materialize(commit, dest)
    assert out == dest
    exported = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    tracked = sorted(git(ws.root, "ls-tree", "-r", "--name-only", commit).split())
    assert exported == tracked
    for name in tracked:
        assert (dest / name).read_text() == ws.read_file(commit, name)
    assert "LR = 0.05" in (dest / "train.py").read_text()


def test_materialize_into_spare_directories_exports_the_same(ws: Workspace, tmp_path: Path) -> None:
    """Spare directories (made ahead, off the loop's path) hold the same files after a
    materialize as fresh ones: extra names removed, missing ones made, contents exact."""
    head = ws.head()
    first = ws.materialize(head, tmp_path / "runs" / "00001")  # learns the file names
    ws.make_spares(2)
    spares = sorted((ws.state_dir / "spare").iterdir())
    assert len(spares) == 2 and all(
        sorted(os.listdir(d)) == sorted(os.listdir(first)) for d in spares
    )
    (spares[0] / "junk.py").touch()  # a name the next commit does not have
    files = {**lr(ws, head, "0.07"), "extra.py": "X = 1\n"}
    commit = ws.commit_files(head, files, "x")
    dest = ws.materialize(commit, tmp_path / "runs" / "00002")
    tracked = sorted(git(ws.root, "ls-tree", "-r", "--name-only", commit).split())
    assert sorted(os.listdir(dest)) == tracked and not spares[0].exists()
    for name in tracked:
        assert (dest / name).read_text() == ws.read_file(commit, name)
    ws.drop_spares()
    assert not (ws.state_dir / "spare").exists()


def test_materialize_unknown_commit(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="is not a commit"):
        ws.materialize("f" * 40, tmp_path / "x")


def test_dirty_files(ws: Workspace) -> None:
    assert ws.dirty_files() == []
    (ws.root / "program.md").write_text("changed, but not watched\n")
    (ws.root / "scratch.py").write_text("untracked\n")
    assert ws.dirty_files() == []
    (ws.root / "train.py").write_text("LR = 1\n")
    assert ws.dirty_files() == ["train.py"]
    (ws.root / "prepare.py").write_text("# changed\n")
    assert sorted(ws.dirty_files()) == ["prepare.py", "train.py"]


def test_git_errors_are_workspace_errors(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError, match="is not a commit"):
        ws.rev_parse("no-such-ref")


def test_git_config_planted_in_the_workspace_runs_nothing(ws: Workspace, tmp_path: Path) -> None:
    """The orchestrator's git never runs what .git/config or hooks name (issue 15)."""
    marker = tmp_path / "planted-ran"
    script = tmp_path / "planted.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    with (ws.root / ".git" / "config").open("a") as f:
        f.write(f"[core]\n\tfsmonitor = {script}\n\tpager = {script}\n")
        f.write(f'[filter "x"]\n\tclean = {script}\n\tsmudge = {script}\n')
    (ws.root / ".gitattributes").write_text("*.py filter=x\n")
    hooks = ws.root / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in ("pre-commit", "post-checkout", "reference-transaction"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / hook).chmod(0o755)
    (ws.root / "train.py").write_text("LR = 2\n")
    assert ws.dirty_files() == ["train.py"]
    commit = ws.commit_files(ws.head(), {"train.py": "LR = 3\n"}, "variant")
    ws.materialize(commit, tmp_path / "snap")
    ws.ensure_branch("autoswarm/x", commit)
    assert not marker.exists()


def test_advance_branch_on_a_corrupt_branch_says_resume_repairs_it(ws: Workspace) -> None:
    head = ws.head()
    ws.ensure_branch("autoswarm/t", head)
    commit = ws.commit_files(head, lr(ws, head, "0.03"), "x")
    (ws.root / ".git" / "refs" / "heads" / "autoswarm" / "t").write_text("junk\n")
    with pytest.raises(WorkspaceError, match=r"corrupt .*--resume. repairs it"):
        ws.advance_branch("autoswarm/t", commit, "keep")
