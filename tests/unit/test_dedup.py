"""Near-duplicate detection (autoswarm.dedup) and how the scheduler records twins."""

from __future__ import annotations

import pytest

from autoswarm.dedup import dedup_key, normalise, normalise_python, normalise_text
from autoswarm.testing.proposers import ScriptedProposer, replace_in, write_file
from autoswarm.testing.synthetic import TRAIN_PY
from autoswarm.types import Kind, Status
from tests.conftest import Harness

BASE = "LR = 0.01  # learning rate\nWIDTH = 64\n\ndef f(x):\n    return x * LR\n"


def key(text: str, path: str = "train.py") -> str:
    return dedup_key({path: text})


@pytest.mark.parametrize(
    "variant",
    [
        BASE.replace("\n", "\r\n"),  # line endings
        BASE.replace("WIDTH = 64", "WIDTH = 64   "),  # trailing spaces
        BASE.replace("WIDTH = 64", "WIDTH=64"),  # spacing inside a line
        BASE.replace("# learning rate", "# the step size, tuned"),  # comment reworded
        BASE.replace("  # learning rate", ""),  # comment removed
        BASE + "\n\n# a trailing comment\n",  # blank lines and comment-only lines
        BASE.replace("    return", "        return"),  # indentation width, same structure
        BASE.replace("WIDTH = 64\n", "WIDTH = \\\n    64\n"),  # backslash continuation
    ],
)
def test_layout_and_comments_do_not_make_a_new_variant(variant: str) -> None:
    assert variant != BASE
    assert key(variant) == key(BASE)


@pytest.mark.parametrize(
    "variant",
    [
        BASE.replace("0.01", "0.02"),  # a value
        BASE.replace("x * LR", "x * LR * 2"),  # code
        BASE + "print('# not a comment')\n",  # a string with a hash is code
        BASE.replace("    return x * LR\n", "    pass\nreturn_value = 1\n"),  # structure
    ],
)
def test_real_changes_make_a_new_variant(variant: str) -> None:
    assert key(variant) != key(BASE)


def test_indentation_structure_counts() -> None:
    inside = "if FLAG:\n    a = 1\n    b = 2\n"
    outside = "if FLAG:\n    a = 1\nb = 2\n"
    assert normalise_python(inside) != normalise_python(outside)


def test_untokenizable_python_falls_back_to_text_rules() -> None:
    broken = 'x = """never closed\ny = 1\n'
    assert normalise_python(broken) == normalise_text(broken)
    assert key(broken) == key(broken.replace("\n", "  \r\n"))
    assert key(broken) != key(broken.replace("y = 1", "y = 2"))


def test_other_files_ignore_only_whitespace() -> None:
    assert normalise("notes.md", "a  b\r\n\n# title  \n") == "a b\n# title"
    assert key("# title\n", "notes.md") != key("# other\n", "notes.md")  # not Python comments


def test_key_covers_every_file_and_its_path() -> None:
    assert dedup_key({"a.py": "x = 1\n", "b.py": "y = 2\n"}) == dedup_key(
        {"b.py": "y = 2  # c\n", "a.py": "x = 1\n"}
    )
    assert dedup_key({"a.py": "x = 1\n"}) != dedup_key({"b.py": "x = 1\n"})


# ---------------------------------------------------------------------------
# In the scheduler: a twin is recorded as rejected with the id of the original


def test_scheduler_records_near_duplicates_with_their_twin(harness: Harness) -> None:
    proposer = ScriptedProposer(
        [
            ("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04")),
            (
                "LR 0.04 again, reformatted",  # the same code, whatever the best is by now
                write_file(
                    "train.py",
                    TRAIN_PY.replace("LR = 0.01", "LR=0.04   # same idea, new comment"),
                ),
            ),
            ("comment only", replace_in("train.py", "USE_BIAS = False", "USE_BIAS = False  # x")),
            ("WIDTH 64 -> 32", replace_in("train.py", "WIDTH = 64", "WIDTH = 32")),
        ]
    )
    sched, _, ledger = harness.scheduler(proposer, slots=1, baseline_repeats=2, confirm_runs=0)
    out = sched.run(tag="t")
    rows = {e.description: e for e in ledger.experiments(out.run.id)}
    first = rows["LR 0.01 -> 0.04"]
    again = rows["LR 0.04 again, reformatted"]
    assert first.status in (Status.KEEP, Status.DISCARD)
    assert again.status is Status.REJECTED and again.reason == f"duplicate of #{first.id}"
    assert again.duplicate_of == first.id and again.started_at is None
    assert "LR=0.04" in again.diff  # what was proposed stays visible
    # A comment-only change is the code of its parent: here the kept LR 0.04 or the baseline.
    comment = rows["comment only"]
    twin = first.id if first.status is Status.KEEP else 1
    assert comment.status is Status.REJECTED and comment.duplicate_of == twin
    assert rows["WIDTH 64 -> 32"].status in (Status.KEEP, Status.DISCARD)
    assert all(e.dedup is not None for e in rows.values() if e.kind is not Kind.CONFIRM)
    ledger.close()


def test_resumed_run_still_knows_the_twins(harness: Harness) -> None:
    edit = replace_in("train.py", "WIDTH = 64", "WIDTH = 32")
    sched, _, ledger = harness.scheduler(
        ScriptedProposer([("WIDTH 64 -> 32", edit)]), slots=1, baseline_repeats=2
    )
    out = sched.run(tag="t")
    ledger.close()
    near = replace_in("train.py", "WIDTH = 64", "WIDTH =  32  # again")
    sched, _, ledger = harness.scheduler(
        ScriptedProposer([("again", near)]), slots=1, baseline_repeats=2
    )
    out = sched.run(tag="t", resume=True)
    rows = {e.description: e for e in ledger.experiments(out.run.id)}
    assert rows["again"].status is Status.REJECTED
    assert rows["again"].duplicate_of == rows["WIDTH 64 -> 32"].id
    ledger.close()


def test_train_py_template_key_is_stable() -> None:
    assert dedup_key({"train.py": TRAIN_PY}) == dedup_key({"train.py": TRAIN_PY + "\n# end\n"})
