"""How untrusted, agent-written code is contained: its environment and its view of the machine.

Every experiment runs code an agent wrote, and so does a coding-agent CLI. Three layers:

1. **The environment is built from an allowlist** (:func:`allowed_env`): what training
   needs (``PATH``, locale, thread counts, ``CUDA_*``, ``AUTOSWARM_*``, ...), plus the
   names the user lists on purpose (``[sandbox] pass_env``, ``[agent] pass_env``). A
   variable the list does not name (``DATABASE_URL``, ``SLACK_WEBHOOK_URL``) never
   reaches the process, and a listed name that looks like a credential
   (:func:`is_secret_name`) is dropped too unless passed on purpose.
2. **A sandbox** (:class:`Sandbox`, run through bubblewrap, :func:`bwrap_argv`): its own
   PID, mount, IPC, UTS and (unless ``network``) network namespaces and no
   capabilities. It cannot see or signal the orchestrator (``/proc`` shows only its own
   tree, so ``/proc/<ppid>/environ`` is not there to read); the machine is visible
   read-only, with the workspace (its ``.git`` and ``.autoswarm``), the user's home,
   ``/tmp`` and ``/run`` replaced by empty directories; only its run directory is
   writable (and a private ``/tmp``); the interpreter, the training data cache and the
   paths the user lists stay readable. When the experiment ends, the namespace goes with
   it, and with it every descendant, however it detached (``setsid``, double fork).
3. **Its own session** (process group) and a hard timeout, in :mod:`autoswarm.process`.

Where bubblewrap cannot run (not installed, no user namespaces, not Linux),
``[sandbox] mode = "auto"`` falls back to layers 1 and 3 only and says so
(:func:`choose`); ``mode = "bwrap"`` refuses to start instead.
"""

from __future__ import annotations

import enum
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoswarm.config import SandboxConfig

# Names that carry credentials. Matching is on the variable *name*, case-insensitive.
# Whole name segments only (between underscores), so TOKENIZERS_PARALLELISM and
# GIT_AUTHOR_NAME pass while HF_TOKEN and MY_SERVICE_PASSWORD do not.
_SECRET_NAME = re.compile(
    r"(^|_)(API_?KEY|APIKEY|KEY|TOKEN|SECRET|SECRETS|PASSWORD|PASSWD|PASS|CREDENTIALS?"
    r"|PRIVATE_KEY|ACCESS_KEY|SESSION_KEY|AUTH|COOKIE|BEARER)(_|$)",
    re.IGNORECASE,
)
# Whole families of cloud and service credentials, whatever the suffix.
_SECRET_PREFIXES = (
    "AWS_",
    "AZURE_",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCP_",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "ANTHROPIC_",
    "OPENAI_",
    "WANDB_API",
    "GITHUB_",
    "GH_",
    "SKYPILOT_",
    "SSH_AUTH_SOCK",
)


def secret_name_regex() -> str:
    """:func:`is_secret_name` as one POSIX extended regex over the upper-cased name (for
    the shell of a remote node)."""
    prefixes = "|".join(re.escape(p) for p in _SECRET_PREFIXES)
    return f"{_SECRET_NAME.pattern}|^({prefixes})"


def is_secret_name(name: str) -> bool:
    """True if an environment variable of this name may hold a credential."""
    return bool(_SECRET_NAME.search(name)) or name.upper().startswith(_SECRET_PREFIXES)


def scrubbed_env(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` without credential-like variables, plus ``extra`` (autoswarm's own variables).

    ``extra`` is applied last but is scrubbed too: nothing autoswarm adds may carry a secret.
    """
    env = {k: v for k, v in base.items() if not is_secret_name(k)}
    for k, v in (extra or {}).items():
        if is_secret_name(k):
            raise ValueError(f"refusing to pass credential-like variable {k} to an experiment")
        env[k] = v
    return env


# What an experiment's environment may hold, by name: what training and its libraries
# read. Everything else is dropped; names the user needs beside these are passed on
# purpose (``[sandbox] pass_env``).
ALLOWED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "PYTHONUNBUFFERED",
        "PYTHONHASHSEED",
        "PYTHONPATH",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONWARNINGS",
        "PYTHONIOENCODING",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "TOKENIZERS_PARALLELISM",
        "XDG_CACHE_HOME",
        "HF_HOME",
        "HF_DATASETS_CACHE",
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_CACHE",
        "TRANSFORMERS_OFFLINE",
        "MPLBACKEND",
        "MPLCONFIGDIR",
    }
)
ALLOWED_PREFIXES = (
    "LC_",
    "AUTOSWARM_",
    "CUDA_",
    "NVIDIA_",
    "NCCL_",
    "CUBLAS_",
    "CUDNN_",
    "TORCH_",
    "TORCHINDUCTOR_",
    "PYTORCH_",
    "TRITON_",
    "XLA_",
    "JAX_",
    "ROCR_",
    "HIP_",
    "HSA_",
)


def is_allowed_name(name: str) -> bool:
    """True if the allowlist lets an environment variable of this name through."""
    return name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)


def allowed_env(base: Mapping[str, str], pass_env: Iterable[str] = ()) -> dict[str, str]:
    """``base`` reduced to the allowlist (never a credential-like name), plus ``pass_env``.

    ``pass_env`` names are passed whatever they look like: the user named them.
    """
    env = {k: v for k, v in base.items() if is_allowed_name(k) and not is_secret_name(k)}
    for name in pass_env:
        if name in base:
            env[name] = base[name]
    return env


# ---------------------------------------------------------------------------
# The sandbox (bubblewrap)


class SandboxMode(enum.Enum):
    """``[sandbox] mode``: how experiments are contained."""

    AUTO = "auto"  # bubblewrap where it works, else the environment and session only (said)
    BWRAP = "bwrap"  # bubblewrap or refuse to start
    OFF = "off"  # the environment and session only (a trusted workspace, a debugger)


@dataclass(frozen=True, kw_only=True)
class Sandbox:
    """The view of the machine a sandboxed process gets. Paths are absolute.

    Args:
        writable: directories bound read-write (the run directory).
        hidden: directories replaced by empty ones (the workspace, home, /tmp, /run).
        readable: directories bound read-only again, inside a hidden one or not (the
            interpreter, the data cache, what ``[sandbox] read_only`` lists).
        devices: device files passed through (the GPUs).
        network: keep the host's network; False gives it a network of its own
            (loopback only).
        memory_bytes: its address-space limit (RLIMIT_AS), 0 for none.
        open_files: its open-file limit (RLIMIT_NOFILE), 0 for none.
        processes: its process limit (RLIMIT_NPROC, counted per user), 0 for none.
    """

    writable: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    devices: tuple[Path, ...] = ()
    network: bool = False
    memory_bytes: int = 0
    open_files: int = 0
    processes: int = 0

    def with_writable(self, *paths: Path) -> Sandbox:
        """The same view with ``paths`` writable too (a job's run directory)."""
        from dataclasses import replace

        return replace(self, writable=(*self.writable, *paths))


def _nested(path: Path, parents: Sequence[Path]) -> bool:
    return any(path == p or p in path.parents for p in parents)


def bwrap_argv(bwrap: str, box: Sandbox, argv: Sequence[str], cwd: Path) -> list[str]:
    """The command line that runs ``argv`` in ``cwd`` inside ``box``.

    Mounts are applied in order, so the later ones win: the machine read-only, then the
    hidden directories as empty tmpfs, then the readable ones back read-only, then the hidden
    ones inside a readable one hidden again, then the writable ones. A readable or writable
    path that does not exist is left out.
    """
    out = [
        bwrap,
        "--ro-bind", "/", "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--unshare-user-try", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--cap-drop", "ALL",
    ]  # fmt: skip
    if not box.network:
        out.append("--unshare-net")
    out += _fixed_mounts(box.hidden, box.readable, box.devices, int(time.monotonic() // 10))
    for d in sorted(set(box.writable), key=lambda p: len(p.parts)):
        if d.is_dir():
            out += ["--dir", str(d), "--bind", str(d), str(d)]
    out += ["--chdir", str(cwd), "--"]
    limits = [
        f"--{name}={n}:{n}"
        for name, n in (
            ("as", box.memory_bytes),
            ("nofile", box.open_files),
            ("nproc", box.processes),
        )
        if n
    ]
    if limits:
        prlimit = shutil.which("prlimit") or "prlimit"
        out += [prlimit, *limits, "--"]
    return out + list(argv)


@functools.lru_cache(maxsize=16)
def _fixed_mounts(
    hidden: tuple[Path, ...], readable: tuple[Path, ...], devices: tuple[Path, ...], _epoch: int
) -> tuple[str, ...]:
    """The mounts of a view that are the same for every experiment of a run.

    Which of the paths exist is looked at again every ten seconds (``_epoch``), not for
    every start: on some machines each look costs a tenth of a millisecond, and a view
    names dozens of paths.
    """
    out: list[str] = []
    for d in sorted(set(hidden), key=lambda p: len(p.parts)):
        if d.is_dir():
            out += ["--tmpfs", str(d)]
    for d in sorted(set(readable), key=lambda p: len(p.parts)):
        if d.exists():
            if _nested(d, hidden):
                out += ["--dir", str(d)] if d.is_dir() else []
            out += ["--ro-bind", str(d), str(d)]
    # A hidden directory inside a readable one (the sealed data inside the data cache) is
    # hidden again over it: later mounts win.
    for d in sorted(set(hidden), key=lambda p: len(p.parts)):
        if d.is_dir() and any(r in d.parents for r in readable):
            out += ["--tmpfs", str(d)]
    for dev in devices:
        if dev.exists():
            out += ["--dev-bind", str(dev), str(dev)]
    return tuple(out)


def interpreter_dirs(argv0: str, env: Mapping[str, str]) -> tuple[Path, ...]:
    """Where the interpreter of ``argv0`` and ours live, to stay readable in a sandbox.

    Our ``sys.prefix`` / ``base_prefix`` (a venv and the Python it was made from), the
    real home of ``argv0`` (a venv's ``python`` is a link into it), and every directory
    on the child's ``PATH``.
    """
    dirs = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    exe = shutil.which(argv0, path=env.get("PATH", os.defpath)) if os.sep not in argv0 else argv0
    if exe:
        real = Path(exe).resolve()
        dirs.add(real.parent.parent if real.parent.name == "bin" else real.parent)
        dirs.add(Path(exe).absolute().parent)
    for entry in env.get("PATH", "").split(os.pathsep):
        if entry and os.path.isabs(entry):
            dirs.add(Path(entry))
            dirs.add(Path(entry).resolve())
    for entry in env.get("PYTHONPATH", "").split(os.pathsep):
        if entry and os.path.isabs(entry):
            dirs.add(Path(entry).resolve())
    return tuple(sorted(dirs))


def experiment_view(
    *,
    workspace: Path,
    state_dir: Path,
    read_only: Iterable[str] = (),
    hide: Iterable[str] = (),
    network: bool = False,
    memory_bytes: int = 0,
    open_files: int = 0,
    processes: int = 0,
    env: Mapping[str, str] | None = None,
) -> Sandbox:
    """The view every experiment of a run gets (its run directory is added per job).

    Hidden: the workspace (with ``.git`` and ``.autoswarm``), the state directory, the
    home directory, ``/tmp``, ``/var/tmp``, ``/run`` and ``hide``. Readable again: the
    interpreters (:func:`interpreter_dirs`), the data cache (``$AUTOSWARM_CACHE`` or
    ``~/.cache/autoswarm``) and ``read_only``. Devices: the GPUs' device files.
    """
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    hidden = [workspace, state_dir, home, Path("/tmp"), Path("/var/tmp"), Path("/run")]
    hidden += [Path(h).expanduser() for h in hide]
    cache = Path(env.get("AUTOSWARM_CACHE") or home / ".cache" / "autoswarm").expanduser()
    readable = [cache, *(Path(r).expanduser() for r in read_only)]
    readable += [d for d in interpreter_dirs(sys.executable, env) if _nested(d, hidden)]
    devices = [
        p
        for pattern in ("nvidia*", "nvidia-caps/*", "dri/*", "kfd")
        for p in sorted(Path("/dev").glob(pattern))
    ]
    return Sandbox(
        hidden=tuple(p.absolute() for p in hidden),
        readable=tuple(p.absolute() for p in readable),
        devices=tuple(devices),
        network=network,
        memory_bytes=memory_bytes,
        open_files=open_files,
        processes=processes,
    )


def view_of(
    box: SandboxConfig,
    *,
    workspace: Path,
    state_dir: Path,
    network: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> Sandbox | None:
    """The :func:`experiment_view` that ``[sandbox]`` asks for, None where there is none.

    ``network`` overrides ``box.network`` (the agent CLI talks to its model).

    Raises:
        RuntimeError: ``mode = "bwrap"`` and bubblewrap cannot run here.
    """
    if choose(box.mode).bwrap is None:
        return None
    return experiment_view(
        workspace=workspace.absolute(),
        state_dir=state_dir.absolute(),
        read_only=box.read_only,
        hide=box.hide,
        network=box.network if network is None else network,
        memory_bytes=int(box.memory_gb * 2**30),
        open_files=box.open_files,
        processes=box.processes,
        env=env,
    )


def sandbox_settings(box: SandboxConfig) -> dict[str, Any]:
    """``[sandbox]`` as plain data, for the nodes of a cluster to build their view from."""
    return {
        "mode": box.mode.value,
        "network": box.network,
        "read_only": list(box.read_only),
        "hide": list(box.hide),
        "pass_env": list(box.pass_env),
        "memory_bytes": int(box.memory_gb * 2**30),
        "open_files": box.open_files,
        "processes": box.processes,
    }


@functools.cache
def find_bwrap() -> tuple[str | None, str]:
    """``(path to a working bwrap, "")`` or ``(None, why not)``: probed once per process."""
    if not sys.platform.startswith("linux"):
        return None, f"bubblewrap runs on Linux only (this is {sys.platform})"
    path = shutil.which("bwrap")
    if path is None:
        return None, "bubblewrap is not installed (apt-get install bubblewrap)"
    probe = bwrap_argv(path, Sandbox(), ["true"], Path("/"))
    try:
        done = subprocess.run(probe, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"bubblewrap does not start here ({e})"
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        return (
            None,
            f"bubblewrap cannot make namespaces here ({why[-1] if why else done.returncode})",
        )
    return path, ""


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` decided: ``bwrap`` is the binary to use, None for no sandbox."""

    bwrap: str | None
    line: str  # one line for the run's first lines and ``status``


def choose(mode: SandboxMode) -> Choice:
    """The sandbox a run gets for ``mode``, and the line that says so.

    Raises:
        RuntimeError: ``mode`` is BWRAP and bubblewrap cannot run here (the caller turns
            it into a ConfigError with the reason).
    """
    if mode is SandboxMode.OFF:
        return Choice(
            None,
            'sandbox: off ([sandbox] mode = "off"): experiments get an '
            "allowlisted environment and their own session only",
        )
    path, why = find_bwrap()
    if path is not None:
        return Choice(
            path, "sandbox: bubblewrap (own PID/mount namespaces; only the run directory writable)"
        )
    if mode is SandboxMode.BWRAP:
        raise RuntimeError(why)
    return Choice(
        None,
        f"sandbox: NONE, {why}; experiments get an allowlisted environment "
        'and their own session only (set [sandbox] mode = "bwrap" to refuse)',
    )


def process_start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` (field 22 of /proc/<pid>/stat), '' if unknown.

    Stored with a pid so that, after a crash of the orchestrator, we kill the group we
    started and never an unrelated process that later got the same pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Signal a whole process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def kill_orphan(pid: int, pgid: int, start: str) -> bool:
    """Kill the group of a process we started earlier, if it is still that process.

    Returns True if something was killed. If ``pid`` is gone or its start time differs
    (pid reused), the group is left alone.
    """
    if start and process_start_time(pid) == start:
        return kill_group(pgid)
    return False


def kill_strays(workdir: Path, experiment_id: int) -> int:
    """Kill the process groups of an experiment whose handle was never recorded.

    The orchestrator records a job's handle after the backend started it; one that died
    in between left a process nobody can name by pid. It is found by what the scheduler
    gave it: its working directory (``workdir`` or below) and ``AUTOSWARM_EXPERIMENT``
    in its environment; both must match, so nothing else is touched. Linux (``/proc``)
    only; elsewhere nothing is found. Returns how many groups were killed.
    """
    root = os.path.realpath(workdir)
    mark = f"AUTOSWARM_EXPERIMENT={experiment_id}".encode()
    own = os.getpgrp()
    killed: set[int] = set()
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return 0
    for pid in pids:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if cwd != root and not cwd.startswith(root + os.sep):
                continue
            if mark not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            pgid = os.getpgid(pid)
        except OSError:
            continue  # gone, or not ours to read
        if pgid != own and pgid not in killed and kill_group(pgid):
            killed.add(pgid)
    return len(killed)


__all__ = [
    "ALLOWED_NAMES",
    "ALLOWED_PREFIXES",
    "Choice",
    "Sandbox",
    "SandboxMode",
    "allowed_env",
    "bwrap_argv",
    "choose",
    "experiment_view",
    "find_bwrap",
    "interpreter_dirs",
    "is_allowed_name",
    "is_secret_name",
    "kill_group",
    "kill_orphan",
    "kill_strays",
    "process_start_time",
    "sandbox_settings",
    "scrubbed_env",
    "secret_name_regex",
    "view_of",
]
