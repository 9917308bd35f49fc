"""The ``llm`` proposer: a language model edits the editable files, one idea per request.

Talks to the model through the official SDKs: ``anthropic`` (Messages API) or
``openai`` (Chat Completions, which also covers OpenAI-compatible servers such as
vLLM, Ollama and llama.cpp through ``base_url``). Configured by ``[llm]``::

    [run]
    strategy = "llm"
    [llm]
    provider = "anthropic"            # or "openai"
    model = "claude-sonnet-4-5"
    api_key_env = "ANTHROPIC_API_KEY" # the variable's *name*; "" for keyless local servers

How it works:

* ``propose(ctx, n)`` returns the proposals that are ready and starts requests in
  background threads for the rest of the ``n`` free slots (at most ``concurrency``
  in flight); the scheduler asks again on its next turn, as for any asynchronous proposer.
* Each request sends the prompt of :mod:`autoswarm.proposers.prompt` (program.md,
  best files, compact history, what is running). The reply is validated (applies,
  touches only editable files, parses); on failure the error goes back to the model
  once, and a second failure is recorded and dropped.
* 429, 5xx and timeouts are retried by the SDK itself (``max_retries``, honouring
  ``retry-after``); what still fails counts as a failure. After ``max_failures``
  failures in a row (or one authentication / unknown-model error) the proposer gives
  up: ``last_error`` says why, it is logged, and ``exhausted`` lets the run go on.
* Every proposal's meta records provider, model, tokens, dollars, latency and whether
  the repair round-trip was needed.

The API key is read here, in the orchestrator, from the variable ``api_key_env``
names; experiments never see it (the scheduler's environment for them is scrubbed
by :mod:`autoswarm.sandbox`).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoswarm.config import Config, LLMConfig
from autoswarm.errors import LockedFileError, PatchError, ProposerError
from autoswarm.proposers.base import Context, fingerprint
from autoswarm.proposers.prompt import (
    SYSTEM_PROMPT,
    PromptInput,
    build_prompt,
    effects_text,
    parse_reply,
    repair_prompt,
)
from autoswarm.types import Experiment, Proposal

log = logging.getLogger("autoswarm.llm")

# ---------------------------------------------------------------------------
# Prices

# Dollars per million (input, output) tokens by model-name prefix: public list prices
# at the time of writing. Override with [llm] price_in_per_mtok / price_out_per_mtok;
# a model not listed (a local server) costs 0 unless overridden.
PRICES: tuple[tuple[str, float, float], ...] = (
    ("claude-opus", 5.0, 25.0),  # Opus 4.5 and later
    ("claude-opus-4-0", 15.0, 75.0),
    ("claude-opus-4-1", 15.0, 75.0),
    ("claude-opus-4-2025", 15.0, 75.0),
    ("claude-3-opus", 15.0, 75.0),
    ("claude-sonnet", 3.0, 15.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-3-5-sonnet", 3.0, 15.0),
    ("claude-haiku-4", 1.0, 5.0),
    ("claude-3-5-haiku", 0.8, 4.0),
    ("claude-3-haiku", 0.25, 1.25),
    ("gpt-4o-mini", 0.15, 0.6),
    ("gpt-4o", 2.5, 10.0),
    ("gpt-4.1-nano", 0.1, 0.4),
    ("gpt-4.1-mini", 0.4, 1.6),
    ("gpt-4.1", 2.0, 8.0),
    ("gpt-5-nano", 0.05, 0.4),
    ("gpt-5-mini", 0.25, 2.0),
    ("gpt-5", 1.25, 10.0),
    ("o4-mini", 1.1, 4.4),
    ("o3", 2.0, 8.0),
)


def price_of(model: str) -> tuple[float, float] | None:
    """(input, output) dollars per million tokens for ``model``, or None if unknown."""
    name = model.lower().rsplit("/", 1)[-1]  # "anthropic/claude-..." as routers write it
    best: tuple[str, float, float] | None = None
    for prefix, pin, pout in PRICES:
        if name.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, pin, pout)
    return None if best is None else (best[1], best[2])


# ---------------------------------------------------------------------------
# Talking to the model


@dataclass(frozen=True)
class Completion:
    """One model answer and what it cost in tokens."""

    text: str
    input_tokens: int
    output_tokens: int


class ChatClient:
    """A thin wrapper over one SDK client: messages in, text and token counts out."""

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        api_key: str,
        base_url: str,
        timeout: float,
        max_retries: int,
        max_tokens: int,
        temperature: float | None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._custom_url = bool(base_url)
        try:
            if provider == "anthropic":
                import anthropic

                self._client: Any = anthropic.Anthropic(
                    api_key=api_key,
                    base_url=base_url or "https://api.anthropic.com",
                    timeout=timeout,
                    max_retries=max_retries,
                )
            elif provider == "openai":
                import openai

                self._client = openai.OpenAI(
                    api_key=api_key,
                    base_url=base_url or "https://api.openai.com/v1",
                    timeout=timeout,
                    max_retries=max_retries,
                )
            else:
                raise ProposerError(
                    f"unknown [llm] provider {provider!r}: use 'anthropic' or 'openai'"
                )
        except ImportError as e:
            raise ProposerError(
                f"the llm proposer needs the {provider!r} package: pip install 'autoswarm[llm]'"
            ) from e

    def complete(self, messages: Sequence[Mapping[str, str]]) -> Completion:
        """Send a conversation (user/assistant turns) after the system prompt."""
        if self.provider == "anthropic":
            # This SDK version has no `temperature` argument; the API still reads the field
            # for models that support it, so it goes in the body only when configured.
            extra = {} if self.temperature is None else {"temperature": self.temperature}
            r = self._client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=SYSTEM_PROMPT,
                messages=[dict(m) for m in messages],
                extra_body=extra or None,
            )
            text = "".join(getattr(b, "text", "") for b in r.content if b.type == "text")
            usage = r.usage
            return Completion(text, int(usage.input_tokens or 0), int(usage.output_tokens or 0))
        # OpenAI's own API wants max_completion_tokens (reasoning models refuse max_tokens);
        # compatible servers (vLLM, Ollama, llama.cpp) all understand max_tokens.
        limit = "max_tokens" if self._custom_url else "max_completion_tokens"
        kwargs: dict[str, Any] = {limit: self.max_tokens}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        r = self._client.chat.completions.create(
            model=self.model,
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, *[dict(m) for m in messages]],
            **kwargs,
        )
        text = (r.choices[0].message.content or "") if r.choices else ""
        u = r.usage
        return Completion(
            text,
            int(getattr(u, "prompt_tokens", 0) or 0),
            int(getattr(u, "completion_tokens", 0) or 0),
        )

    def close(self) -> None:
        self._client.close()


# ---------------------------------------------------------------------------
# The proposer


@dataclass(frozen=True)
class _Outcome:
    """What one background request produced: a proposal, or why there is none."""

    proposal: Proposal | None
    error: str = ""
    fatal: bool = False  # retrying cannot help (bad key, unknown model)


@dataclass
class LLMStats:
    """Running totals, for reports and the log."""

    requests: int = 0
    proposals: int = 0
    repairs: int = 0
    failures: int = 0
    duplicates: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    dollars: float = 0.0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)


class LLMProposer:
    """Implements :class:`~autoswarm.proposers.base.Proposer` with a language model.

    Args:
        provider / model / base_url / max_tokens / temperature / timeout / max_retries /
            concurrency / max_failures / max_prompt_chars / price_*: see
            :class:`~autoswarm.config.LLMConfig`.
        editable / locked: the workspace's file lists.
        api_key_env: the variable holding the key ("" = none needed).
        program: the text of program.md ("" = none).
        environ: where the key is read (default ``os.environ``).
        wait_s: how long ``propose`` may block for a first result when nothing is ready
            (0 = never block: the scheduler polls again).
        name: the proposer name recorded with each proposal.

    Raises:
        ProposerError: the key variable is not set, or the SDK is not installed.
    """

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        editable: Sequence[str],
        locked: Sequence[str] = (),
        api_key_env: str = "ANTHROPIC_API_KEY",
        base_url: str = "",
        max_tokens: int = 8192,
        temperature: float | None = None,
        timeout: float = 180.0,
        max_retries: int = 3,
        concurrency: int = 4,
        max_failures: int = 5,
        max_prompt_chars: int = 120_000,
        price_in_per_mtok: float | None = None,
        price_out_per_mtok: float | None = None,
        program: str = "",
        environ: Mapping[str, str] | None = None,
        wait_s: float = 0.0,
        name: str = "llm",
    ) -> None:
        env = os.environ if environ is None else environ
        if api_key_env:
            api_key = env.get(api_key_env, "")
            if not api_key:
                raise ProposerError(
                    f"the llm proposer ({provider}) needs an API key: set the environment variable "
                    f"{api_key_env} (or name another variable with [llm] api_key_env; "
                    'api_key_env = "" for a local server that needs no key)'
                )
        else:
            api_key = "no-key"  # local OpenAI-compatible servers accept any bearer token
        self.name = name
        self.provider = provider
        self.model = model
        self.editable = tuple(editable)
        self.locked = tuple(locked)
        self.concurrency = max(1, concurrency)
        self.max_failures = max(1, max_failures)
        self.max_prompt_chars = max_prompt_chars
        self.program = program
        self.wait_s = wait_s
        table = price_of(model)
        self.price_in = price_in_per_mtok if price_in_per_mtok is not None else (table or (0, 0))[0]
        self.price_out = (
            price_out_per_mtok if price_out_per_mtok is not None else (table or (0, 0))[1]
        )
        self.client = ChatClient(
            provider=provider,
            model=model,
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        self.stats = LLMStats()
        self._stats_lock = threading.Lock()  # pool threads add tokens and counts
        self.last_error = ""
        self.consecutive_failures = 0
        self.gave_up = ""  # why the proposer stopped asking ("" while it goes on)
        self._inflight: set[cf.Future[_Outcome]] = set()
        self._ready: list[Proposal] = []
        self._emitted: set[str] = set()
        self._closed = False

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        *,
        workspace: Path | None = None,
        environ: Mapping[str, str] | None = None,
        wait_s: float = 0.0,
        name: str = "llm",
    ) -> LLMProposer:
        """A proposer from ``[llm]``; program.md is read from ``workspace`` if given."""
        llm: LLMConfig = cfg.llm
        program = ""
        if workspace is not None and (workspace / "program.md").is_file():
            program = (workspace / "program.md").read_text(encoding="utf-8", errors="replace")
        return cls(
            provider=llm.provider,
            model=llm.model,
            editable=cfg.workspace.editable,
            locked=cfg.workspace.locked,
            api_key_env=llm.key_env,
            base_url=llm.base_url,
            max_tokens=llm.max_tokens,
            temperature=llm.temperature,
            timeout=llm.timeout,
            max_retries=llm.max_retries,
            concurrency=llm.concurrency,
            max_failures=llm.max_failures,
            max_prompt_chars=llm.max_prompt_chars,
            price_in_per_mtok=llm.price_in_per_mtok,
            price_out_per_mtok=llm.price_out_per_mtok,
            program=program,
            environ=environ,
            wait_s=wait_s,
            name=name,
        )

    # -- the Proposer protocol ------------------------------------------------------

    @property
    def failures(self) -> int:
        """Requests that produced no proposal (errors and unusable replies), in total."""
        return self.stats.failures

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def exhausted(self) -> bool:
        self._collect()
        return bool(self.gave_up) and not self._ready and not self._inflight

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        if n <= 0 or self._closed:
            return []
        self._collect()
        out = self._take(ctx, n)
        if not self.gave_up:
            start = min(n - len(out) - len(self._inflight), self.concurrency - len(self._inflight))
            total = len(self._inflight) + max(0, start)
            while len(self._inflight) < total:
                prompt = self._prompt(ctx, variant=len(self._inflight), variants=total)
                fut = _in_thread(self._request, ctx.best_commit, dict(ctx.best_files), prompt)
                self._inflight.add(fut)
        if not out and self.wait_s > 0 and self._inflight:
            cf.wait(self._inflight, timeout=self.wait_s, return_when=cf.FIRST_COMPLETED)
            self._collect()
            out = self._take(ctx, n)
        return out

    def observe(self, experiment: Experiment) -> None:
        # The prompt's history comes from Context (the ledger); here we only count how
        # this proposer's own ideas fared, for the summary in the log.
        if experiment.proposer == self.name:
            self.stats.outcomes[experiment.status.value] += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.client.close()  # requests still in flight end with an error nobody collects
        s = self.stats
        log.info(
            "llm proposer %s/%s: %d requests, %d proposals, %d repairs, %d failures, "
            "%d+%d tokens, $%.4f",
            self.provider,
            self.model,
            s.requests,
            s.proposals,
            s.repairs,
            s.failures,
            s.input_tokens,
            s.output_tokens,
            s.dollars,
        )

    # -- internals --------------------------------------------------------------------

    def _prompt(self, ctx: Context, *, variant: int, variants: int) -> str:
        inp = PromptInput(
            program=self.program,
            files=ctx.best_files,
            editable=self.editable,
            locked=self.locked,
            metric=ctx.metric,
            direction=ctx.direction,
            best_value=ctx.best_value,
            noise_sigma=ctx.noise_sigma,
            history=ctx.history,
            running=ctx.running,
            pending=[p.description for p in self._ready],
            variant=variant,
            variants=variants,
            effects=_safe_effects(ctx),
        )
        return build_prompt(inp, max_chars=self.max_prompt_chars)

    def _take(self, ctx: Context, n: int) -> list[Proposal]:
        """Up to ``n`` ready proposals that are not duplicates of anything tried or running."""
        out: list[Proposal] = []
        while self._ready and len(out) < n:
            p = self._ready.pop(0)
            full = {path: p.files.get(path, ctx.best_files.get(path, "")) for path in self.editable}
            fp = fingerprint(full)
            if fp in ctx.seen or fp in self._emitted:
                self.stats.duplicates += 1
                log.info("llm proposal %r duplicates an earlier variant; dropped", p.description)
                continue
            self._emitted.add(fp)
            out.append(p)
        return out

    def _collect(self) -> None:
        """Move finished requests into the ready list and the failure counters."""
        done = [f for f in self._inflight if f.done()]
        for fut in done:
            self._inflight.discard(fut)
            if fut.cancelled():
                continue
            exc = fut.exception()
            outcome = (
                _Outcome(None, f"internal error: {type(exc).__name__}: {exc}")
                if exc is not None
                else fut.result()
            )
            if outcome.proposal is not None:
                self.consecutive_failures = 0
                self.stats.proposals += 1
                self._ready.append(outcome.proposal)
                continue
            self.stats.failures += 1
            self.consecutive_failures += 1
            self.last_error = outcome.error
            log.warning(
                "llm request failed (%d in a row): %s", self.consecutive_failures, outcome.error
            )
            if not self.gave_up and (
                outcome.fatal or self.consecutive_failures >= self.max_failures
            ):
                why = (
                    "a fatal error"
                    if outcome.fatal
                    else f"{self.consecutive_failures} failures in a row"
                )
                self.gave_up = (
                    f"the llm proposer ({self.provider}, model {self.model!r}) stopped after {why}; "
                    f"last error: {outcome.error}. Check [llm] model, base_url and the API key, "
                    "then resume with: autoswarm run --resume"
                )
                log.error("%s", self.gave_up)

    def _request(self, parent: str, files: dict[str, str], prompt: str) -> _Outcome:
        """One proposal: ask, validate, maybe repair once. Runs in a pool thread."""
        t0 = time.monotonic()
        messages: list[dict[str, str]] = [{"role": "user", "content": prompt}]
        tokens_in = tokens_out = 0
        repair_error = ""
        try:
            for attempt in (1, 2):
                with self._stats_lock:
                    self.stats.requests += 1
                c = self.client.complete(messages)
                tokens_in += c.input_tokens
                tokens_out += c.output_tokens
                self._account(c)
                try:
                    parsed = parse_reply(c.text, files, self.editable)
                except (PatchError, LockedFileError) as e:
                    if attempt == 2:
                        return _Outcome(
                            None,
                            f"the reply was unusable after one repair: {e} (first: {repair_error})",
                        )
                    repair_error = str(e)
                    with self._stats_lock:
                        self.stats.repairs += 1
                    messages += [
                        {"role": "assistant", "content": c.text or "(empty reply)"},
                        {"role": "user", "content": repair_prompt(str(e), self.editable)},
                    ]
                    continue
                meta = {
                    "provider": self.provider,
                    "model": self.model,
                    "input_tokens": tokens_in,
                    "output_tokens": tokens_out,
                    "dollars": round(self._dollars(tokens_in, tokens_out), 6),
                    "latency_s": round(time.monotonic() - t0, 3),
                    "repair": attempt == 2,
                }
                if repair_error:
                    meta["repair_error"] = repair_error[:300]
                return _Outcome(
                    Proposal(
                        description=parsed.description,
                        files=parsed.files,
                        parent=parent,
                        proposer=self.name,
                        meta=meta,
                    )
                )
        except Exception as e:  # the SDK's errors, after its own retries
            status = getattr(e, "status_code", None)
            return _Outcome(
                None,
                f"{self.provider} request failed: {type(e).__name__}: {_short(str(e))}",
                fatal=status in (401, 403, 404),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _dollars(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.price_in + tokens_out * self.price_out) / 1e6

    def _account(self, c: Completion) -> None:
        with self._stats_lock:
            self.stats.input_tokens += c.input_tokens
            self.stats.output_tokens += c.output_tokens
            self.stats.dollars += self._dollars(c.input_tokens, c.output_tokens)


def _in_thread(fn: Callable[..., _Outcome], *args: Any) -> cf.Future[_Outcome]:
    """Run ``fn`` in a daemon thread; its result or exception lands in the returned future.

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so one request
    stuck on a slow API would hold the orchestrator's exit for up to the HTTP timeout.
    """
    fut: cf.Future[_Outcome] = cf.Future()

    def run() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args))
        except BaseException as e:
            fut.set_exception(e)

    threading.Thread(target=run, name="llm-request", daemon=True).start()
    return fut


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _safe_effects(ctx: Context) -> str:
    # Effects are a hint: a fit that fails (too few runs) must never stop a proposal.
    try:
        return effects_text(ctx.history, ctx.metric, ctx.noise_sigma)
    except Exception as e:
        log.debug("no effects for the llm prompt: %s", e)
        return ""


__all__ = ["PRICES", "ChatClient", "Completion", "LLMProposer", "LLMStats", "price_of"]
