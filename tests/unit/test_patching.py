"""Unified diffs from agents become new file contents; bad ones get clear errors."""

from __future__ import annotations

import pytest

from autoswarm.errors import LockedFileError, PatchError
from autoswarm.patching import apply_diff, make_diff, strip_fences, touched_paths

OLD = {"train.py": "a = 1\nb = 2\nc = 3\nd = 4\ne = 5\n"}
ALLOWED = {"train.py"}


def test_make_diff_then_apply_round_trips() -> None:
    new = {"train.py": OLD["train.py"].replace("b = 2", "b = 7")}
    diff = make_diff(OLD, new)
    assert diff.startswith("--- a/train.py\n+++ b/train.py\n@@")
    assert apply_diff(OLD, diff, allowed=ALLOWED) == new


def test_fences_and_wrong_hunk_counts_are_forgiven() -> None:
    diff = make_diff(OLD, {"train.py": OLD["train.py"].replace("c = 3", "c = 9")})
    sloppy = "```diff\n" + diff.replace("@@ -1,5 +1,5 @@", "@@ -1,2 +1,9 @@") + "```\n"
    assert apply_diff(OLD, sloppy, allowed=ALLOWED)["train.py"].count("c = 9") == 1


def test_zero_context_hunks_apply() -> None:
    diff = "--- a/train.py\n+++ b/train.py\n@@ -4,1 +4,1 @@\n-d = 4\n+d = 8\n"
    assert "d = 8" in apply_diff(OLD, diff, allowed=ALLOWED)["train.py"]


def test_p0_paths_apply() -> None:
    diff = (
        make_diff(OLD, {"train.py": "a = 0\n" + OLD["train.py"][6:]})
        .replace("a/", "")
        .replace("b/", "")
    )
    assert apply_diff(OLD, diff, allowed=ALLOWED)["train.py"].startswith("a = 0\n")


def test_a_hunk_that_does_not_match_is_a_patch_error() -> None:
    diff = "--- a/train.py\n+++ b/train.py\n@@ -2,3 +2,3 @@\n b = 2\n-c = 30\n+c = 9\n d = 4\n"
    with pytest.raises(PatchError, match="does not apply"):
        apply_diff(OLD, diff, allowed=ALLOWED)


def test_not_a_diff() -> None:
    with pytest.raises(PatchError, match="not a unified diff"):
        apply_diff(OLD, "please change b to 7", allowed=ALLOWED)


@pytest.mark.parametrize("path", ["prepare.py", "../x.py", "/etc/passwd"])
def test_locked_or_outside_files_are_refused(path: str) -> None:
    diff = make_diff(OLD, {"train.py": "x\n"}).replace("train.py", path.lstrip("/"))
    if path.startswith("/"):
        diff = diff.replace("a/etc", "/etc").replace("b/etc", "/etc")
    with pytest.raises(LockedFileError):
        apply_diff(OLD, diff, allowed=ALLOWED)


def test_deleting_a_file_is_refused() -> None:
    diff = "--- a/train.py\n+++ /dev/null\n@@ -1,5 +0,0 @@\n" + "".join(
        "-" + ln + "\n" for ln in OLD["train.py"].splitlines()
    )
    with pytest.raises(PatchError, match="deletes"):
        apply_diff(OLD, diff, allowed=ALLOWED)


def test_helpers() -> None:
    assert strip_fences("```diff\nx\n```") == "x\n"
    assert touched_paths("--- a/x.py\n+++ b/x.py\n--- /dev/null\n+++ b/y.py\n") == ["x.py", "y.py"]
