"""How untrusted, agent-written code is started: scrubbed environment, own process group.

Every experiment runs code an agent wrote. It gets no secrets (variables that look
like API keys, tokens or passwords are removed), its own process group (so a hard
kill takes its children too), and nothing but the variables autoswarm documents.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping
from pathlib import Path

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
    "is_secret_name",
    "kill_group",
    "kill_orphan",
    "kill_strays",
    "process_start_time",
    "scrubbed_env",
]
