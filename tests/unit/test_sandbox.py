"""What untrusted experiment code gets: no secrets; and orphan kills that never hit a reused pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from autoswarm.sandbox import (
    is_secret_name,
    kill_group,
    kill_orphan,
    process_start_time,
    scrubbed_env,
)

SECRETS = [
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_ORG_ID",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "MY_SERVICE_PASSWORD",
    "DB_SECRET",
    "DB_PASSWD",
    "WANDB_API_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_CLIENT_SECRET",
    "SSH_AUTH_SOCK",
    "STRIPE_PRIVATE_KEY",
    "my_api_key",
    "npm_config__auth",
]
KEPT = [
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "TMPDIR",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "AUTOSWARM_BUDGET",
    "AUTOSWARM_SEED",
]


def test_scrubbed_env_removes_credentials_and_keeps_the_rest() -> None:
    base = {name: "value-" + name for name in SECRETS + KEPT}
    env = scrubbed_env(base)
    assert not set(SECRETS) & set(env)
    assert env == {name: "value-" + name for name in KEPT}
    assert "ANTHROPIC_API_KEY" in base  # the input is not modified


@pytest.mark.parametrize("name", SECRETS)
def test_is_secret_name(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", KEPT)
def test_is_not_secret_name(name: str) -> None:
    assert not is_secret_name(name)


def test_extra_is_added_last_and_may_override() -> None:
    env = scrubbed_env({"PATH": "/bin", "AUTOSWARM_BUDGET": "1"}, {"AUTOSWARM_BUDGET": "60"})
    assert env == {"PATH": "/bin", "AUTOSWARM_BUDGET": "60"}


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "AUTOSWARM_TOKEN", "X_SECRET"])
def test_extra_credential_like_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"refusing to pass credential-like variable {name}"):
        scrubbed_env({"PATH": "/bin"}, {name: "sk-123"})


# ---------------------------------------------------------------------------
# Process identity


def test_process_start_time_of_self() -> None:
    start = process_start_time(os.getpid())
    assert start and start.isdigit()
    assert process_start_time(os.getpid()) == start  # stable


def test_process_start_time_of_a_dead_pid() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_start_time(proc.pid) == ""
    assert process_start_time(2**22 + 12345) == ""  # beyond pid_max


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "100"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_exit(proc: subprocess.Popen[bytes], limit: float = 5.0) -> int | None:
    try:
        return proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        return None


def test_kill_orphan_refuses_a_different_start_time(sleeper) -> None:
    start = process_start_time(sleeper.pid)
    assert start
    wrong = str(int(start) + 1)
    assert kill_orphan(sleeper.pid, sleeper.pid, wrong) is False
    assert kill_orphan(sleeper.pid, sleeper.pid, "") is False  # unknown start: hands off
    time.sleep(0.05)
    assert sleeper.poll() is None  # still alive
    assert kill_orphan(sleeper.pid, sleeper.pid, start) is True
    assert wait_exit(sleeper) == -signal.SIGKILL


def test_kill_group_of_a_gone_group(sleeper) -> None:
    os.killpg(sleeper.pid, signal.SIGKILL)
    sleeper.wait()
    assert kill_group(sleeper.pid) is False


# ---------------------------------------------------------------------------
# The allowlisted environment and the bubblewrap view (pure functions)


def test_the_environment_is_an_allowlist_not_a_denylist() -> None:
    from autoswarm.sandbox import allowed_env

    base = {
        "PATH": "/usr/bin",
        "LC_ALL": "C",
        "CUDA_VISIBLE_DEVICES": "0",
        "AUTOSWARM_SEED": "1",
        "OMP_NUM_THREADS": "2",
        "DATABASE_URL": "postgres://u:pw@h/db",
        "SLACK_WEBHOOK_URL": "https://hooks/x",
        "AUTOSWARM_API_KEY": "sk-1",  # allowlisted prefix, credential-like name
        "WANDB_API_KEY": "w",
    }
    env = allowed_env(base)
    assert env == {
        "PATH": "/usr/bin",
        "LC_ALL": "C",
        "CUDA_VISIBLE_DEVICES": "0",
        "AUTOSWARM_SEED": "1",
        "OMP_NUM_THREADS": "2",
    }
    assert allowed_env(base, ["WANDB_API_KEY", "NOT_SET"])["WANDB_API_KEY"] == "w"


def test_the_view_hides_before_it_re_binds_and_binds_the_run_directory_last(tmp_path) -> None:
    from pathlib import Path

    from autoswarm.sandbox import Sandbox, bwrap_argv

    ws = tmp_path / "ws"
    run = ws / ".autoswarm" / "runs" / "00001"
    venv = ws / ".venv"
    for d in (run, venv):
        d.mkdir(parents=True)
    box = Sandbox(hidden=(ws, Path("/run")), readable=(venv, tmp_path / "missing"), writable=(run,))
    argv = bwrap_argv("/usr/bin/bwrap", box, ["python", "train.py"], run)
    text = " ".join(argv)
    assert argv[:4] == ["/usr/bin/bwrap", "--ro-bind", "/", "/"]
    assert "--unshare-net" in argv and "--unshare-pid" in argv and "--die-with-parent" in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert text.index(f"--tmpfs {ws}") < text.index(f"--ro-bind {venv} {venv}")
    assert text.index(f"--ro-bind {venv} {venv}") < text.index(f"--bind {run} {run}")
    assert str(tmp_path / "missing") not in text  # a path that does not exist is left out
    assert argv[-5:] == ["--chdir", str(run), "--", "python", "train.py"]
    net = bwrap_argv("bwrap", Sandbox(network=True, open_files=64), ["x"], run)
    assert "--unshare-net" not in net
    assert net[net.index("--") + 1 :][1:] == ["--nofile=64:64", "--", "x"]  # prlimit first


def test_without_bubblewrap_auto_says_so_and_bwrap_refuses(monkeypatch) -> None:
    from autoswarm import sandbox
    from autoswarm.backends.factory import sandbox_line
    from autoswarm.config import Config
    from autoswarm.errors import ConfigError

    monkeypatch.setattr(sandbox, "find_bwrap", lambda: (None, "bubblewrap is not installed"))
    line = sandbox.choose(sandbox.SandboxMode.AUTO).line
    assert line.startswith("sandbox: NONE, bubblewrap is not installed"), line
    assert "sandbox: off" in sandbox.choose(sandbox.SandboxMode.OFF).line
    with pytest.raises(RuntimeError, match="not installed"):
        sandbox.choose(sandbox.SandboxMode.BWRAP)
    cfg = Config.model_validate({"sandbox": {"mode": "bwrap"}})
    with pytest.raises(ConfigError, match='mode = "bwrap" but bubblewrap is not installed'):
        sandbox_line(cfg)
    sky = Config.model_validate({"pool": {"backend": "skypilot"}})
    assert sandbox_line(sky).startswith("sandbox: NONE on skypilot nodes")


def test_sandbox_config_is_checked() -> None:
    from autoswarm.config import Config
    from autoswarm.errors import ConfigError
    from autoswarm.sandbox import SandboxMode

    assert Config().sandbox.mode is SandboxMode.AUTO and not Config().sandbox.network
    for bad in ({"mode": "docker"}, {"pass_env": ["NOT A NAME"]}, {"memory_gb": -1}):
        with pytest.raises((ConfigError, ValueError)):
            Config.model_validate({"sandbox": bad})
