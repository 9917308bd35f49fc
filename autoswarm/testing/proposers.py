"""A proposer that hands out a fixed script of proposals: for tests and external drivers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from autoswarm.proposers.base import Context
from autoswarm.types import Experiment, Proposal

# A scripted step: the new contents of some files, computed from the best files.
Edit = Callable[[Mapping[str, str]], Mapping[str, str]]


class ScriptedProposer:
    """Proposes ``steps`` in order (each relative to the best at the time), then is exhausted."""

    name = "scripted"

    def __init__(self, steps: Sequence[tuple[str, Edit]]) -> None:
        self.steps = list(steps)
        self.observed: list[Experiment] = []
        self.contexts: list[Context] = []
        self.closed = False

    @property
    def exhausted(self) -> bool:
        return not self.steps

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        self.contexts.append(ctx)
        out: list[Proposal] = []
        while self.steps and len(out) < n:
            desc, edit = self.steps.pop(0)
            out.append(
                Proposal(
                    description=desc,
                    files=dict(edit(ctx.best_files)),
                    parent=ctx.best_commit,
                    proposer=self.name,
                )
            )
        return out

    def observe(self, experiment: Experiment) -> None:
        self.observed.append(experiment)

    def close(self) -> None:
        self.closed = True


def replace_in(path: str, old: str, new: str) -> Edit:
    """An edit that replaces ``old`` by ``new`` in one file (must occur)."""

    def edit(files: Mapping[str, str]) -> Mapping[str, str]:
        if old not in files.get(path, ""):
            raise AssertionError(f"{old!r} not in {path}")
        return {path: files[path].replace(old, new, 1)}

    return edit


def write_file(path: str, text: str) -> Edit:
    return lambda files: {path: text}


__all__ = ["Edit", "ScriptedProposer", "replace_in", "write_file"]
