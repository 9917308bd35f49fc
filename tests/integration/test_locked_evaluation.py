"""The locked evaluation through the real loop (issue 16), on the synthetic workspace.

train.py saves its "model" (the value it would print) where ``AUTOSWARM_MODEL`` says; the
locked ``prepare.py evaluate`` measures it in a second process against sealed data in
the data cache, and prints val_bpb and a held-out test_bpb. Each test runs real
processes through :class:`~autoswarm.scheduler.Scheduler` and the local backend, in the
sandbox (bubblewrap), and checks what the ledger, ``status``, ``results`` and the
proposer saw. The cpu template's own evaluation is tested in test_template_train.py
and test_research_loop.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoswarm.backends.factory import experiment_sandbox
from autoswarm.backends.local import LocalBackend
from autoswarm.config import load_config
from autoswarm.ledger import Ledger
from autoswarm.sandbox import find_bwrap
from autoswarm.scheduler import Scheduler
from autoswarm.testing.proposers import ScriptedProposer, replace_in
from autoswarm.testing.synthetic import TRAIN_PY, make_workspace
from autoswarm.types import Kind, Status
from autoswarm.workspace import Workspace

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only"),
]

AUTOSWARM = [sys.executable, "-c", "from autoswarm.cli import main; main()"]
PRINT = 'print(f"val_bpb:          {v:.6f}")'

# Looks for the sealed split from inside the training sandbox, then trains honestly.
PEEK = """
import json
found = []
for root in (os.environ.get("AUTOSWARM_CACHE", "/nonexistent"), "/tmp", os.path.expanduser("~")):
    for dirpath, dirs, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files if f == "synthetic-sealed-split.json"]
print("PEEK>" + json.dumps(found) + "<PEEK", flush=True)
"""


def run_loop(tmp: Path, monkeypatch: pytest.MonkeyPatch, steps: list) -> tuple:
    cache = tmp / "cache"
    monkeypatch.setenv("AUTOSWARM_CACHE", str(cache))
    ws_dir = make_workspace(
        tmp / "ws", budget=0.2, train_py=TRAIN_PY, baseline_repeats=2, evaluated=True
    )
    subprocess.run([sys.executable, "prepare.py"], cwd=ws_dir, check=True)  # the sealed split
    cfg = load_config(ws_dir)
    ws = Workspace(ws_dir, cfg)
    ledger = Ledger(ws.ledger_path)
    proposer = ScriptedProposer(steps)
    backend = LocalBackend(
        2,
        gpus=[],
        sandbox=experiment_sandbox(cfg, workspace_root=ws.root, state_dir=ws.state_dir),
    )
    sched = Scheduler(workspace=ws, ledger=ledger, backend=backend, proposer=proposer, config=cfg)
    out = sched.run(tag="t")
    return ws_dir, ledger, out.run, proposer


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AUTOSWARM, *args, "--workspace", str(ws)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )


@pytest.mark.skipif(find_bwrap()[0] is None, reason="needs bubblewrap (apt-get install bubblewrap)")
def test_forgers_are_caught_and_the_sealed_split_stays_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws_dir, ledger, run, proposer = run_loop(
        tmp_path,
        monkeypatch,
        [
            # The 3-line forger: prints a made-up number, saves no model.
            (
                "three-line forger",
                lambda f: {"train.py": 'print("---")\nprint("val_bpb: 0.500000")\n'},
            ),
            # Prints a scaled value; its saved model is the honest one.
            (
                "scaled loss",
                replace_in("train.py", PRINT, PRINT.replace("{v:.6f}", "{v * 0.9:.6f}")),
            ),
            # Searches the filesystem for the sealed split, then trains honestly.
            ("peek", replace_in("train.py", "time.sleep(budget)", PEEK + "time.sleep(budget)")),
            # A real improvement, honestly printed.
            ("LR 0.01 -> 0.04", replace_in("train.py", "LR = 0.01", "LR = 0.04")),
        ],
    )
    rows = {e.description: e for e in ledger.experiments(run.id)}
    forger, scaled, peek, better = (
        rows[d] for d in ("three-line forger", "scaled loss", "peek", "LR 0.01 -> 0.04")
    )
    # The 3-line forger printed a number but saved no model: nothing confirms it, forged.
    assert forger.status is Status.FORGED and "could not confirm" in forger.reason, forger.reason
    assert forger.value("val_bpb") is None
    # The scaled printer disagrees with the evaluation of its own model: forged, both numbers.
    assert scaled.status is Status.FORGED, (scaled.status, scaled.reason)
    assert "forged" in scaled.reason and scaled.value("val_bpb") is None
    printed, measured = scaled.metrics["printed_val_bpb"], scaled.metrics["evaluated_val_bpb"]
    assert printed == pytest.approx(0.9 * measured, abs=2e-6)
    # The peek found no sealed file from inside the training sandbox.
    log = Path(peek.log_path).read_text()
    assert json.loads(log.split("PEEK>", 1)[1].split("<PEEK", 1)[0]) == []
    assert peek.status is not Status.FORGED
    # The honest improvement is kept on the evaluated value, which equals what it printed.
    assert better.status is Status.KEEP, better.reason
    assert better.value("val_bpb") == pytest.approx(better.metrics["printed_val_bpb"], abs=1e-6)
    # results.tsv: the forged row is a crash whose description says why.
    tsv = (ws_dir / "results.tsv").read_text().splitlines()
    line = next(ln for ln in tsv if "scaled loss" in ln)
    assert "\tcrash\t" in line and "forged" in line
    assert "test_bpb" not in "\n".join(tsv)

    # The test values reach the ledger, and no proposer saw them.
    held = {h.id: h.sealed for h in ledger.sealed_metrics(run.id)}
    assert held[better.id]["test_bpb"] == pytest.approx(better.value("val_bpb") + 0.01, abs=2e-6)
    base = [e for e in ledger.experiments(run.id) if e.kind is Kind.BASELINE]
    assert all("test_bpb" in held[e.id] for e in base if e.status is Status.KEEP)
    assert proposer.observed
    for e in proposer.observed:
        assert "test_bpb" not in json.dumps(dict(e.metrics)) and not hasattr(e, "sealed")

    # status --json, results --format json and the results table show them (run ended).
    st = json.loads(cli(ws_dir, "status", "--json").stdout)
    assert st["test"]["metric"] == "test_bpb"
    same = [
        h.sealed["test_bpb"] for h in ledger.sealed_metrics(run.id) if h.commit == better.commit
    ]
    assert len(same) >= 2  # the keep and its confirmations: the best's test value is their mean
    assert st["test"]["best"]["test"] == pytest.approx(sum(same) / len(same), abs=2e-6)
    assert st["test"]["baseline"]["gap"] == pytest.approx(0.01, abs=2e-6)
    assert [k["id"] for k in st["test"]["keeps"]] == [better.id]
    assert st["metric_source"].startswith("locked evaluation")
    res = json.loads(cli(ws_dir, "results", "--format", "json").stdout)
    by_id = {r["id"]: r for r in res}
    assert by_id[better.id]["test"]["test_bpb"] == pytest.approx(held[better.id]["test_bpb"])
    table = cli(ws_dir, "results").stdout
    assert "test_bpb (held out)" in table
    assert cli(ws_dir, "status").returncode == 0
    ledger.close()


def test_without_a_sandbox_the_evaluation_still_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[sandbox] mode = "off": weaker (train.py could read the sealed data), but the
    metric is still the evaluation's, and a forged print is still caught."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTOSWARM_CACHE", str(cache))
    ws_dir = make_workspace(tmp_path / "ws", budget=0.2, baseline_repeats=2, evaluated=True)
    toml = ws_dir / "autoswarm.toml"
    toml.write_text(toml.read_text() + '\n[sandbox]\nmode = "off"\n')
    subprocess.run(["git", "commit", "-qam", "sandbox off"], cwd=ws_dir, check=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@l",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@l"})  # fmt: skip
    subprocess.run([sys.executable, "prepare.py"], cwd=ws_dir, check=True)
    cfg = load_config(ws_dir)
    ws = Workspace(ws_dir, cfg)
    ledger = Ledger(ws.ledger_path)
    proposer = ScriptedProposer(
        [("scaled loss", replace_in("train.py", PRINT, PRINT.replace("{v:.6f}", "{v - 0.05:.6f}")))]
    )
    sched = Scheduler(
        workspace=ws, ledger=ledger, backend=LocalBackend(2, gpus=[]), proposer=proposer, config=cfg
    )
    out = sched.run(tag="t")
    rows = {e.description: e for e in ledger.experiments(out.run.id)}
    assert rows["scaled loss"].status is Status.FORGED
    assert not list(ws.state_dir.glob("runs/*.eval")), "evaluation directories are removed"
    ledger.close()


# ---------------------------------------------------------------------------
# No proposer sees a test value: the LLM's prompt, an agent's copy, an external agent


def recorded_test_values(ledger: Ledger, run_id: int) -> list[str]:
    """The test values of a run as they would be printed (six decimals)."""
    out = [f"{h.sealed['test_bpb']:.6f}" for h in ledger.sealed_metrics(run_id)]
    assert out, "the run recorded test values"
    return out


def evaluated_workspace(tmp: Path, monkeypatch: pytest.MonkeyPatch, extra: str) -> Path:
    monkeypatch.setenv("AUTOSWARM_CACHE", str(tmp / "cache"))
    ws_dir = make_workspace(tmp / "ws", budget=0.2, baseline_repeats=2, evaluated=True)
    toml = ws_dir / "autoswarm.toml"
    # The fake agent reports through a file beside the workspace: no sandbox for it.
    toml.write_text(toml.read_text() + extra + '\n[sandbox]\nmode = "off"\n')
    subprocess.run([sys.executable, "prepare.py"], cwd=ws_dir, check=True)
    return ws_dir


def run_proposer(ws_dir: Path, strategy: str) -> tuple[Ledger, int]:
    """A short run of ``strategy`` on two local slots (8 experiments)."""
    from autoswarm.config import with_overrides
    from autoswarm.proposers.registry import make_proposer

    cfg = with_overrides(
        load_config(ws_dir), strategy=strategy, workers=2, max_experiments=8, best_runs=1
    )
    ws = Workspace(ws_dir, cfg)
    ledger = Ledger(ws.ledger_path)
    sched = Scheduler(
        workspace=ws,
        ledger=ledger,
        backend=LocalBackend(2, gpus=[]),
        proposer=make_proposer(cfg, state_dir=ws.state_dir),
        config=cfg,
    )
    return ledger, sched.run(tag=strategy).run.id


def test_no_llm_prompt_and_no_agent_copy_holds_a_test_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoswarm.testing.llm_servers import ScriptedLLMServer, answer

    # An LLM proposer against a loopback fake server that records every prompt.
    ws_dir = evaluated_workspace(tmp_path / "llm", monkeypatch, "")

    base = (ws_dir / "train.py").read_text()  # with the lines that save its model

    def reply(req: object, n: int) -> object:
        text = base.replace("LR = 0.01", f"LR = {0.01 * 1.5 ** (n + 1):.6f}")
        return answer(f"DESCRIPTION: LR variant {n}\n```python train.py\n{text}```\n")

    with ScriptedLLMServer("anthropic", fallback=reply, api_key="sk-test") as srv:
        toml = ws_dir / "autoswarm.toml"
        toml.write_text(
            toml.read_text() + f'\n[llm]\nmodel = "m"\nbase_url = "{srv.base_url}"\n'
            'api_key_env = "FAKE_LLM_KEY"\ntimeout = 10\nconcurrency = 2\n'
        )
        monkeypatch.setenv("FAKE_LLM_KEY", "sk-test")
        ledger, run_id = run_proposer(ws_dir, "llm")
    values = recorded_test_values(ledger, run_id)
    assert len(srv.requests) >= 2
    prompts = "\n".join(r.prompt for r in srv.requests[1:])  # later ones carry a history
    assert "val_bpb" in prompts
    assert "test_bpb" not in prompts and not [v for v in values if v in prompts]
    ledger.close()

    # A coding agent (tests/fixtures/fake_agent.py) reports its prompt and every file of
    # its copy of the workspace.
    fake = Path(__file__).resolve().parents[1] / "fixtures" / "fake_agent.py"
    report = tmp_path / "report.jsonl"
    command = [sys.executable, str(fake), "lr", "{prompt_file}", "--report", str(report)]
    command += ["--claims", str(tmp_path / "claims"), "--values", "0.04,0.02,0.03,0.05"]
    ws_dir = evaluated_workspace(
        tmp_path / "agent",
        monkeypatch,
        f'\n[agent]\ncommand = {json.dumps(command)}\ntimeout = "20s"\n',
    )
    ledger, run_id = run_proposer(ws_dir, "agent")
    values = recorded_test_values(ledger, run_id)
    seen = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(seen) >= 2 and any("val_bpb" in r["prompt"] for r in seen)
    for r in seen:
        # Its copy holds the locked prepare.py, whose evaluator prints "test_bpb:": the
        # code may be read, no value may.
        text = r["prompt"] + json.dumps(r["files"])
        assert "test_bpb" not in r["prompt"] and not [v for v in values if v in text]
    ledger.close()


def test_an_external_agent_sees_no_test_value_during_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    ws_dir = evaluated_workspace(tmp_path, monkeypatch, "")
    run = subprocess.Popen(
        [
            *AUTOSWARM,
            *("run", "--workspace", str(ws_dir), "--strategy", "external", "--workers", "2"),
            *("--max-experiments", "50", "--tag", "ext", "--skip-prepare", "--no-live"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        variant = tmp_path / "v1"
        variant.mkdir()
        train = (ws_dir / "train.py").read_text()
        (variant / "train.py").write_text(train.replace("LR = 0.01", "LR = 0.04"))
        sub = cli(ws_dir, "submit", str(variant), "--desc", "LR 0.01 -> 0.04", "--json")
        exp_id = json.loads(sub.stdout)["id"]
        waited = cli(ws_dir, "wait", str(exp_id), "--timeout", "90", "--json")
        assert waited.returncode == 0, waited.stderr
        assert json.loads(waited.stdout)[0]["status"] in ("keep", "discard")
        during = cli(ws_dir, "results", "--format", "json").stdout
        status = cli(ws_dir, "status", "--json").stdout
        shown = cli(ws_dir, "results", "--format", "json", "--show-test").stdout
        assert run.poll() is None, "the run was still active while the agent asked"
        for text in (waited.stdout, during, status):
            assert "test_bpb" not in text
        assert "hidden while the run is active" in json.loads(status)["test"]["hidden"]
        assert "test_bpb" in shown  # the human's flag
        run.send_signal(signal.SIGINT)  # the human ends the run (Ctrl-C)
        run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=30)
    # The agent's results.tsv (autoresearch's columns) never has them.
    assert "test_bpb" not in (ws_dir / "results.tsv").read_text()
    after = json.loads(cli(ws_dir, "results", "--format", "json").stdout)
    assert any("test_bpb" in r.get("test", {}) for r in after)  # the run has ended
