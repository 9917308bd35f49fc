"""The ``agent`` proposer end to end: a fake coding-agent CLI (tests/fixtures/fake_agent.py).

Real processes throughout: the agent command runs in a scratch copy of the files,
its diff becomes a candidate, the scheduler runs it with the local backend on a
synthetic workspace (train.py sleeps for the budget and prints a known metric).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from autoswarm.backends.local import LocalBackend
from autoswarm.config import load_config, with_overrides
from autoswarm.errors import ConfigError
from autoswarm.ledger import Ledger
from autoswarm.proposers.agent import AgentProposer, build_prompt
from autoswarm.proposers.base import Proposer
from autoswarm.proposers.registry import make_proposer
from autoswarm.scheduler import Scheduler
from autoswarm.testing.contract import ProposerContract, contract_context
from autoswarm.testing.synthetic import TRAIN_PY, make_workspace
from autoswarm.types import Kind, Status
from autoswarm.workspace import Workspace

FAKE_AGENT = str(Path(__file__).resolve().parents[1] / "fixtures" / "fake_agent.py")


def agent_workspace(
    root: Path,
    mode: str,
    *,
    extra: str = "",
    budget: float = 0.3,
    values: str = "",
    sandbox: str | None = "off",
) -> Path:
    ws = make_workspace(root / "ws", budget=budget)
    claims, report = root / "claims", root / "report.jsonl"
    command = [sys.executable, FAKE_AGENT, mode, "{prompt_file}"]
    command += ["--claims", str(claims), "--report", str(report)]
    command += ["--values", values] if values else []
    with (ws / "autoswarm.toml").open("a") as f:
        f.write(
            "\n[agent]\n"
            f"command = {json.dumps(command)}\n"
            'timeout = "20s"\n'
            'pass_env = ["AGENT_API_KEY"]\n' + extra
        )
        if sandbox is not None:
            # The fake agents share their claims and report through files beside the
            # workspace, which a sandboxed agent cannot reach (test_agent_sandbox.py).
            f.write(f'\n[sandbox]\nmode = "{sandbox}"\n')
    return ws


def run_agent(ws_dir: Path, **run: object) -> tuple[Ledger, list]:
    cfg = with_overrides(
        load_config(ws_dir), strategy="agent", timeout=30.0, confirm_runs=0, best_runs=1, **run
    )
    ws = Workspace(ws_dir, cfg)
    ledger = Ledger(ws.ledger_path)
    proposer = make_proposer(cfg, state_dir=ws.state_dir)
    assert isinstance(proposer, AgentProposer)
    backend = LocalBackend(cfg.run.workers, gpus=[], kill_grace_s=0.5)
    sched = Scheduler(workspace=ws, ledger=ledger, backend=backend, proposer=proposer, config=cfg)
    out = sched.run(tag="agent")
    assert out.reason == "max experiments"
    return ledger, ledger.experiments(out.run.id)


def reports(root: Path) -> list[dict]:
    path = root / "report.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------------
# End to end through the scheduler


def test_agent_edits_become_experiments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_API_KEY", "sk-agent-own-key")
    monkeypatch.setenv("UNRELATED_API_KEY", "sk-must-not-leak")
    # One value far better than the baseline's LR 0.01, three worse ones: exactly one keep,
    # whatever order the concurrent agents claim them in. No confirmations (confirm_runs=0):
    # it is kept on its single run, which takes three baseline repeats (σ̂ on two degrees of
    # freedom; on one, nothing clears false_keep_rate), and re-measured once (best_runs=1:
    # its bar rests on one fresh run). 3 baselines + 4 candidates + 1 re-measure = 8.
    ws_dir = agent_workspace(tmp_path, "lr", values="0.04,0.005,0.006,0.007")
    ledger, exps = run_agent(ws_dir, workers=2, baseline_repeats=3, max_experiments=8)
    cands = [e for e in exps if e.kind is Kind.CANDIDATE]
    assert len(cands) == 4
    assert sum(e.kind is Kind.BASELINE for e in exps) == 3
    for e in cands:
        assert e.proposer == "agent"
        assert e.status in (Status.KEEP, Status.DISCARD), (e.status, e.reason)
        assert re.fullmatch(r"LR [0-9.]+ -> [0-9.]+", e.description), e.description
        assert "-LR = " in e.diff and "+LR = " in e.diff
        assert e.meta["agent"]["exit_code"] == 0 and e.meta["agent"]["locked_edits"] == []
    # Concurrent agents claimed different values: four distinct variants.
    assert len({e.commit for e in cands}) == 4
    # LR 0.04 is far better than the baseline's 0.01: kept (and re-measured); the others are
    # worse and discarded; the branch holds the last keep.
    best = [e for e in cands if e.description.endswith("-> 0.04")]
    assert best and best[0].status is Status.KEEP, best[0].reason if best else cands
    assert [e.status for e in cands].count(Status.KEEP) == 1
    (rerun,) = [e for e in exps if e.kind is Kind.CONFIRM]
    assert rerun.commit == best[0].commit and rerun.is_remeasure is True
    assert rerun.status is Status.KEEP, (rerun.status, rerun.reason)
    last = max((e for e in cands if e.status is Status.KEEP), key=lambda e: e.kept_at)
    ws = Workspace(ws_dir, load_config(ws_dir))
    assert ws.tree_id("refs/heads/autoswarm/agent") == ws.tree_id(last.commit)
    # The agent saw its own key, but no other credential; it ran in a scratch copy.
    seen = reports(tmp_path)
    assert len(seen) >= 4
    for rec in seen:
        assert "AGENT_API_KEY" in rec["env"] and "UNRELATED_API_KEY" not in rec["env"]
        assert not rec["cwd"].startswith(str(ws_dir))
    # Later prompts carry the history of earlier verdicts.
    assert any("## History" in rec["prompt"] and "baseline" in rec["prompt"] for rec in seen)
    assert (ws_dir / ".autoswarm" / "agents").is_dir()
    ledger.close()


def test_locked_edits_rejected_and_near_duplicates_skipped(tmp_path: Path) -> None:
    ws_dir = agent_workspace(tmp_path / "a", "locked")
    ledger, exps = run_agent(ws_dir, workers=2, baseline_repeats=2, max_experiments=4)
    cands = [e for e in exps if e.kind is Kind.CANDIDATE]
    assert len(cands) == 2
    for e in cands:
        assert e.status is Status.REJECTED and e.started_at is None  # never ran
        assert "locked file(s) prepare.py" in e.reason
        assert e.meta["agent"]["locked_edits"] == ["prepare.py"]
        assert "the agent rewrote the metric" in e.diff
    ledger.close()

    ws_dir = agent_workspace(tmp_path / "b", "same")
    ledger, exps = run_agent(ws_dir, workers=2, baseline_repeats=2, max_experiments=5)
    cands = sorted((e for e in exps if e.kind is Kind.CANDIDATE), key=lambda e: e.id)
    assert len(cands) == 3
    first, dups = cands[0], cands[1:]
    assert first.status in (Status.KEEP, Status.DISCARD)
    for d in dups:  # same code, another comment: not run again
        assert d.status is Status.REJECTED and d.reason == f"duplicate of #{first.id}"
        assert d.duplicate_of == first.id and d.started_at is None
    ledger.close()


# ---------------------------------------------------------------------------
# Failures of the agent itself (no scheduler needed)


def _poll(p: AgentProposer, ctx, n: int, limit: float = 20.0) -> list:
    deadline = time.monotonic() + limit
    got: list = []
    while time.monotonic() < deadline:
        got += p.propose(ctx, n)
        if got or p.exhausted:
            return got
        time.sleep(0.05)
    raise AssertionError("the agent proposer neither proposed nor gave up")


@pytest.mark.parametrize(
    ("mode", "timeout", "expect"),
    [
        ("fail", 20.0, "exit code 3: Error: the model is overloaded"),
        ("hang", 1.0, "timed out after 1s"),
        ("noop", 20.0, "changed none of train.py"),
    ],
)
def test_failed_attempts_are_counted_then_it_gives_up(
    tmp_path: Path, mode: str, timeout: float, expect: str
) -> None:
    p = AgentProposer(
        command=[sys.executable, FAKE_AGENT, mode, "{prompt_file}"],
        editable=("train.py",),
        timeout=timeout,
        max_failures=2,
        concurrency=2,
    )
    try:
        started = time.monotonic()
        assert _poll(p, contract_context({"train.py": TRAIN_PY}), 2) == []
        assert p.exhausted
        # Two in a row make it give up (a third may have started before the second ended).
        assert len(p.failures) >= 2 and all(expect in f for f in p.failures), p.failures
        assert time.monotonic() - started < timeout + 10
        assert p.propose(contract_context({"train.py": TRAIN_PY}), 2) == []
    finally:
        p.close()


def test_missing_command_says_what_to_fix() -> None:
    p = AgentProposer(
        command=["autoswarm-no-such-agent-cli", "{prompt}"], editable=("train.py",), max_failures=1
    )
    try:
        _poll(p, contract_context({"train.py": TRAIN_PY}), 1)
        assert p.exhausted and "install the agent CLI" in p.failures[0]
    finally:
        p.close()


def test_close_kills_a_running_agent(tmp_path: Path) -> None:
    p = AgentProposer(
        command=[sys.executable, FAKE_AGENT, "hang", "{prompt_file}"],
        editable=("train.py",),
        timeout=600,
    )
    p.propose(contract_context({"train.py": TRAIN_PY}), 1)
    time.sleep(0.3)
    started = time.monotonic()
    p.close()
    assert time.monotonic() - started < 5
    assert p.failures == []  # being stopped is not a failure


def test_prompt_has_program_rules_history_and_running() -> None:
    ctx = contract_context({"train.py": TRAIN_PY})
    text = build_prompt(
        ctx, program="Make it faster.", editable=("train.py",), locked=("prepare.py",), peers=2
    )
    assert "Make it faster." in text and "Do not modify prepare.py" in text
    assert "AUTOSWARM_DESCRIPTION" in text and "best so far: 1.000000" in text
    assert "2 other agent(s)" in text


def test_config_requires_a_command_and_known_placeholders(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    with pytest.raises(ConfigError, match=r"\[agent\] command is required"):
        with_overrides(load_config(ws), strategy="agent")
    with (ws / "autoswarm.toml").open("a") as f:
        f.write('\n[agent]\ncommand = ["claude", "-p", "{promt}"]\n')
    with pytest.raises(ConfigError, match=r"unknown placeholder \{promt\}"):
        load_config(ws)


class TestAgentProposerContract(ProposerContract):
    def make_proposer(self) -> Proposer:
        p = AgentProposer(
            command=[sys.executable, FAKE_AGENT, "lr", "{prompt_file}"],
            editable=("train.py",),
            timeout=20,
        )
        assert isinstance(p, Proposer)
        return p

    def files(self) -> dict[str, str]:
        return {"train.py": TRAIN_PY}

    def test_async_proposals_have_the_contract_shape(self) -> None:
        p = self.make_proposer()
        try:
            ctx = contract_context(self.files())
            got = _poll(p, ctx, 1)
            assert len(got) == 1
            prop = got[0]
            assert prop.parent == ctx.best_commit and prop.proposer == p.name
            assert set(prop.files) == {"train.py"} and prop.files["train.py"] != TRAIN_PY
            assert "\n" not in prop.description
        finally:
            p.close()


def test_hybrid_with_an_agent_shares_the_slots_with_knob_search(tmp_path: Path) -> None:
    ws_dir = agent_workspace(
        tmp_path,
        "lr",
        extra='\n[llm]\nhybrid_code = "agent"\nhybrid_ratio = 0.5\nhybrid_knobs = "greedy"\n',
    )
    cfg = with_overrides(
        load_config(ws_dir),
        strategy="hybrid",
        timeout=30.0,
        confirm_runs=0,
        best_runs=1,
        workers=2,
        baseline_repeats=2,
        max_experiments=8,
    )
    ws = Workspace(ws_dir, cfg)
    ledger = Ledger(ws.ledger_path)
    proposer = make_proposer(cfg, state_dir=ws.state_dir)
    backend = LocalBackend(cfg.run.workers, gpus=[], kill_grace_s=0.5)
    out = Scheduler(
        workspace=ws, ledger=ledger, backend=backend, proposer=proposer, config=cfg
    ).run(tag="hybrid")
    cands = [e for e in ledger.experiments(out.run.id) if e.kind is Kind.CANDIDATE]
    assert out.reason == "max experiments" and len(cands) == 6
    via = {e.meta.get("via") for e in cands}
    assert via == {"agent", "knobs"}, via  # both halves got slots (greedy is named knobs)
    assert all(e.proposer == "hybrid" for e in cands)


def test_hybrid_with_an_agent_needs_its_command(tmp_path: Path) -> None:
    ws_dir = make_workspace(tmp_path / "ws")
    with (ws_dir / "autoswarm.toml").open("a") as f:
        f.write('\n[llm]\nhybrid_code = "agent"\n')
    with pytest.raises(ConfigError, match=r"\[agent\] command is required"):
        with_overrides(load_config(ws_dir), strategy="hybrid")
