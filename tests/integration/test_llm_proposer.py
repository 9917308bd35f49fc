"""The llm proposer against loopback servers, through the official anthropic and openai SDKs.

Every test starts a real HTTP server on 127.0.0.1 (autoswarm.testing.llm_servers)
speaking the provider's wire format; the SDKs are used unmodified with ``base_url``
pointing at it, so their retries, retry-after handling and timeouts are the real ones.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoswarm.backends.local import LocalBackend
from autoswarm.config import load_config, with_overrides
from autoswarm.errors import ProposerError
from autoswarm.ledger import Ledger
from autoswarm.proposers.base import Context, Proposer
from autoswarm.proposers.llm import LLMProposer
from autoswarm.scheduler import Scheduler
from autoswarm.testing.contract import ProposerContract, contract_context
from autoswarm.testing.llm_servers import (
    Reply,
    Request,
    ScriptedLLMServer,
    answer,
    hang,
    rate_limited,
    server_error,
)
from autoswarm.testing.synthetic import TRAIN_PY, make_workspace
from autoswarm.types import Experiment, Kind, Status
from autoswarm.workspace import Workspace

pytest.importorskip("anthropic")
pytest.importorskip("openai")

KEY_ENV = "AUTOSWARM_TEST_LLM_KEY"
KEY = "sk-test-loopback-4242"
FILES = {"train.py": TRAIN_PY}
MODELS = {"anthropic": "claude-sonnet-4-6", "openai": "gpt-4o"}
PROVIDERS = pytest.mark.parametrize("provider", ["anthropic", "openai"])


def diff_reply(old: str = "LR = 0.01", new: str = "LR = 0.02", desc: str = "raise LR") -> str:
    return (
        f"DESCRIPTION: {desc}\n```diff\n--- a/train.py\n+++ b/train.py\n"
        f"@@ -3,3 +3,3 @@\n \n-{old}\n+{new}\n WIDTH = 64\n```\n"
    )


def lr_reply(req: Request, number: int) -> Reply:
    """A distinct, valid whole-file variant per request (for fallbacks)."""
    text = TRAIN_PY.replace("LR = 0.01", f"LR = {0.01 + number / 1000:.4f}")
    return answer(f"DESCRIPTION: LR to {0.01 + number / 1000:.4f}\n```python train.py\n{text}```\n")


def make(srv: ScriptedLLMServer, **kw: Any) -> LLMProposer:
    args: dict[str, Any] = dict(
        provider=srv.provider,
        model=MODELS[srv.provider],
        editable=("train.py",),
        locked=("prepare.py",),
        api_key_env=KEY_ENV,
        environ={KEY_ENV: KEY},
        base_url=srv.base_url,
        timeout=5.0,
        max_retries=2,
        wait_s=15.0,
    )
    args.update(kw)
    return LLMProposer(**args)


def settle(p: LLMProposer, limit: float = 15.0) -> None:
    """Wait until no request is in flight."""
    deadline = time.monotonic() + limit
    while p.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
        p.exhausted  # noqa: B018 - collects finished requests


@pytest.fixture
def ctx() -> Context:
    return contract_context(FILES)


# ---------------------------------------------------------------------------
# Replies


@PROVIDERS
def test_good_diff_is_a_valid_proposal(provider: str, ctx: Context) -> None:
    with ScriptedLLMServer(provider, [answer(diff_reply())], api_key=KEY) as srv:
        p = make(srv, program="Try learning rates first.")
        try:
            running = Experiment(
                id=9,
                run_id=1,
                kind=Kind.CANDIDATE,
                status=Status.RUNNING,
                parent="p",
                commit="c",
                description="WIDTH 64 -> 128",
                proposer="swarm",
            )
            crashed = Experiment(
                id=8,
                run_id=1,
                kind=Kind.CANDIDATE,
                status=Status.CRASH,
                parent="p",
                commit="c",
                description="LR 1.0",
                proposer="llm",
                reason="exit code 1: loss is nan: diverged",
            )
            c = Context(**{**ctx.__dict__, "running": (running,), "history": (crashed,)})
            [prop] = p.propose(c, 1)
        finally:
            p.close()
    assert prop.description == "raise LR" and prop.parent == ctx.best_commit
    assert "LR = 0.02\n" in prop.files["train.py"] and prop.proposer == "llm"
    m = prop.meta
    assert m["provider"] == provider and m["model"] == MODELS[provider]
    assert m["input_tokens"] > 100 and m["output_tokens"] > 0 and m["dollars"] > 0
    assert m["repair"] is False and m["latency_s"] >= 0
    [req] = srv.requests
    assert req.body["model"] == MODELS[provider]
    for text in ("Try learning rates first.", "LR = 0.01", "WIDTH 64 -> 128", "loss is nan"):
        assert text in req.prompt
    assert "DESCRIPTION:" in req.prompt  # the system prompt teaches the format
    assert p.stats.proposals == 1 and p.failures == 0


@PROVIDERS
def test_whole_file_reply(provider: str, ctx: Context) -> None:
    new = TRAIN_PY.replace("DEPTH = 4", "DEPTH = 6")
    reply = f"Here is my change.\nDESCRIPTION: deeper model\n```python train.py\n{new}```\n"
    with ScriptedLLMServer(provider, [answer(reply)]) as srv:
        p = make(srv)
        try:
            [prop] = p.propose(ctx, 1)
        finally:
            p.close()
    assert prop.files == {"train.py": new} and prop.description == "deeper model"


@PROVIDERS
def test_malformed_diff_is_repaired(provider: str, ctx: Context) -> None:
    bad = diff_reply(old="LR = 0.05")  # wrong context: does not apply
    with ScriptedLLMServer(provider, [answer(bad), answer(diff_reply())]) as srv:
        p = make(srv)
        try:
            [prop] = p.propose(ctx, 1)
        finally:
            p.close()
    assert prop.meta["repair"] is True and "does not apply" in prop.meta["repair_error"]
    first, second = srv.requests
    msgs = second.body["messages"]
    roles = [m["role"] for m in msgs if m["role"] != "system"]
    assert roles == ["user", "assistant", "user"]
    assert "LR = 0.05" in str(msgs[-2]["content"])  # its own bad reply is sent back
    assert "does not apply" in str(msgs[-1]["content"])
    assert prop.meta["input_tokens"] > first.prompt.count("\n")  # both calls counted
    assert p.stats.repairs == 1


def test_malformed_twice_records_a_failure(ctx: Context) -> None:
    bad = answer("I would raise the learning rate.")  # no edit at all
    with ScriptedLLMServer("anthropic", [bad, bad]) as srv:
        p = make(srv)
        try:
            assert p.propose(ctx, 1) == []
            settle(p)
            assert p.failures == 1 and "after one repair" in p.last_error
            assert "no edit" in p.last_error
            assert not p.exhausted and len(srv.requests) == 2
        finally:
            p.close()


@PROVIDERS
def test_edit_to_locked_file_is_rejected(provider: str, ctx: Context) -> None:
    locked = answer(diff_reply().replace("train.py", "prepare.py"))
    with ScriptedLLMServer(provider, [locked, locked]) as srv:
        p = make(srv)
        try:
            assert p.propose(ctx, 1) == []
            settle(p)
        finally:
            p.close()
    assert p.failures == 1 and "prepare.py" in p.last_error and "not editable" in p.last_error
    assert "prepare.py" in str(srv.requests[1].body["messages"][-1]["content"])


# ---------------------------------------------------------------------------
# Transport: retries, timeouts, giving up


@PROVIDERS
def test_429_with_retry_after_then_success(provider: str, ctx: Context) -> None:
    with ScriptedLLMServer(provider, [rate_limited(0.6), answer(diff_reply())]) as srv:
        p = make(srv)
        try:
            [prop] = p.propose(ctx, 1)
        finally:
            p.close()
    first, second = srv.requests
    assert second.at - first.at >= 0.55  # the SDK waited as told (its own back-off is 0.5 s max)
    assert prop.meta["repair"] is False and p.failures == 0


@PROVIDERS
def test_500_then_success(provider: str, ctx: Context) -> None:
    with ScriptedLLMServer(provider, [server_error(500), answer(diff_reply())]) as srv:
        p = make(srv)
        try:
            assert len(p.propose(ctx, 1)) == 1
        finally:
            p.close()
    assert len(srv.requests) == 2 and p.failures == 0


def test_retries_are_bounded_by_max_retries(ctx: Context) -> None:
    script = [server_error(503)] * 3
    with ScriptedLLMServer("openai", script) as srv:
        p = make(srv, max_retries=1)
        try:
            assert p.propose(ctx, 1) == []
            settle(p)
        finally:
            p.close()
    assert len(srv.requests) == 2  # one try + one retry
    assert p.failures == 1 and "503" in p.last_error


@PROVIDERS
def test_hanging_server_times_out_then_retry_succeeds(provider: str, ctx: Context) -> None:
    with ScriptedLLMServer(provider, [hang(30), answer(diff_reply())]) as srv:
        p = make(srv, timeout=0.5, max_retries=1)
        try:
            t0 = time.monotonic()
            [prop] = p.propose(ctx, 1)
            assert time.monotonic() - t0 < 10
        finally:
            p.close()
    assert len(srv.requests) == 2 and "LR = 0.02" in prop.files["train.py"]


def test_hanging_server_gives_up_and_exhausts(ctx: Context) -> None:
    with ScriptedLLMServer("anthropic", fallback=lambda r, n: hang(30)) as srv:
        p = make(srv, timeout=0.4, max_retries=0, max_failures=2, wait_s=5.0)
        try:
            assert p.propose(ctx, 1) == []
            settle(p)
            assert not p.exhausted and p.failures == 1
            assert p.propose(ctx, 1) == []
            settle(p)
            assert p.exhausted and p.failures == 2
            assert "Timeout" in p.last_error and "2 failures in a row" in p.gave_up
            assert p.propose(ctx, 3) == []  # asks no more
            assert len(srv.requests) == 2
        finally:
            p.close()


def test_success_resets_the_failure_streak(ctx: Context) -> None:
    script = [server_error(500), answer(diff_reply()), server_error(500)]
    with ScriptedLLMServer("openai", script) as srv:
        p = make(srv, max_retries=0, max_failures=2)
        try:
            p.propose(ctx, 1)
            settle(p)
            assert p.consecutive_failures == 1
            [prop] = p.propose(ctx, 1)
            assert p.consecutive_failures == 0 and prop.description == "raise LR"
            p.propose(ctx, 1)
            settle(p)
            assert p.failures == 2 and not p.exhausted
        finally:
            p.close()


def test_wrong_key_is_fatal_at_once(ctx: Context) -> None:
    with ScriptedLLMServer("anthropic", fallback=lr_reply, api_key="the-right-key") as srv:
        p = make(srv, max_failures=5)
        try:
            assert p.propose(ctx, 1) == []
            settle(p)
            assert p.exhausted and "AuthenticationError" in p.last_error
            assert "fatal" in p.gave_up and "API key" in p.gave_up
        finally:
            p.close()


def test_missing_key_names_the_variable() -> None:
    with pytest.raises(ProposerError, match=f"{KEY_ENV}.*api_key_env"):
        LLMProposer(
            provider="anthropic",
            model="m",
            editable=("train.py",),
            api_key_env=KEY_ENV,
            environ={},
        )


def test_keyless_local_server(ctx: Context) -> None:
    with ScriptedLLMServer("openai", [answer(diff_reply())]) as srv:
        p = make(srv, api_key_env="", environ={}, model="qwen2.5-coder:7b")
        try:
            [prop] = p.propose(ctx, 1)
        finally:
            p.close()
    assert prop.meta["dollars"] == 0  # unknown model: no price
    assert srv.requests[0].body["max_tokens"] == 8192  # compatible servers get max_tokens


def test_price_override(ctx: Context) -> None:
    reply = answer(diff_reply(), input_tokens=1_000_000, output_tokens=500_000)
    with ScriptedLLMServer("openai", [reply]) as srv:
        p = make(srv, price_in_per_mtok=2.0, price_out_per_mtok=4.0)
        try:
            [prop] = p.propose(ctx, 1)
        finally:
            p.close()
    assert prop.meta["dollars"] == pytest.approx(4.0)
    assert p.stats.dollars == pytest.approx(4.0)


# ---------------------------------------------------------------------------
# Concurrency


def test_requests_run_concurrently_up_to_the_free_slots(ctx: Context) -> None:
    def slow(req: Request, n: int) -> Reply:
        r = lr_reply(req, n)
        return Reply(text=r.text, delay=0.8)

    with ScriptedLLMServer("anthropic", fallback=slow) as srv:
        p = make(srv, concurrency=3, wait_s=0.0)
        try:
            t0 = time.monotonic()
            assert p.propose(ctx, 5) == []  # asynchronous: nothing ready yet
            assert p.in_flight == 3  # capped by concurrency
            assert p.propose(ctx, 3) == []  # in-flight requests already cover the slots
            assert p.in_flight == 3
            settle(p)
            assert time.monotonic() - t0 < 2.0  # three 0.8 s requests overlapped
            got = p.propose(ctx, 2)
            assert len(got) == 2
            rest = p.propose(ctx, 1)
            assert len(rest) == 1
            assert len({g.files["train.py"] for g in [*got, *rest]}) == 3
            assert p.in_flight == 0  # the ready one covered the slot
        finally:
            p.close()
    prompts = [r.prompt for r in srv.requests[:3]]
    assert all("one of 3 parallel proposers" in t for t in prompts)
    assert {re.search(r"number (\d)", t).group(1) for t in prompts} == {"1", "2", "3"}  # type: ignore[union-attr]


def test_duplicates_of_seen_variants_are_dropped(ctx: Context) -> None:
    from autoswarm.proposers.base import fingerprint

    seen_files = {"train.py": TRAIN_PY.replace("LR = 0.01", "LR = 0.02")}
    c = Context(**{**ctx.__dict__, "seen": frozenset({fingerprint(seen_files)})})
    with ScriptedLLMServer("openai", [answer(diff_reply())]) as srv:
        p = make(srv)
        try:
            assert p.propose(c, 1) == []
            assert p.stats.duplicates == 1 and p.failures == 0
        finally:
            p.close()


# ---------------------------------------------------------------------------
# The Proposer contract


class TestLLMProposerContract(ProposerContract):
    @pytest.fixture(autouse=True)
    def _server(self) -> Iterator[None]:
        self.srv = ScriptedLLMServer("openai", fallback=lr_reply)
        yield
        self.srv.close()

    def make_proposer(self) -> Proposer:
        return make(self.srv, concurrency=4, wait_s=10.0)

    def files(self) -> dict[str, str]:
        return dict(FILES)

    def test_contract_is_not_vacuous(self) -> None:
        p = self.make_proposer()
        try:
            assert len(p.propose(contract_context(self.files()), 1)) == 1
        finally:
            p.close()


# ---------------------------------------------------------------------------
# End to end: the scheduler, real processes, and the key kept away from experiments


def test_scheduler_runs_llm_proposals_without_leaking_the_key(tmp_path: Path) -> None:
    ws_dir = make_workspace(tmp_path / "ws", budget=0.2, timeout=20)

    def leaky(req: Request, n: int) -> Reply:
        # Each variant also dumps its whole environment into the log, to prove the key is absent.
        # Every one is worse than the baseline's LR 0.01, so each is discarded on its first run
        # and none takes confirmation rows from --max-experiments: 2 baselines + 4 candidates.
        text = TRAIN_PY.replace("LR = 0.01", f"LR = {0.01 * 0.8**n:.6f}").replace(
            "time.sleep(budget)", "time.sleep(budget)\nprint(sorted(os.environ.items()))"
        )
        return answer(f"DESCRIPTION: LR variant {n}\n```python train.py\n{text}```\n")

    with ScriptedLLMServer("anthropic", fallback=leaky, api_key=KEY) as srv:
        toml = (ws_dir / "autoswarm.toml").read_text()
        (ws_dir / "autoswarm.toml").write_text(
            toml.replace('strategy = "auto"', 'strategy = "llm"')
            + f'\n[llm]\nmodel = "claude-haiku-4-5"\nbase_url = "{srv.base_url}"\n'
            f'api_key_env = "{KEY_ENV}"\ntimeout = 10\nconcurrency = 2\n'
        )
        cfg = with_overrides(
            load_config(ws_dir), baseline_repeats=2, workers=2, max_experiments=6, best_runs=1
        )
        environ = {**os.environ, KEY_ENV: KEY, "ANTHROPIC_API_KEY": KEY}
        ws = Workspace(ws_dir, cfg)
        ledger = Ledger(ws.ledger_path)
        proposer = LLMProposer.from_config(cfg, workspace=ws_dir, environ=environ)
        backend = LocalBackend(2, gpus=[], log_max_bytes=cfg.run.log_max_bytes)
        sched = Scheduler(
            workspace=ws,
            ledger=ledger,
            backend=backend,
            proposer=proposer,
            config=cfg,
            environ=environ,
        )
        jobs_env: list[dict[str, str]] = []
        submit = backend.submit
        backend.submit = lambda job: (jobs_env.append(dict(job.env)), submit(job))[1]  # type: ignore[method-assign]
        out = sched.run(tag="llm")

    assert out.reason == "max experiments"
    exps = ledger.experiments(out.run.id)
    cands = [e for e in exps if e.kind is Kind.CANDIDATE]
    assert len(cands) == 4 and all(e.proposer == "llm" for e in cands)
    assert all(e.status is Status.DISCARD for e in cands), [e.reason for e in cands]
    assert not [e for e in exps if e.kind is Kind.CONFIRM]
    assert all(e.meta["provider"] == "anthropic" and e.meta["input_tokens"] > 0 for e in cands)
    assert "Synthetic workspace" in srv.requests[0].prompt  # program.md reached the model
    assert srv.requests[-1].body["model"] == "claude-haiku-4-5"

    assert jobs_env and all(KEY not in env.values() for env in jobs_env)
    assert all(KEY_ENV not in env and "ANTHROPIC_API_KEY" not in env for env in jobs_env)
    logs = [Path(e.log_path).read_text() for e in cands]
    assert all("AUTOSWARM_SEED" in text for text in logs)  # the dump is there...
    assert all(KEY not in text for text in logs)  # ...without the key
    for path in ws.state_dir.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".tsv", ".json", ".txt"):
            assert KEY not in path.read_text(errors="replace"), path


# ---------------------------------------------------------------------------
# hybrid: the model and a knob search share the slots


def running_exp(i: int, via: str) -> Experiment:
    return Experiment(
        id=i,
        run_id=1,
        kind=Kind.CANDIDATE,
        status=Status.RUNNING,
        parent="p",
        commit="c",
        description=f"running {i}",
        proposer="hybrid",
        meta={"via": via},
    )


def test_hybrid_shares_slots_and_fills_what_the_model_leaves(ctx: Context) -> None:
    from autoswarm.proposers.hybrid import HybridProposer
    from autoswarm.proposers.knobs import SwarmProposer

    with ScriptedLLMServer("openai", fallback=lr_reply) as srv:
        h = HybridProposer(make(srv, wait_s=0.0), SwarmProposer(seed=1), ratio=0.5)
        try:
            assert h.code_share(ctx, 4) == 2
            first = h.propose(ctx, 4)  # the model is still thinking: knobs fill all 4
            assert len(first) == 4 and {p.meta["via"] for p in first} == {"swarm"}
            assert all(p.proposer == "hybrid" for p in first)
            assert isinstance(h.code, LLMProposer) and h.code.in_flight == 2
            settle(h.code)
            running = tuple(running_exp(i, "swarm") for i in range(1, 5))
            c = Context(**{**ctx.__dict__, "running": running})
            assert h.code_share(c, 2) == 2  # 3 of 6 slots are the model's; it has none
            second = h.propose(c, 2)
            assert [p.meta["via"] for p in second] == ["llm", "llm"]
            assert all(p.meta["provider"] == "openai" for p in second)
            busy = tuple(running_exp(i, "llm") for i in range(1, 4))
            assert h.code_share(Context(**{**ctx.__dict__, "running": busy}), 1) == 0
        finally:
            h.close()


def test_hybrid_knob_search_recentres_on_a_kept_code_change(ctx: Context) -> None:
    from autoswarm.proposers.hybrid import HybridProposer
    from autoswarm.proposers.knobs import SwarmProposer

    code_change = "def schedule(step):  # kept code change\n    return 1.0\n"
    new_best = {
        "train.py": TRAIN_PY.replace(
            "USE_BIAS = False", "USE_BIAS = False\nDROPOUT = 0.1\n" + code_change
        )
    }
    with ScriptedLLMServer("openai", fallback=lambda r, n: hang(30)) as srv:
        h = HybridProposer(
            make(srv, wait_s=0.0, timeout=0.3, max_retries=0, max_failures=1),
            # Only the knob the code change introduced may move: proof the search sees it.
            SwarmProposer(seed=2, exclude=("LR", "WIDTH", "DEPTH", "WARMUP_RATIO", "USE_BIAS")),
            ratio=0.5,
        )
        try:
            c = Context(**{**ctx.__dict__, "best_commit": "f" * 40, "best_files": new_best})
            props = h.propose(c, 3)
            assert len(props) == 3 and all(p.parent == "f" * 40 for p in props)
            assert all(code_change in p.files["train.py"] for p in props)
            assert all("DROPOUT = 0.1\n" not in p.files["train.py"] for p in props)
            settle(h.code)
            assert h.code.exhausted and not h.exhausted  # the model gave up; knobs go on
            assert h.code_share(c, 2) == 0 and len(h.propose(c, 2)) == 2
        finally:
            h.close()


def test_hybrid_observe_gives_each_half_its_own_experiments(ctx: Context) -> None:
    from autoswarm.proposers.hybrid import HybridProposer
    from autoswarm.testing.proposers import ScriptedProposer

    knobs = ScriptedProposer([])
    with ScriptedLLMServer("openai", fallback=lr_reply) as srv:
        h = HybridProposer(make(srv), knobs, ratio=0.5)
        try:
            done = [
                Experiment(**{**running_exp(1, "scripted").__dict__, "status": Status.KEEP}),
                Experiment(**{**running_exp(2, "llm").__dict__, "status": Status.DISCARD}),
            ]
            for e in done:
                h.observe(e)
        finally:
            h.close()
    assert [e.proposer for e in knobs.observed] == ["scripted", "hybrid"]
    assert isinstance(h.code, LLMProposer) and h.code.stats.outcomes["discard"] == 1
    assert knobs.closed


class TestHybridProposerContract(ProposerContract):
    @pytest.fixture(autouse=True)
    def _server(self) -> Iterator[None]:
        self.srv = ScriptedLLMServer("anthropic", fallback=lr_reply)
        yield
        self.srv.close()

    def make_proposer(self) -> Proposer:
        from autoswarm.proposers.hybrid import HybridProposer
        from autoswarm.proposers.knobs import SwarmProposer

        return HybridProposer(make(self.srv, wait_s=10.0), SwarmProposer(seed=3), ratio=0.5)

    def files(self) -> dict[str, str]:
        return dict(FILES)


def test_registry_builds_hybrid_from_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoswarm.proposers.hybrid import HybridProposer
    from autoswarm.proposers.knobs import KnobProposer
    from autoswarm.proposers.registry import make_proposer

    ws_dir = make_workspace(tmp_path / "ws")
    toml = (
        (ws_dir / "autoswarm.toml").read_text().replace('strategy = "auto"', 'strategy = "hybrid"')
    )
    (ws_dir / "autoswarm.toml").write_text(
        toml
        + f'\n[llm]\nmodel = "m"\napi_key_env = "{KEY_ENV}"\nhybrid_ratio = 0.25\nhybrid_knobs = "greedy"\n'
    )
    cfg = load_config(ws_dir)
    with pytest.raises(ProposerError, match=KEY_ENV):
        make_proposer(cfg, state_dir=ws_dir / ".autoswarm")
    monkeypatch.setenv(KEY_ENV, KEY)
    p = make_proposer(cfg, state_dir=ws_dir / ".autoswarm")
    try:
        assert isinstance(p, HybridProposer) and p.ratio == 0.25
        assert isinstance(p.knobs, KnobProposer) and isinstance(p.code, LLMProposer)
        assert "Synthetic workspace" in p.code.program
    finally:
        p.close()


def test_a_hanging_request_does_not_hold_the_orchestrators_exit(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = """
from autoswarm.proposers.llm import LLMProposer
from autoswarm.testing.contract import contract_context
from autoswarm.testing.llm_servers import ScriptedLLMServer, hang
srv = ScriptedLLMServer("openai", fallback=lambda r, n: hang(60))
p = LLMProposer(provider="openai", model="m", editable=("train.py",), api_key_env="",
                base_url=srv.base_url, timeout=60, max_retries=0)
assert p.propose(contract_context({"train.py": "X = 1\\n"}), 2) == []
assert p.in_flight == 2
p.close()
print("closed", flush=True)
"""
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=os.getcwd()
    )
    assert out.returncode == 0, out.stderr
    assert "closed" in out.stdout and time.monotonic() - t0 < 15
