"""The ``agent`` proposer: a coding-agent CLI (Claude Code, Codex, ...) edits a scratch copy.

Each attempt, in a background thread:

1. copies the best editable files and the locked files into a fresh temp directory;
2. writes a prompt (program.md, the rules, the best so far, a compact history, what
   is running now) and runs the configured argv template there, e.g.
   ``["claude", "-p", "{prompt}"]`` or ``["codex", "exec", "{prompt}"]``, with a
   timeout, in its own process group, with a scrubbed environment and a capped log
   (:mod:`autoswarm.process`, as experiments are run);
3. diffs the editable files (:func:`autoswarm.patching.make_diff`): the changed
   files are the proposal. An edit to a locked file is handed on too, so the
   scheduler records the variant as rejected (with the reason) and never runs it.

The environment the agent gets is the orchestrator's minus every credential-like
variable (:func:`autoswarm.sandbox.scrubbed_env`), plus exactly the variables named
in ``[agent] pass_env``: an agent CLI needs its own API key (``ANTHROPIC_API_KEY``
for ``claude``, ``OPENAI_API_KEY`` for ``codex``), and nothing else secret leaks to it.
(The experiments themselves never get those keys: they run with the scheduler's
scrubbed environment.)

Attempts run concurrently, up to the free slots (or ``[agent] concurrency``). A
failed attempt (non-zero exit, timeout, no edit) is logged and counted; after
``max_failures`` failures in a row the proposer gives up (``exhausted``) and says why.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoswarm.config import Config
from autoswarm.errors import ConfigError, WorkspaceError
from autoswarm.patching import make_diff, read_plain
from autoswarm.process import Ending, ProcessRunner, ProcessSpec
from autoswarm.proposers.base import Context
from autoswarm.sandbox import Sandbox, view_of
from autoswarm.types import Direction, Experiment, Proposal, Status

if TYPE_CHECKING:
    from autoswarm.workspace import Workspace

log = logging.getLogger("autoswarm.agent")

DESCRIPTION_FILE = "AUTOSWARM_DESCRIPTION"
_PLACEHOLDER = re.compile(r"{(prompt|prompt_file|workdir)}")


# ---------------------------------------------------------------------------
# The prompt


def _line(e: Experiment, metric: str) -> str:
    v = e.value(metric)
    value = f"{v:.6f}" if v is not None else "-"
    text = f"#{e.id} {e.status.value:8} {metric}={value} {e.description}"
    if e.reason and (e.status.failed or e.status is Status.REJECTED):
        text += f" — {' '.join(e.reason.split())[:240]}"
    return text


def build_prompt(
    ctx: Context,
    *,
    program: str,
    editable: Sequence[str],
    locked: Sequence[str],
    history: int = 30,
    peers: int = 0,
) -> str:
    """The task for one agent attempt: program.md, the rules, the state of the search."""
    better = "lower" if ctx.direction is Direction.MINIMIZE else "higher"
    parts = [
        "You are a research agent in an autoswarm run: several agents edit copies of the "
        "same training code in parallel, and autoswarm trains every variant for a fixed "
        "budget, keeps it only if it beats the best by more than the measured noise, and "
        "discards it otherwise.",
        "## Task (program.md)\n" + (program.strip() or "(no program.md)"),
        "## Rules\n"
        f"- Edit only {', '.join(editable)} in the current directory. "
        + (
            f"Do not modify {', '.join(locked)}: a variant that touches a locked file is "
            "rejected without running.\n"
            if locked
            else "\n"
        )
        + f"- Make ONE focused change you expect to make {ctx.metric} {better}. Do not run "
        "the training yourself: autoswarm runs it.\n"
        f"- When done, write a one-line description of the change (what and why, under 100 "
        f"characters) into the file {DESCRIPTION_FILE} in the current directory.",
    ]
    state = [f"## State\nmetric: {ctx.metric} ({better} is better)"]
    if ctx.best_value is not None:
        state.append(f"best so far: {ctx.best_value:.6f} (commit {ctx.best_commit[:10]})")
    if ctx.noise_sigma is not None:
        state.append(
            f"seed-to-seed noise σ: {ctx.noise_sigma:.6f} (gains smaller than ~2σ are discarded)"
        )
    if peers:
        state.append(
            f"{peers} other agent(s) are working from the same best right now: try an idea "
            "that differs from the most obvious one"
        )
    parts.append("\n".join(state))
    done = list(ctx.history)[-history:] if history else []
    if done:
        parts.append(
            "## History (oldest first; do not repeat what failed)\n"
            + "\n".join(_line(e, ctx.metric) for e in done)
        )
    if ctx.running:
        parts.append(
            "## Running now (do not propose these again)\n"
            + "\n".join(f"#{e.id} {e.description}" for e in ctx.running)
        )
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------
# The proposer


@dataclass(frozen=True, kw_only=True)
class _Job:
    number: int
    ctx: Context
    locked_files: Mapping[str, str]
    peers: int


class AgentProposer:
    """Runs a coding-agent command per proposal, in background threads."""

    name = "agent"
    idle_poll_s = 0.5  # results arrive from threads: ask again soon

    def __init__(
        self,
        *,
        command: Sequence[str],
        editable: Sequence[str],
        locked: Sequence[str] = (),
        read_locked: Callable[[str], Mapping[str, str]] | None = None,
        program: str = "",
        timeout: float = 900.0,
        concurrency: int = 0,
        pass_env: Sequence[str] = (),
        max_failures: int = 3,
        history: int = 30,
        environ: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        if not command:
            raise ValueError("AgentProposer needs a command (argv template)")
        self.command = tuple(command)
        self.editable = tuple(editable)
        self.locked = tuple(locked)
        self.read_locked = read_locked or (lambda commit: {})
        self.program = program
        self.timeout = timeout
        self.concurrency = concurrency
        self.pass_env = tuple(pass_env)
        self.max_failures = max_failures
        self.history = history
        self.environ = dict(os.environ if environ is None else environ)
        self.log_dir = log_dir
        # Where bubblewrap works: the agent sees the machine read-only, not the workspace,
        # the run's state or the home directory; its scratch copy is writable, and its
        # HOME is a fresh directory in it (its own API key comes through pass_env).
        self.sandbox = sandbox
        self.failures: list[str] = []  # every failed attempt, for reports and tests
        self._consecutive = 0
        self._attempts = 0
        self._lock = threading.Lock()
        self._ready: deque[Proposal] = deque()
        self._threads: dict[int, threading.Thread] = {}
        self._runner = ProcessRunner()
        self._closing = False
        self._gave_up = ""

    # -- Proposer protocol ------------------------------------------------------

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return bool(self._gave_up) and not self._threads and not self._ready

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        if n <= 0 or self._closing:
            return []
        with self._lock:
            out = [self._ready.popleft() for _ in range(min(n, len(self._ready)))]
            busy = len(self._threads)
            gave_up = bool(self._gave_up)
        if gave_up:
            return out
        cap = self.concurrency or n
        start = max(0, min(n - len(out) - busy, cap - busy))
        if start:
            locked_files = dict(self.read_locked(ctx.best_commit)) if self.locked else {}
            for _ in range(start):
                self._start(ctx, locked_files, peers=busy + start - 1)
        return out

    def observe(self, experiment: Experiment) -> None:
        # Everything the agent learns comes through the prompt's history (Context).
        return None

    def close(self) -> None:
        self._closing = True
        self._runner.close()  # kills every running attempt's process group
        with self._lock:
            threads = list(self._threads.values())
        for t in threads:
            t.join(timeout=10.0)
        self._runner.close()  # the threads an attempt that started late brought back

    # -- attempts ---------------------------------------------------------------

    def _start(self, ctx: Context, locked_files: Mapping[str, str], *, peers: int) -> None:
        with self._lock:
            self._attempts += 1
            number = self._attempts
            job = _Job(number=number, ctx=ctx, locked_files=locked_files, peers=peers)
            t = threading.Thread(
                target=self._run, args=(job,), name=f"autoswarm-agent-{number}", daemon=True
            )
            self._threads[number] = t
        t.start()

    def _run(self, job: _Job) -> None:
        try:
            proposal, error = self._attempt(job)
        except Exception as e:  # a bug here must not kill the run: count it as a failure
            proposal, error = None, f"{type(e).__name__}: {e}"
        with self._lock:
            self._threads.pop(job.number, None)
            if self._closing:
                return
            if proposal is not None:
                self._consecutive = 0
                self._ready.append(proposal)
                return
            self._consecutive += 1
            self.failures.append(f"attempt {job.number}: {error}")
            gives_up = self._consecutive >= self.max_failures and not self._gave_up
            if gives_up:
                self._gave_up = (
                    f"{self._consecutive} agent attempts failed in a row (last: {error}); "
                    "check [agent] command, pass_env and timeout in autoswarm.toml"
                )
        log.warning("agent attempt %d failed: %s", job.number, error)
        if gives_up:
            log.warning("agent proposer gives up: %s", self._gave_up)

    def _attempt(self, job: _Job) -> tuple[Proposal | None, str]:
        ctx = job.ctx
        root = Path(tempfile.mkdtemp(prefix="autoswarm-agent-"))
        try:
            work = root / "work"
            work.mkdir()
            before = {p: ctx.best_files.get(p, "") for p in self.editable}
            for path, text in (*before.items(), *job.locked_files.items()):
                target = work / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            prompt = build_prompt(
                ctx,
                program=self.program,
                editable=self.editable,
                locked=self.locked,
                history=self.history,
                peers=job.peers,
            )
            prompt_file = root / "prompt.md"
            prompt_file.write_text(prompt, encoding="utf-8")
            values = {"prompt": prompt, "prompt_file": str(prompt_file), "workdir": str(work)}
            argv = [_PLACEHOLDER.sub(lambda m: values[m.group(1)], a) for a in self.command]
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                log_path = self.log_dir / f"agent-{job.number:04d}.log"
            else:
                log_path = root / "agent.log"
            env = dict(self.environ)
            if self.sandbox is not None:
                (root / "home").mkdir()
                env["HOME"] = str(root / "home")
            spec = ProcessSpec(
                argv=tuple(argv),
                cwd=work,
                env=env,  # reduced to the allowlist by the runner, but for
                pass_env=self.pass_env,  # the agent CLI's own key, named in [agent] pass_env
                log_path=log_path,
                timeout_s=self.timeout,
                sandbox=self.sandbox.with_writable(root) if self.sandbox is not None else None,
            )
            proc = self._runner.start(spec)
            if self._closing:  # close() ran while this attempt was starting
                proc.cancel(grace_s=0)
            res = proc.wait()
            assert res is not None
            if self._closing:
                return None, "stopped"
            if res.ending is Ending.NOT_STARTED:
                return None, (
                    f"{res.error}; install the agent CLI or fix [agent] command in autoswarm.toml"
                )
            if res.ending is Ending.TIMED_OUT:
                return None, f"timed out after {self.timeout:g}s (raise [agent] timeout)"
            output = log_path.read_text(encoding="utf-8", errors="replace")
            if res.exit_code != 0:
                tail = " ".join(output.strip().splitlines()[-3:])[-300:]
                return None, f"exit code {res.exit_code}: {tail or '(no output)'}"
            return self._proposal(job, work, before, output, res.duration_s, 0)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _proposal(
        self,
        job: _Job,
        work: Path,
        before: Mapping[str, str],
        output: str,
        seconds: float,
        code: int,
    ) -> tuple[Proposal | None, str]:
        after: dict[str, str] = {}
        for path in self.editable:
            target = work / path
            if not target.is_file() and not target.is_symlink():
                return None, f"the agent deleted {path}; variants may change files, not delete them"
            try:
                after[path] = read_plain(work, path)
            except WorkspaceError as e:
                return None, f"refused: {e}"
        diff = make_diff(before, after)
        locked_edits: dict[str, str] = {}
        for path, text in job.locked_files.items():
            target = work / path
            try:
                now = read_plain(work, path) if target.is_file() or target.is_symlink() else ""
            except WorkspaceError as e:
                return None, f"refused: {e}"
            if now != text:
                locked_edits[path] = now
        if not diff and not locked_edits:
            return None, f"the agent changed none of {', '.join(self.editable)}"
        changed = {p: after[p] for p in self.editable if after[p] != before[p]}
        description = _description(work, output, diff)
        return (
            Proposal(
                description=description,
                files={**changed, **locked_edits},  # locked edits: recorded as rejected
                parent=job.ctx.best_commit,
                proposer=self.name,
                meta={
                    "agent": {
                        "attempt": job.number,
                        "seconds": round(seconds, 3),
                        "exit_code": code,
                        "locked_edits": sorted(locked_edits),
                    }
                },
            ),
            "",
        )


def _description(work: Path, output: str, diff: str) -> str:
    """The agent's one-liner: its description file, else its last output line, else a diffstat."""
    desc_file = work / DESCRIPTION_FILE
    if desc_file.is_file():
        for line in desc_file.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return " ".join(line.split())[:200]
    for line in reversed(output.splitlines()):
        if line.strip():
            return " ".join(line.split())[:200]
    added = sum(1 for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    return f"agent edit (+{added} -{removed} lines)"


def agent_from_config(cfg: Config, *, workspace: Path) -> AgentProposer:
    """An :class:`AgentProposer` for ``[agent]`` of the workspace at ``workspace``."""
    from autoswarm.workspace import Workspace

    ws = Workspace(workspace, cfg)
    locked = cfg.workspace.locked
    program_md = ws.root / "program.md"
    a = cfg.agent
    return AgentProposer(
        command=a.command,
        editable=cfg.workspace.editable,
        locked=locked,
        read_locked=lambda commit: ws.read_files(commit, locked) if locked else {},
        program=program_md.read_text(encoding="utf-8") if program_md.is_file() else "",
        timeout=a.timeout,
        concurrency=a.concurrency,
        pass_env=a.pass_env,
        max_failures=a.max_failures,
        history=a.history,
        log_dir=ws.state_dir / "agents",
        sandbox=_agent_view(cfg, ws),
    )


def _agent_view(cfg: Config, ws: Workspace) -> Sandbox | None:
    try:
        return view_of(cfg.sandbox, workspace=ws.root, state_dir=ws.state_dir, network=True)
    except RuntimeError as e:
        raise ConfigError(
            f'[sandbox] mode = "bwrap" but {e}; install it, or set [sandbox] mode = "auto"'
        ) from None


__all__ = ["DESCRIPTION_FILE", "AgentProposer", "agent_from_config", "build_prompt"]
