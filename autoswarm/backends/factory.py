"""Build the backend that ``[pool] backend`` names: local, ray or skypilot.

The control plane must import without Ray or SkyPilot installed, so those backends are
imported here, lazily, only when a config asks for them; a missing package becomes a
:class:`~autoswarm.errors.ConfigError` that says which extra to install. Usage::

    backend = make_backend(cfg, workspace_root=ws.root, state_dir=ws.state_dir)
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from autoswarm.backends.base import Backend
from autoswarm.config import Config
from autoswarm.errors import ConfigError
from autoswarm.sandbox import Sandbox, choose, view_of

# backend name -> (module, class, pip extra)
_REMOTE = {
    "ray": ("autoswarm.backends.ray", "RayBackend", "ray"),
    "skypilot": ("autoswarm.backends.skypilot", "SkyPilotBackend", "skypilot"),
}


def local_workers(cfg: Config) -> int:
    """Slots of the local backend: the tiers' slots when ``[[pool.tiers]]`` are given, else
    ``[run] workers`` (0 = one per GPU or per core group)."""
    if not cfg.pool.tiers:
        return cfg.run.workers
    slots = sum(t.slots for t in cfg.pool.tiers)
    if cfg.run.workers and cfg.run.workers != slots:
        raise ConfigError(
            f"--workers/[run] workers is {cfg.run.workers} but the local [[pool.tiers]] have "
            f"{slots} slot(s) in all: leave out workers (the tiers decide) or change the tiers' slots"
        )
    return slots


def local_nice(cfg: Config, workspace_root: Path) -> int:
    """``[pool.options] nice`` of the local backend: experiments' priority below ours."""
    nice = cfg.pool.options.get("nice", 10)
    if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
        raise ConfigError(
            f"{workspace_root}/autoswarm.toml: [pool.options] nice must be a whole number "
            f"from 0 (experiments at the orchestrator's priority) to 19, got {nice!r}"
        )
    return nice


def sandbox_line(cfg: Config) -> str:
    """The one line that says how this run's experiments are contained (run, status).

    Raises:
        ConfigError: ``[sandbox] mode = "bwrap"`` and bubblewrap cannot run here.
    """
    if cfg.pool.backend == "ray":
        return (
            f"sandbox: on each Ray node, bubblewrap where it runs there ([sandbox] mode = "
            f"{cfg.sandbox.mode.value!r}); the first line of each experiment's log says which"
        )
    if cfg.pool.backend != "local":
        return (
            f"sandbox: NONE on {cfg.pool.backend} nodes (bubblewrap is used by the local and "
            "Ray backends only): experiments get an allowlisted environment and their own session"
        )
    try:
        return choose(cfg.sandbox.mode).line
    except RuntimeError as e:
        raise ConfigError(
            f'[sandbox] mode = "bwrap" but {e}; install it, or set [sandbox] mode = "auto" '
            "to run with the allowlisted environment only"
        ) from None


def experiment_sandbox(cfg: Config, *, workspace_root: Path, state_dir: Path) -> Sandbox | None:
    """The bubblewrap view of ``cfg``'s experiments on this machine, None without one.

    Raises:
        ConfigError: ``[sandbox] mode = "bwrap"`` and bubblewrap cannot run here.
    """
    sandbox_line(cfg)  # refuses mode = "bwrap" without bubblewrap
    if cfg.pool.backend != "local":
        return None
    return view_of(cfg.sandbox, workspace=workspace_root, state_dir=state_dir)


def make_backend(
    cfg: Config,
    *,
    workspace_root: Path,
    state_dir: Path,
    gpus: Sequence[str] | None = None,
) -> Backend:
    """The backend of ``cfg.pool`` (see the module docstring).

    Args:
        cfg: the run's configuration; ``cfg.pool.backend`` picks the backend.
        workspace_root: the workspace (named in error messages).
        state_dir: ``.autoswarm`` of the workspace, where remote backends keep their state.
        gpus: local backend only: GPU ids to use instead of detecting them.

    Raises:
        ConfigError: unknown backend, or its package is not installed.
    """
    name = cfg.pool.backend
    if name == "local":
        from autoswarm.backends.local import LocalBackend

        return LocalBackend(
            local_workers(cfg),
            threads_per_worker=cfg.run.threads_per_worker,
            gpus=gpus,
            log_max_bytes=cfg.run.log_max_bytes,
            nice=local_nice(cfg, workspace_root),
            sandbox=experiment_sandbox(cfg, workspace_root=workspace_root, state_dir=state_dir),
            pass_env=cfg.sandbox.pass_env,
        )
    if name not in _REMOTE:
        raise ConfigError(
            f"{workspace_root}/autoswarm.toml: [pool] backend {name!r} is unknown; "
            f"choose one of: local, {', '.join(_REMOTE)}"
        )
    module, cls_name, extra = _REMOTE[name]
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except ImportError as e:
        raise ConfigError(
            f"{workspace_root}/autoswarm.toml asks for the {name} backend, which cannot be "
            f"imported ({e}): install it with `pip install 'autoswarm[{extra}]'`, or set "
            '[pool] backend = "local"'
        ) from e
    backend: Backend = cls.from_config(cfg, state_dir=state_dir)
    return backend


__all__ = ["experiment_sandbox", "local_nice", "local_workers", "make_backend", "sandbox_line"]
