"""Typed, frozen configuration loaded from a workspace's ``autoswarm.toml``.

The file has these tables::

    [workspace]  editable / locked files, the commands that prepare data and run one experiment
    [metric]     name of the summary key to optimise and its direction
    [run]        budget, timeout, workers, strategy, noise rule, limits
    [knobs]      knob-search settings (exclusions, per-knob overrides)
    [pool]       where experiments run: a backend and its hardware tiers ([[pool.tiers]])
    [llm]        the language model of the llm / hybrid strategies (provider, model, key variable)
    [agent]      the coding-agent command of the ``agent`` strategy (argv template, timeout)

Command-line flags override single fields through :func:`with_overrides`. Nothing
here reads environment variables: what a run does is what the file and the flags say.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoswarm.errors import ConfigError
from autoswarm.proposers.registry import HYBRID_KNOB_STRATEGIES, KNOB_STRATEGIES, STRATEGIES
from autoswarm.types import Direction

CONFIG_NAME = "autoswarm.toml"


# ---------------------------------------------------------------------------
# Sections


@dataclass(frozen=True, kw_only=True)
class WorkspaceConfig:
    editable: tuple[str, ...] = ("train.py",)
    locked: tuple[str, ...] = ("prepare.py",)
    # "{python}" is replaced by the interpreter that runs autoswarm (the venv's).
    command: tuple[str, ...] = ("{python}", "train.py")
    prepare: tuple[str, ...] = ("{python}", "prepare.py")


@dataclass(frozen=True, kw_only=True)
class MetricConfig:
    name: str = "val_bpb"
    direction: Direction = Direction.MINIMIZE


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    budget: float = 60.0  # training seconds per experiment (AUTOSWARM_BUDGET)
    timeout: float = 0.0  # hard kill after this many seconds; 0 = 2 × budget + grace
    grace: float = 60.0  # start-up + evaluation allowance used by the default timeout
    workers: int = 0  # parallel slots; 0 = one per GPU, else cores // threads_per_worker
    threads_per_worker: int = 1  # CPU threads each run may use when there is no GPU
    strategy: str = "auto"
    tag: str = ""  # branch autoswarm/<tag>; empty = a date-based tag
    # Runs of the unmodified train.py before anything is judged: σ̂ rests on their
    # degrees of freedom until the run has measured more (5 runs: 4 df; a look at level
    # 0.0005 needs t > 31.6 on 2 df, 8.6 on 4).
    baseline_repeats: int = 5
    seed: int = 42
    # The keep rule (autoswarm.judge): a variant with no real effect is kept with at most
    # this probability (0.001: 1000 such candidates keep at most 1 in expectation) ...
    false_keep_rate: float = 0.001
    keep_sigmas: float = 2.0  # ... and only gains of at least keep_sigmas standard errors
    min_delta: float = 0.0  # ... larger than this absolute floor
    confirm_sigmas: float = 1.0  # a first run this many standard errors better is re-run ...
    confirm_runs: int = 2  # ... with this many fresh seeds before the verdict (never kept on one)
    # A kept variant is re-measured (fresh seeds) until its bar rests on this many fresh
    # runs; 0 = automatic (as many as the baseline's: baseline_repeats).
    best_runs: int = 0
    # At the end of the run the best is re-run this many times and reported as the
    # validated mean ± se (a keep they contradict is revoked); -1 = automatic: 3 with
    # several slots, 0 on one slot (where each costs a whole experiment).
    final_runs: int = -1
    max_experiments: int = 0  # 0 = unlimited; counts the whole run, baseline included
    time_limit: float = 0.0  # seconds of run time; 0 = unlimited
    log_max_bytes: int = 2_000_000
    max_cost: float = 0.0  # dollars (tier prices × measured durations); 0 = unlimited
    max_gpu_hours: float = 0.0  # accelerator-hours over all tiers; 0 = unlimited

    @property
    def effective_timeout(self) -> float:
        return self.timeout if self.timeout > 0 else 2.0 * self.budget + self.grace


@dataclass(frozen=True, kw_only=True)
class KnobConfig:
    exclude: tuple[str, ...] = ("TIME_BUDGET",)
    # Per-knob overrides, e.g. {"MATRIX_LR": {"low": 0.005, "high": 0.2, "log": true}}.
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


LLM_PROVIDERS = ("anthropic", "openai")


@dataclass(frozen=True, kw_only=True)
class LLMConfig:
    """The language model behind the ``llm`` and ``hybrid`` strategies ([llm]).

    Attributes:
        provider: ``anthropic`` (Messages API) or ``openai`` (Chat Completions; also any
            OpenAI-compatible server such as vLLM, Ollama or llama.cpp via ``base_url``).
        model: model name, e.g. ``claude-sonnet-4-5`` or ``gpt-4.1``.
        base_url: API endpoint; empty = the provider's default.
        api_key_env: name of the environment variable holding the key (never the key
            itself); None = ANTHROPIC_API_KEY / OPENAI_API_KEY; "" = no key (local servers).
        timeout: seconds per HTTP request; max_retries: SDK retries on 429/5xx/timeouts.
        concurrency: requests in flight at once (never more than the free slots).
        max_failures: consecutive failed requests after which the proposer gives up.
        price_in_per_mtok / price_out_per_mtok: dollars per million tokens; None = the
            built-in table (unknown models cost 0).
        hybrid_ratio: share of free slots the ``hybrid`` strategy gives the model.
        hybrid_knobs: the knob strategy ``hybrid`` pairs it with.
    """

    provider: str = "anthropic"
    model: str = ""
    base_url: str = ""
    api_key_env: str | None = None
    max_tokens: int = 8192
    temperature: float | None = None  # None = the model's default
    timeout: float = 180.0
    max_retries: int = 3
    concurrency: int = 4
    max_failures: int = 5
    max_prompt_chars: int = 120_000
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    hybrid_ratio: float = 0.5
    hybrid_knobs: str = "swarm"
    hybrid_code: str = "llm"  # the code half of ``hybrid``: "llm" ([llm]) or "agent" ([agent])

    @property
    def key_env(self) -> str:
        """The variable to read the key from ("" = none needed)."""
        if self.api_key_env is not None:
            return self.api_key_env
        return "OPENAI_API_KEY" if self.provider == "openai" else "ANTHROPIC_API_KEY"


# Placeholders an [agent] command may use (each replaced inside its argument).
AGENT_PLACEHOLDERS = ("prompt", "prompt_file", "workdir")


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """The coding-agent CLI behind the ``agent`` strategy ([agent]).

    Attributes:
        command: argv template run in a scratch copy of the editable and locked files,
            e.g. ``["claude", "-p", "{prompt}"]`` or ``["codex", "exec", "{prompt}"]``;
            ``{prompt}`` = the prompt text, ``{prompt_file}`` = a file holding it,
            ``{workdir}`` = the scratch directory (also the working directory).
        timeout: seconds before the agent's process group is killed.
        concurrency: agents at work at once; 0 = as many as there are free slots.
        pass_env: environment variables handed to the agent even though they look like
            credentials (the agent CLI needs its own API key, e.g. ANTHROPIC_API_KEY);
            every other credential-like variable is removed.
        max_failures: consecutive failed attempts after which the proposer gives up.
        history: finished experiments summarised in the prompt (the most recent).
    """

    command: tuple[str, ...] = ()
    timeout: float = 900.0
    concurrency: int = 0
    pass_env: tuple[str, ...] = ()
    max_failures: int = 3
    history: int = 30


BACKENDS = ("local", "ray", "skypilot")


class TierRole(enum.Enum):
    """What a tier's slots are for in the screening → promotion policy."""

    SCREEN = "screen"  # cheap first runs of every candidate
    VALIDATE = "validate"  # re-runs of promoted candidates; only these advance the branch
    ANY = "any"  # both


@dataclass(frozen=True, kw_only=True)
class TierConfig:
    """One kind of hardware in a pool.

    Attributes:
        name: short identifier (``h100``), recorded with every experiment.
        accelerator: ``TYPE:COUNT`` per slot (``H100:1``), empty for CPU slots.
        slots: parallel experiments on this tier (for autoscaling pools: the start size).
        max_slots: upper bound for autoscaling backends; 0 = ``slots``.
        price_per_hour: dollars per slot-hour (the accelerators of one slot together).
        speed: relative throughput (H200 ≈ 1.3 × H100); informs scheduling, never metrics.
        role: screen, validate or any.
        options: backend-specific settings for this tier (Ray resources, SkyPilot
            ``infra`` / ``use_spot`` / ``cpus`` ...), validated by the backend.
    """

    name: str
    accelerator: str = ""
    slots: int = 1
    max_slots: int = 0
    price_per_hour: float = 0.0
    speed: float = 1.0
    role: TierRole = TierRole.ANY
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def gpus_per_slot(self) -> float:
        """Accelerators one slot holds (``H100:2`` → 2; none → 0)."""
        if not self.accelerator:
            return 0.0
        _, _, count = self.accelerator.partition(":")
        return float(count) if count else 1.0

    @property
    def accelerator_type(self) -> str:
        return self.accelerator.partition(":")[0]


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """Where experiments run: one backend and its tiers (none = local slots from [run] workers)."""

    backend: str = "local"
    tiers: tuple[TierConfig, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def slot_tiers(self, workers: int) -> tuple[TierConfig, ...]:
        """The tier of every slot, slot ids in order (tiers in file order).

        Without tiers, ``workers`` slots of one implicit free tier named ``local``.
        """
        if not self.tiers:
            return tuple(TierConfig(name="local", slots=1) for _ in range(max(1, workers)))
        return tuple(t for t in self.tiers for _ in range(t.slots))

    def tier(self, name: str) -> TierConfig:
        for t in self.tiers:
            if t.name == name:
                return t
        raise ConfigError(
            f"no tier named {name!r} in [pool]; tiers: {', '.join(t.name for t in self.tiers) or '(none)'}"
        )

    @property
    def validate_tiers(self) -> tuple[TierConfig, ...]:
        return tuple(t for t in self.tiers if t.role is TierRole.VALIDATE)


@dataclass(frozen=True, kw_only=True)
class Config:
    workspace: WorkspaceConfig = WorkspaceConfig()
    metric: MetricConfig = MetricConfig()
    run: RunConfig = RunConfig()
    knobs: KnobConfig = KnobConfig()
    pool: PoolConfig = PoolConfig()
    llm: LLMConfig = LLMConfig()
    agent: AgentConfig = AgentConfig()


# ---------------------------------------------------------------------------
# Parsing


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int) -> float:
    """Parse ``90``, ``"90s"``, ``"15m"``, ``"8h"`` or ``"1h30m"`` into seconds."""
    if isinstance(text, int | float):
        if text < 0:
            raise ConfigError(f"duration must not be negative, got {text}")
        return float(text)
    s = text.strip().lower().replace(" ", "")
    if not s:
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if not m:
            raise ConfigError(
                f"cannot read duration {text!r}: use seconds or a number with s/m/h/d, e.g. 90s, 15m, 1h30m"
            )
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return total


def _section(raw: Mapping[str, Any], name: str, cls: type, path: Path) -> Any:
    data = raw.get(name, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    if cls is KnobConfig:
        # Per-knob tables ([knobs.MATRIX_LR]) sit beside 'exclude'.
        overrides = {k: v for k, v in data.items() if k != "exclude" and isinstance(v, dict)}
        extra = sorted(k for k in data if k != "exclude" and not isinstance(data[k], dict))
        if extra:
            raise ConfigError(
                f"{path}: unknown key(s) in [knobs]: {', '.join(extra)}; "
                "per-knob settings go in a table such as [knobs.MATRIX_LR]"
            )
        exclude = data.get("exclude", list(KnobConfig().exclude))
        if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
            raise ConfigError(f"{path}: [knobs] exclude must be a list of knob names")
        return KnobConfig(exclude=tuple(exclude), overrides=overrides)
    known = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - known)
    if extra:
        raise ConfigError(
            f"{path}: unknown key(s) in [{name}]: {', '.join(extra)}; known keys: {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for key, value in data.items():
        default = getattr(defaults, key)
        kwargs[key] = _coerce(value, default, f"{path}: [{name}] {key}")
    return cls(**kwargs)


_TIER_KEYS = {f.name for f in dataclasses.fields(TierConfig)}
_ACCELERATOR = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(:\d+(\.\d+)?)?")


def _pool(raw: Mapping[str, Any], path: Path) -> PoolConfig:
    data = raw.get("pool", {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [pool] must be a table")
    extra = sorted(set(data) - {"backend", "tiers", "options"})
    if extra:
        raise ConfigError(
            f"{path}: unknown key(s) in [pool]: {', '.join(extra)}; known keys: backend, tiers, "
            "options (backend settings go in [pool.options], tiers in [[pool.tiers]])"
        )
    backend = data.get("backend", "local")
    if backend not in BACKENDS:
        raise ConfigError(
            f"{path}: [pool] backend {backend!r} is unknown; choose one of: {', '.join(BACKENDS)}"
        )
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: [pool.options] must be a table")
    tiers_raw = data.get("tiers", [])
    if not isinstance(tiers_raw, list) or not all(isinstance(t, dict) for t in tiers_raw):
        raise ConfigError(f"{path}: tiers must be written as [[pool.tiers]] tables")
    tiers = []
    for i, t in enumerate(tiers_raw):
        where = f"{path}: [[pool.tiers]] #{i + 1}"
        unknown = sorted(set(t) - _TIER_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(_TIER_KEYS))}"
            )
        if "name" not in t:
            raise ConfigError(f'{where}: every tier needs a name, e.g. name = "h100"')
        defaults = TierConfig(name="x")
        kwargs: dict[str, Any] = {}
        for key, value in t.items():
            if key == "role":
                try:
                    kwargs[key] = TierRole(str(value).lower())
                except ValueError:
                    raise ConfigError(
                        f"{where}: role must be 'screen', 'validate' or 'any', got {value!r}"
                    ) from None
            elif key == "options":
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: options must be a table")
                kwargs[key] = value
            else:
                kwargs[key] = _coerce(value, getattr(defaults, key), f"{where} {key}")
        tiers.append(TierConfig(**kwargs))
    return PoolConfig(backend=backend, tiers=tuple(tiers), options=options)


def _validate_pool(pool: PoolConfig, where: str) -> None:
    names = [t.name for t in pool.tiers]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: tier names must be unique, got {', '.join(names)}")
    for t in pool.tiers:
        w = f"{where}: tier {t.name!r}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", t.name):
            raise ConfigError(f"{w}: name must be letters, digits, '_' or '-'")
        if t.accelerator and not _ACCELERATOR.fullmatch(t.accelerator):
            raise ConfigError(
                f"{w}: accelerator {t.accelerator!r} must look like 'H100:1' (TYPE:COUNT)"
            )
        if t.slots < 0 or (t.slots == 0 and t.max_slots == 0):
            raise ConfigError(f"{w}: slots must be >= 1 (or 0 with max_slots > 0 for autoscaling)")
        if t.max_slots and t.max_slots < t.slots:
            raise ConfigError(f"{w}: max_slots ({t.max_slots}) must be >= slots ({t.slots}), or 0")
        if t.price_per_hour < 0:
            raise ConfigError(f"{w}: price_per_hour must be >= 0 dollars, got {t.price_per_hour}")
        if t.speed <= 0:
            raise ConfigError(f"{w}: speed must be > 0 (1.0 = reference), got {t.speed}")
    if pool.tiers and all(t.role is TierRole.VALIDATE for t in pool.tiers):
        raise ConfigError(
            f"{where}: every tier has role 'validate'; give at least one tier role 'screen' or 'any'"
        )


_LLM_OPTIONAL = ("api_key_env", "temperature", "price_in_per_mtok", "price_out_per_mtok")


def _llm(raw: Mapping[str, Any], path: Path) -> LLMConfig:
    data = raw.get("llm", {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [llm] must be a table")
    rest = {k: v for k, v in data.items() if k not in _LLM_OPTIONAL}
    cfg = _section({"llm": rest}, "llm", LLMConfig, path)
    where = f"{path}: [llm]"
    optional: dict[str, Any] = {}
    if "api_key_env" in data:
        if not isinstance(data["api_key_env"], str):
            raise ConfigError(
                f'{where} api_key_env must be the name of an environment variable (a string), e.g. "ANTHROPIC_API_KEY"'
            )
        optional["api_key_env"] = data["api_key_env"]
    for key in ("temperature", "price_in_per_mtok", "price_out_per_mtok"):
        if key in data:
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"{where} {key} must be a number, got {v!r}")
            optional[key] = float(v)
    return dataclasses.replace(cfg, **optional) if optional else cfg


def _validate_llm(llm: LLMConfig, strategy: str, where: str) -> None:
    w = f"{where}: [llm]"
    if llm.provider not in LLM_PROVIDERS:
        raise ConfigError(
            f"{w} provider {llm.provider!r} is unknown; choose one of: {', '.join(LLM_PROVIDERS)} "
            "(use openai with base_url for vLLM, Ollama or llama.cpp)"
        )
    if llm.hybrid_code not in ("llm", "agent"):
        raise ConfigError(f"{w} hybrid_code must be 'llm' or 'agent', got {llm.hybrid_code!r}")
    code_is_llm = strategy == "llm" or (strategy == "hybrid" and llm.hybrid_code == "llm")
    if code_is_llm and not llm.model:
        raise ConfigError(
            f'{w} model is required by strategy {strategy!r}: set e.g. model = "claude-sonnet-4-5" in [llm]'
        )
    if llm.base_url and not re.match(r"https?://", llm.base_url):
        raise ConfigError(f"{w} base_url must start with http:// or https://, got {llm.base_url!r}")
    if llm.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", llm.api_key_env):
        raise ConfigError(
            f"{w} api_key_env must name an environment variable (letters, digits, '_'), "
            f"got {llm.api_key_env!r}; put the key itself in that variable, never in the file"
        )
    if llm.max_tokens < 1:
        raise ConfigError(f"{w} max_tokens must be >= 1, got {llm.max_tokens}")
    if llm.provider == "anthropic" and llm.max_tokens > 21_000:
        raise ConfigError(
            f"{w} max_tokens must be <= 21000 with provider anthropic (longer replies need streaming)"
        )
    if llm.temperature is not None and not 0.0 <= llm.temperature <= 2.0:
        raise ConfigError(f"{w} temperature must be between 0 and 2, got {llm.temperature}")
    if llm.timeout <= 0:
        raise ConfigError(f"{w} timeout must be > 0 seconds, got {llm.timeout}")
    if llm.max_retries < 0:
        raise ConfigError(f"{w} max_retries must be >= 0, got {llm.max_retries}")
    if llm.concurrency < 1 or llm.max_failures < 1:
        raise ConfigError(f"{w} concurrency and max_failures must be >= 1")
    if llm.max_prompt_chars < 1000:
        raise ConfigError(f"{w} max_prompt_chars must be at least 1000")
    for key in ("price_in_per_mtok", "price_out_per_mtok"):
        v = getattr(llm, key)
        if v is not None and v < 0:
            raise ConfigError(f"{w} {key} must be >= 0 dollars per million tokens, got {v}")
    if not 0.0 < llm.hybrid_ratio < 1.0:
        raise ConfigError(
            f"{w} hybrid_ratio must be strictly between 0 and 1 (the model's share of the slots), "
            f"got {llm.hybrid_ratio}"
        )
    if llm.hybrid_knobs not in HYBRID_KNOB_STRATEGIES:
        raise ConfigError(
            f"{w} hybrid_knobs {llm.hybrid_knobs!r} must be one of: {', '.join(HYBRID_KNOB_STRATEGIES)}"
        )


def _validate_agent(agent: AgentConfig, strategy: str, where: str) -> None:
    w = f"{where}: [agent]"
    if strategy == "agent" and not agent.command:
        raise ConfigError(
            f'{w} command is required by strategy \'agent\': set e.g. command = ["claude", "-p", "{{prompt}}"]'
        )
    for arg in agent.command:
        for name in re.findall(r"{([^{}]*)}", arg):
            if name not in AGENT_PLACEHOLDERS:
                raise ConfigError(
                    f"{w} command uses unknown placeholder {{{name}}}; known: "
                    + ", ".join(f"{{{p}}}" for p in AGENT_PLACEHOLDERS)
                )
    if agent.timeout <= 0:
        raise ConfigError(f"{w} timeout must be > 0 seconds, got {agent.timeout}")
    if agent.concurrency < 0 or agent.max_failures < 1 or agent.history < 0:
        raise ConfigError(
            f"{w} concurrency must be >= 0 (0 = free slots), max_failures >= 1, history >= 0"
        )
    for name in agent.pass_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(
                f"{w} pass_env must list environment variable names, got {name!r}; "
                "put the key itself in that variable, never in the file"
            )


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, Direction):
        try:
            return Direction(str(value).lower())
        except ValueError:
            raise ConfigError(f"{where} must be 'minimize' or 'maximize', got {value!r}") from None
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if where.endswith(("time_limit", "budget", "timeout", "grace")) and isinstance(value, str):
            return parse_duration(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def load_config(workspace: Path) -> Config:
    """Read ``<workspace>/autoswarm.toml`` into a validated :class:`Config`."""
    path = workspace / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(
            f"{workspace} has no {CONFIG_NAME}: is it an autoswarm workspace? "
            f"Create one with: autoswarm init {workspace}"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}. Fix the file and run again.") from e
    unknown = sorted(set(raw) - {"workspace", "metric", "run", "knobs", "pool", "llm", "agent"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {', '.join(unknown)}; known: workspace, metric, run, knobs, pool, llm, agent"
        )
    cfg = Config(
        workspace=_section(raw, "workspace", WorkspaceConfig, path),
        metric=_section(raw, "metric", MetricConfig, path),
        run=_section(raw, "run", RunConfig, path),
        knobs=_section(raw, "knobs", KnobConfig, path),
        pool=_pool(raw, path),
        llm=_llm(raw, path),
        agent=_section(raw, "agent", AgentConfig, path),
    )
    validate(cfg, str(path))
    return cfg


def validate(cfg: Config, where: str = CONFIG_NAME) -> None:
    """Check cross-field rules; raise :class:`ConfigError` saying what to change."""
    r = cfg.run
    if r.budget <= 0:
        raise ConfigError(f"{where}: budget must be > 0 seconds, got {r.budget}")
    if r.timeout < 0 or (r.timeout and r.timeout < r.budget):
        raise ConfigError(
            f"{where}: timeout ({r.timeout}s) must be at least the budget ({r.budget}s), or 0 for 2 × budget + grace"
        )
    if r.workers < 0:
        raise ConfigError(f"{where}: workers must be >= 0 (0 = automatic), got {r.workers}")
    if r.threads_per_worker < 1:
        raise ConfigError(f"{where}: threads_per_worker must be >= 1")
    if r.baseline_repeats < 2:
        raise ConfigError(
            f"{where}: baseline_repeats must be >= 2 (one run measures no noise, and the keep "
            "rule needs it; 3 or more is better)"
        )
    for name in ("keep_sigmas", "min_delta", "confirm_sigmas", "false_keep_rate"):
        value = getattr(r, name)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"{where}: keep_sigmas, confirm_sigmas, min_delta and false_keep_rate must be "
                f"finite numbers >= 0 ({name} = {value})"
            )
    if not 0 < r.false_keep_rate < 0.5:
        raise ConfigError(
            f"{where}: false_keep_rate must be between 0 and 0.5 (0.001 = at most one false "
            f"keep per 1000 candidates with no effect), got {r.false_keep_rate}"
        )
    if r.final_runs < -1:
        raise ConfigError(
            f"{where}: final_runs must be >= 0, or -1 for automatic (3 with several slots)"
        )
    if r.confirm_runs < 0:
        raise ConfigError(f"{where}: confirm_runs must be >= 0 (0 = never re-run before deciding)")
    if r.best_runs < 0:
        raise ConfigError(
            f"{where}: best_runs must be >= 0: the fresh runs (after its selection) a kept "
            "variant's bar must rest on; 0 = automatic (baseline_repeats)"
        )
    if r.max_experiments < 0:
        raise ConfigError(f"{where}: max_experiments must be >= 0 (0 = unlimited)")
    if r.max_cost < 0 or r.max_gpu_hours < 0:
        raise ConfigError(f"{where}: max_cost and max_gpu_hours must be >= 0 (0 = unlimited)")
    if r.log_max_bytes < 10_000:
        raise ConfigError(f"{where}: log_max_bytes must be at least 10000")
    if r.strategy not in STRATEGIES:
        raise ConfigError(
            f"{where}: unknown strategy {r.strategy!r}; choose one of: {', '.join(STRATEGIES)}"
        )
    if r.tag and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", r.tag):
        raise ConfigError(
            f"{where}: tag {r.tag!r} must be letters, digits, '.', '_' or '-' (it names a git branch)"
        )
    ws = cfg.workspace
    if not ws.editable:
        raise ConfigError(f"{where}: [workspace] editable must list at least one file")
    both = set(ws.editable) & set(ws.locked)
    if both:
        raise ConfigError(f"{where}: {', '.join(sorted(both))} cannot be both editable and locked")
    for p in (*ws.editable, *ws.locked):
        if p.startswith("/") or ".." in Path(p).parts:
            raise ConfigError(f"{where}: {p!r} must be a path inside the workspace")
    if not ws.command:
        raise ConfigError(f"{where}: [workspace] command must not be empty")
    _validate_pool(cfg.pool, where)
    _validate_llm(cfg.llm, r.strategy, where)
    agent_strategy = (
        "agent" if r.strategy == "hybrid" and cfg.llm.hybrid_code == "agent" else r.strategy
    )
    _validate_agent(cfg.agent, agent_strategy, where)


def with_overrides(cfg: Config, **run_fields: Any) -> Config:
    """Return ``cfg`` with the given [run] fields replaced (None values are ignored)."""
    changes = {k: v for k, v in run_fields.items() if v is not None}
    if not changes:
        return cfg
    new = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **changes))
    validate(new, "command-line options")
    return new


def with_recorded_run(cfg: Config, recorded: Mapping[str, Any]) -> Config:
    """``cfg`` with the [run] and [metric] settings a run was started with (for ``--resume``).

    A resumed run continues toward the same totals, with the same budget and keep rule,
    whatever autoswarm.toml says now; flags given to the resuming command still win.
    """
    run = dict(recorded.get("run", {}))
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    changes = {k: v for k, v in run.items() if k in fields}
    new_run = dataclasses.replace(cfg.run, **changes)
    metric = recorded.get("metric", {})
    new_metric = MetricConfig(
        name=str(metric.get("name", cfg.metric.name)),
        direction=Direction(metric.get("direction", cfg.metric.direction.value)),
    )
    new = dataclasses.replace(cfg, run=new_run, metric=new_metric)
    validate(new, "the recorded run configuration")
    return new


def render_default_config(
    *,
    budget: float,
    timeout: float = 0.0,
    workers: int = 0,
    exclude: tuple[str, ...] = ("TIME_BUDGET",),
) -> str:
    """The autoswarm.toml written by ``autoswarm init`` (documented, every key shown)."""
    return f"""\
# autoswarm workspace configuration. Flags of `autoswarm run` override [run] keys.

[workspace]
editable = ["train.py"]            # files a variant may change
locked = ["prepare.py"]            # files no variant may touch (data, metric)
command = ["{{python}}", "train.py"] # one experiment; {{python}} = autoswarm's interpreter
prepare = ["{{python}}", "prepare.py"] # run once before the first experiment

[metric]
name = "val_bpb"                   # a key of the summary block train.py prints
direction = "minimize"

[run]
budget = {budget:g}                       # training seconds per experiment (AUTOSWARM_BUDGET)
timeout = {timeout:g}                       # hard kill; 0 = 2 × budget + grace
grace = 60                         # start-up + evaluation allowance for the default timeout
workers = {workers}                        # parallel slots; 0 = one per GPU, else one per core
threads_per_worker = 1             # CPU threads per run when there is no GPU
strategy = "auto"
baseline_repeats = 5               # runs of the unmodified train.py to measure noise
seed = 42                          # AUTOSWARM_SEED of candidates; repeats use seed+1, seed+2, ...
false_keep_rate = 0.001            # chance a variant with no real effect is kept (1 per 1000)
keep_sigmas = 2.0                  # ... and gains of at least this many standard errors
min_delta = 0.0                    # ... larger than this absolute amount
confirm_sigmas = 1.0               # a first run this many standard errors better is re-run ...
confirm_runs = 2                   # ... with this many fresh seeds before the verdict
best_runs = 0                      # fresh runs a kept variant's bar rests on; 0 = baseline_repeats
final_runs = -1                    # re-runs of the best at the end; -1 = 3 if several slots
max_experiments = 0                # 0 = unlimited (baseline repeats count)
time_limit = 0                     # e.g. "8h"; 0 = unlimited
log_max_bytes = 2000000            # per-experiment log cap (head and tail are kept)
max_cost = 0                       # dollars; 0 = unlimited (needs tier prices in [pool])
max_gpu_hours = 0                  # accelerator-hours; 0 = unlimited

[knobs]
exclude = [{", ".join(f'"{x}"' for x in exclude)}]  # UPPER_CASE constants the knob search leaves alone
"""


__all__ = [
    "BACKENDS",
    "CONFIG_NAME",
    "KNOB_STRATEGIES",
    "STRATEGIES",
    "AgentConfig",
    "Config",
    "KnobConfig",
    "LLMConfig",
    "MetricConfig",
    "PoolConfig",
    "RunConfig",
    "TierConfig",
    "TierRole",
    "WorkspaceConfig",
    "load_config",
    "parse_duration",
    "render_default_config",
    "validate",
    "with_overrides",
    "with_recorded_run",
]
