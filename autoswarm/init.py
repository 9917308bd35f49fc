"""``autoswarm init``: create a workspace from a template, as a git repository.

A workspace holds ``prepare.py`` (fixed: data, tokenizer, dataloader, the metric),
``train.py`` (the editable file), ``program.md`` (instructions for an agent),
``autoswarm.toml`` and a ``.gitignore``; the first commit is the baseline.
"""

from __future__ import annotations

import re
import subprocess
from importlib import resources
from pathlib import Path

from autoswarm.config import CONFIG_NAME, render_default_config
from autoswarm.errors import ConfigError, WorkspaceError

TEMPLATES = ("cpu", "gpu")
SOURCES = ("stdlib", "climbmix")
_BUDGET = {"cpu": 60.0, "gpu": 300.0}
# Knobs a search should not spend runs on: the budget is the orchestrator's, the eval
# batch size cannot change the metric, compiling is a speed switch, not a recipe,
# and REPORT_EVERY only sets how often progress is logged.
_EXCLUDE = ("TIME_BUDGET", "EVAL_BATCH_SIZE", "COMPILE", "REPORT_EVERY")

GITIGNORE = """\
# autoswarm state (ledger, logs, run directories) and outputs: not part of any variant
.autoswarm/
results.tsv
__pycache__/
*.pyc
"""


def _template_text(name: str) -> str:
    return resources.files("autoswarm.templates").joinpath(name).read_text(encoding="utf-8")


def init_workspace(directory: Path, *, template: str = "cpu", source: str | None = None) -> Path:
    """Create a workspace in ``directory`` (which must not exist or be empty)."""
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}; choose one of: {', '.join(TEMPLATES)}")
    source = source or ("climbmix" if template == "gpu" else "stdlib")
    if source not in SOURCES:
        raise ConfigError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")
    if directory.exists() and not directory.is_dir():
        raise WorkspaceError(
            f"{directory} is a file, not a directory: choose a new directory for the workspace"
        )
    blocker = next((p for p in directory.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise WorkspaceError(
            f"{blocker} is a file, so {directory} cannot be made under it: choose another directory"
        )
    if directory.exists() and any(directory.iterdir()):
        raise WorkspaceError(
            f"{directory} already exists and is not empty: choose a new directory, "
            f"or run `autoswarm run --workspace {directory}` if it is already a workspace"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkspaceError(f"cannot create {directory}: {e.strerror}") from None
    prepare = _template_text("prepare.py")
    prepare, n = re.subn(
        r'^SOURCE = "[a-z]+"', f'SOURCE = "{source}"', prepare, count=1, flags=re.M
    )
    if n != 1:
        raise WorkspaceError(
            "the packaged prepare.py template has no SOURCE line: reinstall autoswarm"
        )
    files = {
        "prepare.py": prepare,
        "train.py": _template_text(f"{template}/train.py"),
        "program.md": _template_text("program.md"),
        CONFIG_NAME: render_default_config(
            budget=_BUDGET[template], exclude=_EXCLUDE, sealed=(f"{source}/sealed",)
        ),
        ".gitignore": GITIGNORE,
    }
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    env_id = [
        "-c",
        "user.name=autoswarm",
        "-c",
        "user.email=autoswarm@localhost",
        "-c",
        "commit.gpgsign=false",
    ]
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        [*env_id, "commit", "-q", "-m", f"autoswarm init: {template} template, {source} data"],
    ):
        proc = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise WorkspaceError(f"git {args[0]} failed in {directory}: {proc.stderr.strip()}")
    return directory


__all__ = ["SOURCES", "TEMPLATES", "init_workspace"]
