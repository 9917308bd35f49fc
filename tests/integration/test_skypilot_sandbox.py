"""The SkyPilot task's run command contains the experiment on its node (issue 15).

No cloud here: the generated ``run`` script is executed by bash on this machine, as a
SkyPilot node would execute it (its working directory = the task's workdir under
``$HOME``), with a hostile train.py, secrets in the node's environment and a credentials
file in its home directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from autoswarm.backends.skytask import run_script
from autoswarm.config import Config
from autoswarm.doctor import marked
from autoswarm.sandbox import find_bwrap, sandbox_settings
from autoswarm.types import Job

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

HOSTILE = """
import json, os, signal, subprocess, sys, time
seen = {"env": sorted(os.environ), "ppid": os.getppid()}
for name, path in (("ppid_environ", f"/proc/{os.getppid()}/environ"),
                   ("init_environ", "/proc/1/environ"),
                   ("credentials", os.path.expanduser("~/.aws/credentials"))):
    try:
        seen[name] = open(path, "rb").read().decode(errors="replace")
    except OSError as e:
        seen[name] = f"error {e.errno}"
subprocess.Popen([sys.executable, "-c", "import os, time\\nos.setsid()\\nif os.fork() == 0:\\n    time.sleep(300)  # MARKER\\n"])
time.sleep(0.3)
try:
    os.kill(os.getppid(), signal.SIGKILL)
except OSError:
    pass
print("SEEN>" + json.dumps(seen) + "<SEEN")
print("---")
print("val_bpb: 0.990000")
"""

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws-node-secret",
    "SKYPILOT_USER_TOKEN": "sky-node-secret",
    "DATABASE_URL": "postgres://u:node-secret@h/db",
}


def run_on_node(tmp: Path, settings: dict, marker: str) -> tuple[int, str]:
    home = tmp / "home"
    workdir = home / "sky_workdir"
    workdir.mkdir(parents=True)
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text("aws_secret_access_key = file-secret\n")
    (workdir / "train.py").write_text(HOSTILE.replace("MARKER", marker))
    job = Job(
        experiment_id=1,
        workdir=workdir,
        argv=("{python}", "train.py"),
        env={},
        timeout_s=60,
        slot=0,
        log_path=tmp / "log",
        budget_s=1,
    )
    script = run_script(job, sys.executable, settings)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "AUTOSWARM_SEED": "1", **SECRETS}
    # Output to a file: without a sandbox, the escaped grandchild would hold a pipe open.
    with (tmp / "out").open("w") as out:
        done = subprocess.run(
            ["bash", "-c", script], cwd=workdir, env=env, stdout=out, stderr=out, timeout=120
        )
    return done.returncode, (tmp / "out").read_text()


def test_the_run_command_sandboxes_a_hostile_variant_on_its_node(tmp_path: Path) -> None:
    assert find_bwrap()[0] is not None, find_bwrap()[1]
    marker = f"sky-escapee-{uuid.uuid4().hex}"
    code, out = run_on_node(tmp_path, sandbox_settings(Config().sandbox), marker)
    assert code == 0, out
    assert out.splitlines()[0].startswith("autoswarm: sandbox: bubblewrap on "), out
    assert "autoswarm: exit code 0" in out
    seen = json.loads(out.split("SEEN>", 1)[1].split("<SEEN", 1)[0])
    for value in (*SECRETS.values(), "file-secret"):
        assert value not in out, value
    assert not set(SECRETS) & set(seen["env"]) and "AUTOSWARM_SEED" in seen["env"]
    assert seen["ppid"] == 1 and seen["credentials"].startswith("error")
    assert not marked(marker)


def test_without_bubblewrap_auto_keeps_the_allowlist_and_bwrap_refuses(tmp_path: Path) -> None:
    # A PATH on which bash finds no bwrap: the node cannot sandbox.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("env", "timeout", "dirname", "readlink", "hostname", "bash"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        (bin_dir / tool).symlink_to(found)
    settings = sandbox_settings(Config().sandbox)
    old = os.environ["PATH"]
    os.environ["PATH"] = str(bin_dir)
    try:
        marker = f"sky-plain-{uuid.uuid4().hex}"
        # Weaker, and it says so: the variant can kill its parent here (exit code 137).
        _, out = run_on_node(tmp_path / "auto", settings, marker)
        assert "autoswarm: sandbox: NONE on" in out.splitlines()[0], out
        seen = json.loads(out.split("SEEN>", 1)[1].split("<SEEN", 1)[0])
        assert not set(SECRETS) & set(seen["env"]), seen["env"]
        code, out = run_on_node(tmp_path / "bwrap", {**settings, "mode": "bwrap"}, marker)
        assert code == 126 and "mode = bwrap but bubblewrap cannot run" in out, out
    finally:
        os.environ["PATH"] = old
        for pid in marked(marker):  # only the grandchild this test started, by its id
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# The locked evaluation in the run command (issue 16)

FORGER = """
import json, os
found = []
for root in (os.environ.get("AUTOSWARM_CACHE", "/nonexistent"), os.path.expanduser("~")):
    for dirpath, dirs, files in os.walk(root):
        found += [f for f in files if f == "synthetic-sealed-split.json"]
print("FOUND>" + json.dumps(found) + "<FOUND")
with open(os.environ["AUTOSWARM_MODEL"], "w") as f:
    f.write("1.25")
open("prepare.py", "w").write("print('tampered')\\n")  # the evaluation runs its own copy
print("---")
print("val_bpb: 0.500000")
"""


def test_the_run_command_evaluates_from_a_locked_copy_with_the_sealed_data(
    tmp_path: Path,
) -> None:
    from autoswarm.backends.skytask import split_evaluation
    from autoswarm.evaluation import judge
    from autoswarm.metrics import parse_summary
    from autoswarm.testing.synthetic import EVALUATED_PREPARE_PY
    from autoswarm.types import EvalOutcome, Evaluation

    assert find_bwrap()[0] is not None, find_bwrap()[1]
    home, cache = tmp_path / "home", tmp_path / "cache"
    workdir = home / "sky_workdir"
    workdir.mkdir(parents=True)
    (workdir / "train.py").write_text(FORGER)
    (workdir / "prepare.py").write_text(EVALUATED_PREPARE_PY)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "AUTOSWARM_CACHE": str(cache)}
    subprocess.run([sys.executable, "prepare.py"], cwd=workdir, env=env, check=True)
    job = Job(
        experiment_id=3,
        workdir=workdir,
        argv=("{python}", "train.py"),
        env={},
        timeout_s=60,
        slot=0,
        log_path=tmp_path / "log",
        budget_s=1,
        evaluation=Evaluation(
            argv=("{python}", "prepare.py", "evaluate"),
            files=(("prepare.py", b""),),  # the script copies the file from its workdir
            sealed=("synthetic/sealed",),
        ),
    )
    script = run_script(job, sys.executable, sandbox_settings(Config().sandbox))
    done = subprocess.run(
        ["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    trained, ev_text, ev_code, _ = split_evaluation(out)
    assert json.loads(trained.split("FOUND>", 1)[1].split("<FOUND", 1)[0]) == []
    assert ev_code == 0 and ev_text is not None and "tampered" not in ev_text, out
    measured = parse_summary(ev_text)
    assert measured == {"val_bpb": 1.25, "test_bpb": 1.26, "eval_seconds": pytest.approx(0, abs=1)}
    j = judge(
        parse_summary(trained),
        EvalOutcome(exit_code=0, timed_out=False, seconds=1, metrics=measured),
        metric="val_bpb",
        test="test_bpb",
    )
    assert j.failure is not None and j.failure.value == "forged"
    assert not list((home / ".autoswarm").glob("eval-*")), "the evaluation's copy is removed"
