"""SkyPilot task generation: pool validation, task dicts checked by SkyPilot's own parser,
and the run/setup scripts executed by a real bash.

Run: .venv/bin/pytest -q tests/unit/test_skypilot_tasks.py
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autoswarm.backends.skytask import (
    cluster_name,
    job_name,
    parse_pool,
    plan_tasks,
    read_exit,
    remote_argv,
    run_script,
    setup_script,
    task_config,
)
from autoswarm.config import Config, PoolConfig, TierConfig, load_config
from autoswarm.errors import ConfigError
from autoswarm.types import Job

sky = pytest.importorskip("sky")
pytestmark = pytest.mark.skypilot

DOCS = Path(__file__).resolve().parents[2] / "docs" / "skypilot.md"


def _doc_examples() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)


def _workspace(tmp_path: Path, pool_toml: str) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "autoswarm.toml").write_text('[run]\nbudget = 300\ntag = "exp1"\n\n' + pool_toml)
    return ws


def _job(tmp_path: Path, slot: int = 0, **kw: Any) -> Job:
    fields: dict[str, Any] = dict(
        experiment_id=7,
        workdir=tmp_path / "runs" / "00007",
        argv=(sys.executable, "train.py"),
        env={
            "AUTOSWARM_BUDGET": "300",
            "AUTOSWARM_SEED": "42",
            "AUTOSWARM_EXPERIMENT": "7",
            "AUTOSWARM_API_KEY": "sk-secret",
            "HF_TOKEN": "hf_secret",
            "PATH": "/usr/bin",
            "WANDB_PROJECT": "p",
        },
        timeout_s=660.0,
        slot=slot,
        log_path=tmp_path / "logs" / "7.log",
        budget_s=300.0,
    )
    fields.update(kw)
    return Job(**fields)


def _pool(options: dict[str, Any], *tiers: TierConfig) -> PoolConfig:
    return PoolConfig(
        backend="skypilot",
        options=options,
        tiers=tiers or (TierConfig(name="h100", accelerator="H100:1", slots=2),),
    )


# ---------------------------------------------------------------------------
# The documented examples are valid configs and valid SkyPilot tasks


def test_docs_have_both_examples() -> None:
    examples = _doc_examples()
    assert len(examples) == 2
    assert 'mode = "clusters"' in examples[0] and 'mode = "jobs"' in examples[1]


@pytest.mark.parametrize("index", [0, 1])
def test_documented_example_tasks_pass_skypilots_parser(tmp_path: Path, index: int) -> None:
    ws = _workspace(tmp_path, _doc_examples()[index])
    cfg = load_config(ws)
    opts = parse_pool(cfg.pool)
    tasks = plan_tasks(cfg, ws, opts.capacity)
    assert len(tasks) == opts.capacity == (16 if index == 0 else 10)
    seen_accels = set()
    for config in tasks:
        task = sky.Task.from_yaml_config(copy.deepcopy(config))
        (res,) = list(task.resources)
        seen_accels.update(res.accelerators)
        assert task.workdir == config["workdir"]
        assert task.envs["AUTOSWARM_BUDGET"] == "300"
        assert 'timeout --kill-after=30 660 "${box[@]}" python train.py' in task.run
        assert "python prepare.py" in task.setup
        if index == 0:
            assert str(res.cloud) == "Kubernetes" and not res.use_spot
            assert res.job_recovery is None
        else:
            if config["envs"]["AUTOSWARM_TIER"] == "h100-spot":
                assert res.use_spot
                assert res.job_recovery == {"strategy": "FAILOVER", "max_restarts_on_errors": 2}
            else:
                assert not res.use_spot and str(res.cloud) == "AWS" and res.region == "us-east-1"
    assert seen_accels == {"H100", "H200"}


def test_clusters_mode_task(tmp_path: Path) -> None:
    opts = parse_pool(
        _pool(
            {"infra": "k8s", "cpus": "8+", "memory": "32+", "forward_env": ["WANDB_PROJECT"]},
            TierConfig(name="h100", accelerator="H100:1", slots=2),
            TierConfig(name="h200", accelerator="H200:1", slots=1, options={"use_spot": True}),
        )
    )
    job = _job(tmp_path, slot=2)
    config = task_config(job, opts, tag="exp1", prepare=("{python}", "prepare.py"))
    task = sky.Task.from_yaml_config(copy.deepcopy(config))
    (res,) = list(task.resources)
    assert res.accelerators == {"H200": 1} and res.use_spot
    assert res.cpus == "8+" and res.memory == "32+"
    assert task.name == "autoswarm-exp1-e7"
    assert task.envs == {
        "AUTOSWARM_BUDGET": "300",
        "AUTOSWARM_SEED": "42",
        "AUTOSWARM_EXPERIMENT": "7",
        "AUTOSWARM_TIER": "h200",
        "WANDB_PROJECT": "p",
    }, "secrets and the local PATH must never reach a task"
    assert sys.executable not in task.run, "the local interpreter path does not exist remotely"
    assert cluster_name(opts, "exp1", "h200", 0) == "autoswarm-exp1-h200-0"
    assert job_name(opts, "", 3) == "autoswarm-e3"


def test_jobs_mode_task_has_recovery(tmp_path: Path) -> None:
    opts = parse_pool(
        _pool(
            {
                "mode": "jobs",
                "use_spot": True,
                "job_recovery": {"strategy": "eager_next_region", "max_restarts_on_errors": 1},
            }
        )
    )
    task = sky.Task.from_yaml_config(task_config(_job(tmp_path), opts))
    (res,) = list(task.resources)
    assert res.use_spot
    assert res.job_recovery == {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 1}


# ---------------------------------------------------------------------------
# Malformed pools are rejected with a message that says what to write


@pytest.mark.parametrize(
    ("options", "tier", "message"),
    [
        ({}, TierConfig(name="gpu", slots=2), r"tier 'gpu': a skypilot tier needs an accelerator"),
        ({"mode": "serverless"}, None, r"mode 'serverless' is unknown; choose 'clusters'"),
        (
            {"mode": "jobs", "job_recovery": {"strategy": "RETRY_FOREVER"}},
            None,
            r"job_recovery strategy 'RETRY_FOREVER' is unknown; choose FAILOVER or EAGER_NEXT_REGION",
        ),
        (
            {"mode": "jobs", "job_recovery": {"max_restarts_on_errors": -1}},
            None,
            r"max_restarts_on_errors must be an integer >= 0",
        ),
        (
            {"mode": "jobs", "job_recovery": {"strategy": "FAILOVER", "retries": 3}},
            None,
            r"job_recovery has unknown key\(s\) retries",
        ),
        (
            {"job_recovery": "FAILOVER"},
            None,
            r'job_recovery applies to managed jobs only: set mode = "jobs"',
        ),
        ({"use_spot": "yes"}, None, r"use_spot must be true or false"),
        ({"zone": "us-east-1a"}, None, r"unknown key\(s\) zone; known keys:"),
        (
            {},
            TierConfig(name="h100", accelerator="H100:1", options={"gpus": 2}),
            r"unknown option\(s\) gpus",
        ),
        ({"cluster_prefix": "My_Pool"}, None, r"cluster_prefix 'My_Pool' must be lowercase"),
        (
            {"forward_env": ["HF_TOKEN"]},
            None,
            r"forward_env may not pass credential-like variables \(HF_TOKEN\)",
        ),
    ],
)
def test_malformed_pool_is_rejected(
    options: dict[str, Any], tier: TierConfig | None, message: str
) -> None:
    pool = _pool(options, *([tier] if tier else []))
    with pytest.raises(ConfigError, match=message) as e:
        parse_pool(pool)
    assert "docs/skypilot.md" in str(e.value)


def test_pool_without_tiers_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"needs at least one \[\[pool.tiers\]\]"):
        parse_pool(PoolConfig(backend="skypilot", options={}, tiers=()))


def test_malformed_tier_in_a_workspace_is_rejected_by_the_backend(tmp_path: Path) -> None:
    from autoswarm.backends.skypilot import SkyPilotBackend

    ws = _workspace(
        tmp_path,
        '[pool]\nbackend = "skypilot"\n[[pool.tiers]]\nname = "cpu"\nslots = 2\n',
    )
    cfg: Config = load_config(ws)
    with pytest.raises(ConfigError, match=r'needs an accelerator, e.g. accelerator = "H100:1"'):
        SkyPilotBackend.from_config(cfg, state_dir=tmp_path / "state", sdk=object())


def test_tier_infra_replaces_the_pools_region() -> None:
    opts = parse_pool(
        _pool(
            {"cloud": "aws", "region": "us-west-2"},
            TierConfig(name="a", accelerator="H100:1"),
            TierConfig(name="b", accelerator="H100:1", options={"infra": "k8s"}),
        )
    )
    assert [t.infra for t in opts.tiers] == ["aws/us-west-2", "k8s"]


# ---------------------------------------------------------------------------
# The scripts, executed by bash


def test_remote_argv() -> None:
    assert remote_argv(["/venv/bin/python3", "train.py"], "python") == ["python", "train.py"]
    assert remote_argv(["{python}", "x.py"], "py") == ["py", "x.py"]
    assert remote_argv(["torchrun", "train.py"], "python") == ["torchrun", "train.py"]


def _bash(script: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )


def test_run_script_reports_exit_code_and_timeout(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("print('---')\nprint('val_bpb: 0.5')\n")
    (tmp_path / "bad.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(30)\n")
    python = sys.executable
    ok = _bash(run_script(_job(tmp_path, argv=(python, "ok.py")), python), tmp_path, tmp_path)
    assert ok.returncode == 0 and read_exit(ok.stdout) == (0, False)
    assert "val_bpb: 0.5" in ok.stdout
    bad = _bash(run_script(_job(tmp_path, argv=(python, "bad.py")), python), tmp_path, tmp_path)
    assert bad.returncode == 3 and read_exit(bad.stdout) == (3, False)
    slow_job = _job(tmp_path, argv=(python, "slow.py"), timeout_s=1.0)
    slow = _bash(run_script(slow_job, python), tmp_path, tmp_path)
    assert slow.returncode == 124 and read_exit(slow.stdout) == (124, True)


def test_setup_prepares_once_per_cluster(tmp_path: Path) -> None:
    (tmp_path / "prepare.py").write_text("open('count.txt', 'a').write('x')\nprint('prepared')\n")
    opts = parse_pool(_pool({"setup": "echo installing", "python": sys.executable}))
    script = setup_script(opts, ("{python}", "prepare.py"))
    first = _bash(script, tmp_path, tmp_path)
    second = _bash(script, tmp_path, tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    assert "installing" in first.stdout and "installing" in second.stdout
    assert (tmp_path / "count.txt").read_text() == "x", "prepare must run once per cluster"
    assert "already prepared" in second.stdout
    (tmp_path / "prepare.py").write_text("import sys\nsys.exit(5)\n")
    other = setup_script(opts, ("{python}", "prepare.py", "--fresh"))
    assert _bash(other, tmp_path, tmp_path).returncode == 5, "a failing prepare fails the setup"
