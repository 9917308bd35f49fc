"""``autoswarm skill``: write SKILL.md, a guide that teaches a coding agent to drive the swarm.

Claude Code, Codex and similar agents read Markdown skill files (Claude Code looks in
``.claude/skills/<name>/SKILL.md``). The guide is rendered from
``autoswarm/templates/skill.md`` with this workspace's facts filled in: its path,
metric and direction, editable and locked files, slots, budget and keep rule, so the
agent gets exact commands rather than placeholders. Run::

    autoswarm skill --workspace ws                       # ws/SKILL.md
    autoswarm skill --out .claude/skills/autoswarm/SKILL.md
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from autoswarm.config import Config
from autoswarm.outputs import atomic_write
from autoswarm.types import Direction


def _quoted(paths: tuple[str, ...]) -> str:
    return ", ".join(f"`{p}`" for p in paths) if paths else "(none)"


def render_skill(cfg: Config, workspace: Path) -> str:
    """SKILL.md for the workspace at ``workspace`` with configuration ``cfg``."""
    template = resources.files("autoswarm.templates").joinpath("skill.md").read_text("utf-8")
    run = cfg.run
    slots = run.workers or (os.cpu_count() or 1) // max(1, run.threads_per_worker)
    if cfg.pool.tiers:
        slots = len(cfg.pool.slot_tiers(run.workers))
    values = {
        "WORKSPACE": str(workspace.resolve()),
        "METRIC": cfg.metric.name,
        "BETTER": "lower" if cfg.metric.direction is Direction.MINIMIZE else "higher",
        "EDITABLE": _quoted(cfg.workspace.editable),
        "LOCKED": _quoted(cfg.workspace.locked),
        "FIRST": cfg.workspace.editable[0],
        "SLOTS": str(max(1, slots)),
        "BUDGET": f"{run.budget:g}",
        "REPEATS": str(run.baseline_repeats),
        "CONFIRM_RUNS": str(run.confirm_runs),
        "FALSE_KEEP_RATE": f"{run.false_keep_rate:g}",
    }
    text = template
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def write_skill(cfg: Config, workspace: Path, out: Path | None = None) -> Path:
    """Write the guide to ``out`` (default ``<workspace>/SKILL.md``); returns the path."""
    path = out if out is not None else workspace / "SKILL.md"
    atomic_write(path, render_skill(cfg, workspace))
    return path


__all__ = ["render_skill", "write_skill"]
