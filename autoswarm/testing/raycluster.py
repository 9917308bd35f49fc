"""A real, throw-away Ray cluster on this machine, for tests and the systems benchmark.

``ray start --head`` runs as a subprocess in its own session, with its own temporary
directory, so every daemon it starts (GCS, raylet, workers) is either in its process
group or names that directory on its command line. :meth:`LocalRayCluster.stop` kills
exactly those processes, by id. It never uses the Ray CLI's machine-wide stop
command, which kills every Ray process on the machine, other people's clusters included. Usage::

    with LocalRayCluster.start(num_cpus=32, num_gpus=16, resources={"h100": 12, "h200": 4}) as c:
        backend = RayBackend(tiers, address=c.address)

The GPUs are logical: Ray hands out ids and sets ``CUDA_VISIBLE_DEVICES``; nothing
checks that a device exists, which is what tests of placement need.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from autoswarm.errors import BackendError


def _ray_cli() -> list[str]:
    """The ``ray`` command of this interpreter's environment."""
    beside = Path(sys.executable).parent / "ray"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("ray")
    if found:
        return [found]
    raise BackendError("the `ray` command is not installed: pip install 'autoswarm[ray]'")


@dataclass
class LocalRayCluster:
    """A head node started by :meth:`start`; stop it with :meth:`stop` (or use ``with``)."""

    address: str  # host:port of the GCS, for ray.init(address=...)
    temp_dir: Path  # Ray's --temp-dir: sockets, logs, session files
    pgid: int  # process group of `ray start` and the daemons it left behind
    _owns_temp: bool = True

    # -- start ---------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        num_cpus: int = 4,
        num_gpus: int = 0,
        resources: Mapping[str, float] | None = None,
        object_store_bytes: int = 100_000_000,
        timeout_s: float = 120.0,
    ) -> LocalRayCluster:
        """Start a head node with these logical resources; raises BackendError if it fails.

        The temporary directory is short on purpose: Ray puts Unix sockets in it, and a
        socket path may not be longer than 107 bytes.
        """
        temp_dir = Path(tempfile.mkdtemp(prefix="asray-", dir="/tmp"))
        argv = [
            *_ray_cli(),
            "start",
            "--head",
            "--port=0",
            f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}",
            f"--resources={json.dumps(dict(resources or {}))}",
            f"--object-store-memory={object_store_bytes}",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # pgid == proc.pid; the daemons inherit it
        )
        cluster = cls(address="", temp_dir=temp_dir, pgid=proc.pid)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            cluster.stop()
            raise BackendError(
                f"`ray start --head` did not finish in {timeout_s:g}s; "
                f"see the logs under {temp_dir} or raise timeout_s"
            ) from None
        current = temp_dir / "ray_current_cluster"
        if proc.returncode != 0 or not current.exists():
            tail = out.decode(errors="replace")[-2000:]
            cluster.stop()
            raise BackendError(
                f"`ray start --head` failed (exit {proc.returncode}); its output ends with:\n{tail}"
            )
        cluster.address = current.read_text().strip()
        return cluster

    # -- stop ----------------------------------------------------------------

    def pids(self) -> list[int]:
        """Processes of this cluster: its process group, and whatever names its temp dir."""
        import psutil  # a dependency of ray

        mine: list[int] = []
        marker = str(self.temp_dir)
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if os.getpgid(p.pid) == self.pgid or any(
                    marker in part for part in (p.info["cmdline"] or ())
                ):
                    mine.append(p.pid)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return mine

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM this cluster's processes, SIGKILL what is left after ``grace_s``. Idempotent."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.2)
        self._signal_all(signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.1)
        if self._owns_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _signal_all(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["LocalRayCluster"]
