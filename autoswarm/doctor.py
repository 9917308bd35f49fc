"""``autoswarm doctor``: run hostile probes in this machine's sandbox and say what held.

A throw-away workspace (a ``.git/config``, a ledger file, a locked ``prepare.py``) and a
throw-away home directory with a credentials file are laid out in a temporary
directory; secrets of known and unknown names are put into the environment the probe is
started with; a loopback listener is opened. Then one probe, started exactly as an
experiment of the workspace would be (:mod:`autoswarm.process` with the view
``[sandbox]`` gives), tries each attack and reports what it saw; the orchestrator side
checks what changed. Each probe is a :class:`Probe` row: held or not, and what was seen.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from autoswarm.config import SandboxConfig
from autoswarm.process import ProcessRunner, ProcessSpec
from autoswarm.sandbox import choose, view_of

# Planted in the probe's environment: names a denylist knows, and names only an allowlist stops.
PLANTED = {
    "ANTHROPIC_API_KEY": "sk-ant-doctor",
    "DATABASE_URL": "postgres://u:doctor-secret@db/prod",
    "SLACK_WEBHOOK_URL": "https://hooks.example/doctor-secret",
}

_PROBE = """\
import json, os, pathlib, signal, socket, subprocess, sys, time
ws, home, port, marker, boxed = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
seen = {"env": dict(os.environ)}
def read(p):
    try:
        return open(p, "rb").read().decode(errors="replace")
    except OSError as e:
        return f"error {e.errno}"
seen["parent_environ"] = read(f"/proc/{os.getppid()}/environ")
seen["workspace"] = sorted(os.listdir(ws)) if os.path.isdir(ws) else []
seen["credentials"] = read(os.path.join(home, ".aws", "credentials"))
def attempt(fn):
    try:
        fn()
        return "done"
    except Exception as e:
        return type(e).__name__
def append(p, text):
    with open(p, "a") as f:
        f.write(text)
seen["git_config"] = attempt(lambda: append(os.path.join(ws, ".git", "config"), "[core]\\n\\tfsmonitor = x\\n"))
seen["ledger"] = attempt(lambda: os.unlink(os.path.join(ws, ".autoswarm", "ledger.sqlite")))
seen["prepare"] = attempt(lambda: append(os.path.join(ws, "prepare.py"), "# tampered\\n"))
seen["network"] = attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=3).close())
subprocess.Popen([sys.executable, "-c", "import os, time\\nos.setsid()\\nif os.fork() == 0:\\n"
                  "    os.setpgid(0, 0)\\n    time.sleep(120)  # " + marker + "\\n"])
time.sleep(0.3)
# Outside a sandbox the parent is `autoswarm doctor` itself: not tried there.
seen["signal_parent"] = attempt(lambda: os.kill(os.getppid(), signal.SIGTERM)) if boxed == "1" else "not tried"
print("SEEN>" + json.dumps(seen) + "<SEEN", flush=True)
"""


@dataclass(frozen=True)
class Probe:
    """One attack and whether the sandbox held against it."""

    name: str
    held: bool
    seen: str  # what the probe saw or did, in a few words


def marked(marker: str) -> list[int]:
    """Pids whose command line holds ``marker`` (how an escaped process is found: inside a
    sandbox it has a pid of its own namespace, so no pid it reports means anything here)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in d.joinpath("cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def check(box: SandboxConfig) -> tuple[str, list[Probe]]:
    """The sandbox line for ``box`` on this machine and the probes' verdicts.

    Raises:
        RuntimeError: ``box.mode`` is "bwrap" and bubblewrap cannot run here.
    """
    line = choose(box.mode).line
    with tempfile.TemporaryDirectory(prefix="autoswarm-doctor-") as tmp:
        root = Path(tmp)
        ws, home = root / "ws", root / "home"
        run = ws / ".autoswarm" / "runs" / "00001"
        run.mkdir(parents=True)
        (ws / ".git").mkdir()
        git_config = "[core]\n\tbare = false\n"
        (ws / ".git" / "config").write_text(git_config)
        (ws / ".autoswarm" / "ledger.sqlite").write_text("ledger")
        (ws / "prepare.py").write_text("# locked\n")
        (home / ".aws").mkdir(parents=True)
        (home / ".aws" / "credentials").write_text("aws_secret_access_key = doctor-file-secret\n")
        (run / "probe.py").write_text(_PROBE)
        env = {**os.environ, **PLANTED, "HOME": str(home)}
        view = view_of(box, workspace=ws, state_dir=ws / ".autoswarm", env=env)
        marker = f"autoswarm-doctor-{uuid.uuid4().hex}"
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            port = listener.getsockname()[1]
            boxed = "1" if view is not None else "0"
            argv = (sys.executable, "probe.py", str(ws), str(home), str(port), marker, boxed)
            with ProcessRunner() as runner:
                res = runner.run(
                    ProcessSpec(
                        argv=argv,
                        cwd=run,
                        env=env,
                        log_path=root / "probe.log",
                        timeout_s=60,
                        pass_env=box.pass_env,
                        sandbox=view.with_writable(run) if view is not None else None,
                    )
                )
        finally:
            listener.close()
        log = res.log_path.read_text(errors="replace")
        if "SEEN>" not in log:
            return line, [Probe("the probe ran", False, f"exit code {res.exit_code}: {log[-300:]}")]
        seen = json.loads(log.split("SEEN>", 1)[1].split("<SEEN", 1)[0])
        deadline = time.monotonic() + 5
        while marked(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        escaped = bool(marked(marker))
        for pid in marked(marker):  # clean up after ourselves whatever the verdict
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        leaked = sorted(n for n in PLANTED if n in seen["env"])
        parent = seen["parent_environ"]
        probes = [
            Probe("environment has no planted secret", not leaked, ", ".join(leaked) or "none"),
            Probe(
                "parent's /proc/<pid>/environ holds no secret",
                not any(v in parent for v in PLANTED.values()),
                "unreadable" if parent.startswith("error") else "readable",
            ),
            Probe(
                "the workspace is not visible",
                seen["workspace"] in ([], [".autoswarm"]),
                ", ".join(seen["workspace"]) or "empty",
            ),
            Probe(
                "the home directory is not visible",
                "doctor-file-secret" not in seen["credentials"],
                "credentials " + ("read" if "doctor" in seen["credentials"] else "not found"),
            ),
            Probe(
                ".git/config cannot be changed",
                (ws / ".git" / "config").read_text() == git_config,
                f"write: {seen['git_config']}",
            ),
            Probe(
                "the ledger cannot be deleted",
                (ws / ".autoswarm" / "ledger.sqlite").exists(),
                f"unlink: {seen['ledger']}",
            ),
            Probe(
                "locked files cannot be changed",
                (ws / "prepare.py").read_text() == "# locked\n",
                f"write: {seen['prepare']}",
            ),
            Probe(
                "no network" if not box.network else "network (allowed by [sandbox])",
                (seen["network"] != "done") != box.network,
                f"connect to 127.0.0.1: {seen['network']}",
            ),
            Probe("an escaped child dies with the experiment", not escaped, "setsid + fork"),
            Probe(
                "it cannot signal the orchestrator",
                view is not None and res.exit_code == 0,
                f"kill(parent): {seen['signal_parent']}",
            ),
        ]
    return line, probes


def table(line: str, probes: list[Probe]) -> str:
    """What ``autoswarm doctor`` prints."""
    out = [line, ""]
    for p in probes:
        out.append(f"{'held    ' if p.held else 'NOT HELD'}  {p.name} ({p.seen})")
    return "\n".join(out)


__all__ = ["PLANTED", "Probe", "check", "marked", "table"]
