"""The process runner inside bubblewrap: exits, signals, timeouts, escapes, files, network.

Real processes in a real sandbox (:mod:`autoswarm.sandbox`). Processes inside have
pids of their own namespace, so what survives is found by a marker in its command
line, never by a pid the process reports.
"""

from __future__ import annotations

import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

from autoswarm.doctor import marked
from autoswarm.process import ProcessRunner, ProcessSpec
from autoswarm.sandbox import Sandbox, experiment_view, find_bwrap

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only"
)


def gone(marker: str, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not marked(marker):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def box(tmp_path: Path) -> tuple[Sandbox, Path, Path]:
    assert find_bwrap()[0] is not None, find_bwrap()[1]
    ws = tmp_path / "ws"
    run = ws / ".autoswarm" / "runs" / "00001"
    run.mkdir(parents=True)
    (ws / "secret.txt").write_text("workspace-secret")
    view = experiment_view(workspace=ws, state_dir=ws / ".autoswarm").with_writable(run)
    return view, ws, run


def spec(run: Path, code: str, view: Sandbox, **kw: object) -> ProcessSpec:
    (run / "probe.py").write_text(code)
    return ProcessSpec(
        argv=(sys.executable, "probe.py"),
        cwd=run,
        env={"PATH": "/usr/bin:/bin"},
        log_path=run.parent.parent / "logs" / f"{uuid.uuid4().hex}.log",
        sandbox=view,
        **kw,  # type: ignore[arg-type]
    )


def test_exit_codes_and_signals_read_as_outside(box) -> None:
    view, _, run = box
    with ProcessRunner() as runner:
        assert runner.run(spec(run, "raise SystemExit(3)", view)).exit_code == 3
        killed = runner.run(spec(run, "import os, signal; os.kill(os.getpid(), 9)", view))
    assert killed.exit_code == -9  # as a process run directly reports it (OOM kills read so)


def test_only_the_run_directory_is_writable_and_the_workspace_is_empty(box) -> None:
    view, ws, run = box
    code = f"""
import os, pathlib
print("ws:", sorted(os.listdir({str(ws)!r})))
print("secret:", os.path.exists({str(ws / "secret.txt")!r}))
pathlib.Path("out.txt").write_text("ok")
for p in ("/etc/autoswarm-probe", "/usr/autoswarm-probe"):
    try:
        open(p, "w")
        print("wrote", p)
    except OSError as e:
        print("refused", p, e.errno)
"""
    with ProcessRunner() as runner:
        res = runner.run(spec(run, code, view))
    log = res.log_path.read_text()
    assert res.exit_code == 0, log
    assert "ws: ['.autoswarm']" in log and "secret: False" in log
    assert "wrote" not in log and log.count("refused") == 2
    assert (run / "out.txt").read_text() == "ok"  # its own directory is its own


def test_every_descendant_dies_at_the_timeout_however_it_detached(box) -> None:
    view, _, run = box
    marker = f"escapee-{uuid.uuid4().hex}"
    code = f"""
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import os, time\\nos.setsid()\\nif os.fork() == 0:\\n    os.setpgid(0, 0)\\n    time.sleep(300)  # {marker}\\n"])
time.sleep(300)
"""
    with ProcessRunner() as runner:
        res = runner.run(spec(run, code, view, timeout_s=2.0))
    assert res.timed_out
    assert gone(marker), marked(marker)


def test_a_cancel_takes_the_whole_namespace(box) -> None:
    view, _, run = box
    marker = f"cancelled-{uuid.uuid4().hex}"
    code = f"""
import subprocess, sys, time
subprocess.Popen(["setsid", "sleep", "300"], )
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)  # {marker}"])
print("started", flush=True)
time.sleep(300)
"""
    with ProcessRunner() as runner:
        proc = runner.start(spec(run, code, view))
        deadline = time.monotonic() + 20
        while not marked(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marked(marker), "the probe did not start"
        proc.cancel(grace_s=0.5)
        res = proc.wait(30)
    assert res is not None and res.cancelled
    assert gone(marker), marked(marker)


def test_no_network_unless_asked(box) -> None:
    view, _, run = box
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]  # listening: a connect completes in the backlog
    code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    print("connected")
except OSError as e:
    print("refused", e)
"""
    try:
        with ProcessRunner() as runner:
            off = runner.run(spec(run, code, view)).log_path.read_text()
            from dataclasses import replace

            on = runner.run(spec(run, code, replace(view, network=True))).log_path.read_text()
    finally:
        server.close()
    assert "refused" in off, off
    assert "connected" in on, on
