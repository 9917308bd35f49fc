"""Typed, frozen configuration loaded from a workspace's ``autoswarm.toml``.

The file has these tables::

    [workspace]  editable / locked files, the commands that prepare data and run one experiment
    [metric]     name of the summary key to optimise and its direction
    [run]        budget, timeout, workers, strategy, noise rule, limits
    [knobs]      knob-search settings (exclusions, per-knob overrides)
    [pool]       where experiments run: a backend and its hardware tiers ([[pool.tiers]])
    [llm]        the language model of the llm / hybrid strategies (provider, model, key variable)
    [agent]      the coding-agent command of the ``agent`` strategy (argv template, timeout)

Each table is a frozen pydantic model. A field's type says exactly what its key accepts
(``workers = "2"`` is refused, never guessed; durations such as ``"20m"`` are the
:data:`Duration` type), ``Field`` constraints give its range, and validators hold the rules
that span keys. Every mistake becomes one line of a :class:`ConfigError` that names the
file, the key and what to write instead, e.g.::

    autoswarm.toml: [run] workers must be an integer, got 'two'; write e.g. workers = 0

Command-line flags override [run] fields through :func:`with_overrides`. A run stores its
configuration in the ledger as :meth:`Config.to_record` and every reader gets it back with
:meth:`Config.from_record`. Nothing here reads environment variables: what a run does is
what the file and the flags say.

Tests: ``pytest tests/unit/test_config.py tests/unit/test_pool_config.py``.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, NoReturn, Self, TypeVar, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from autoswarm.errors import ConfigError
from autoswarm.proposers.registry import HYBRID_KNOB_STRATEGIES, KNOB_STRATEGIES, STRATEGIES
from autoswarm.sandbox import SandboxMode
from autoswarm.types import Direction

CONFIG_NAME = "autoswarm.toml"
BACKENDS = ("local", "ray", "skypilot")
LLM_PROVIDERS = ("anthropic", "openai")
# The knob strategies ``hybrid`` may pair with the model (proposers.registry lists them).
HYBRID_KNOBS = HYBRID_KNOB_STRATEGIES
# Placeholders an [agent] command may use (each replaced inside its argument).
AGENT_PLACEHOLDERS = ("prompt", "prompt_file", "workdir")


# ---------------------------------------------------------------------------
# Value types: what a key accepts beyond the plain int / float / str / bool


def _fail(text: str) -> NoReturn:
    """Refuse a value with a whole sentence that names its key (shown after the table)."""
    raise PydanticCustomError("rule", "{text}", {"text": text})


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


def _seconds(value: object, info: ValidationInfo) -> object:
    if isinstance(value, str):
        try:
            value = parse_duration(value)
        except ConfigError as e:
            _fail(f"{info.field_name}: {e}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(
            f"{info.field_name} must be a number of seconds or a duration such as "
            f'"90s", "15m" or "1h30m", got {value!r}'
        )
    if math.isinf(value) or value > MAX_DURATION_S:
        # A timer this long cannot be armed (threading's waits overflow near 292 years),
        # and a run that long is a typo: 0 is the way to say "no limit".
        _fail(
            f"{info.field_name} must be at most {MAX_DURATION_S // 86400} days "
            f"(use 0 for no limit), got {value!r}"
        )
    return float(value)  # seconds as written; the range is the field's to check


MAX_DURATION_S = 366 * 86400


# Seconds, written as a number (90, 2.5) or a duration string ("90s", "15m", "1h30m", "2d").
Duration = Annotated[float, BeforeValidator(_seconds)]


def _list_of(what: str) -> BeforeValidator:
    """A TOML array of strings, kept as a tuple (``what`` names the items in the error)."""

    def check(value: object, info: ValidationInfo) -> object:
        if isinstance(value, list | tuple) and all(isinstance(x, str) for x in value):
            return tuple(value)
        _fail(f"{info.field_name} must be a list of {what}, got {_show(value)}")

    return BeforeValidator(check)


Strings = Annotated[tuple[str, ...], _list_of("strings")]


def _named(kind: type[enum.Enum]) -> BeforeValidator:
    """An Enum written as its value, in any case (``"MAXIMIZE"`` → ``Direction.MAXIMIZE``)."""
    values = [repr(m.value) for m in kind]
    choices = ", ".join(values[:-1]) + " or " + values[-1]

    def check(value: object, info: ValidationInfo) -> object:
        if isinstance(value, kind):
            return value
        try:
            return kind(str(value).lower())
        except ValueError:
            _fail(f"{info.field_name} must be {choices}, got {value!r}")

    return BeforeValidator(check)


def _one_of(choices: tuple[str, ...], hint: str = "") -> Callable[[str, ValidationInfo], str]:
    def check(value: str, info: ValidationInfo) -> str:
        if value not in choices:
            _fail(
                f"{info.field_name} {value!r} is unknown; choose one of: {', '.join(choices)}{hint}"
            )
        return value

    return check


_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_HINT = "put the key itself in that variable, never in the file"


def _variable_names(cls: type, names: tuple[str, ...]) -> tuple[str, ...]:
    """A ``pass_env`` validator: every entry is a variable's name, never a value."""
    for name in names:
        if not _VARIABLE.fullmatch(name):
            _fail(f"pass_env must list environment variable names, got {name!r}; {_KEY_HINT}")
    return names


# ---------------------------------------------------------------------------
# Sections


class _Table(BaseModel):
    """One table of autoswarm.toml: frozen, keyword-only, exact types, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    # What an unknown-key error says after the unknown keys; None = the list of known keys.
    _keys_hint: ClassVar[str | None] = None


class WorkspaceConfig(_Table):
    editable: Strings = Field(
        default=("train.py",), min_length=1, description="must list at least one file"
    )
    locked: Strings = ("prepare.py",)
    # "{python}" is replaced by the interpreter that runs autoswarm (the venv's).
    command: Strings = Field(
        default=("{python}", "train.py"), min_length=1, description="must not be empty"
    )
    prepare: Strings = ("{python}", "prepare.py")

    @field_validator("editable", "locked")
    @classmethod
    def _inside(cls, paths: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        for p in paths:
            if p.startswith("/") or ".." in Path(p).parts:
                _fail(f"{info.field_name}: {p!r} must be a path inside the workspace")
        return paths

    @model_validator(mode="after")
    def _apart(self) -> Self:
        both = set(self.editable) & set(self.locked)
        if both:
            _fail(f"{', '.join(sorted(both))} cannot be both editable and locked")
        return self


# Metric names whose values cannot be negative: bits per byte, losses, perplexities.
_NON_NEGATIVE = re.compile(r"(^|_)(bpb|loss|ppl|perplexity)($|_)")


class MetricConfig(_Table):
    """``[metric]``: the number experiments are judged by, and who measures it.

    Without ``evaluate`` the metric is what train.py prints (self-reported). With it, a
    locked evaluation command measures it from the model train.py saved
    (:mod:`autoswarm.evaluation`), and a printed value that disagrees is ``forged``.
    """

    name: str = "val_bpb"
    direction: Annotated[Direction, _named(Direction)] = Direction.MINIMIZE
    # The locked evaluation command ("{python}" = autoswarm's interpreter), run in a
    # directory holding only the locked files; () = the metric is self-reported.
    evaluate: Strings = ()
    # The evaluation's held-out metric: recorded and shown to the human, never used for a
    # decision nor shown to a proposer (so is every "test_*" key it prints).
    test: str = "test_bpb"
    # Data only the evaluation sees (hidden from training in a sandbox); a relative path
    # is inside the data cache ($AUTOSWARM_CACHE, else ~/.cache/autoswarm).
    sealed: Annotated[tuple[str, ...], _list_of("paths")] = ()
    tolerance: float = Field(default=1e-4, gt=0, lt=1, description="must be between 0 and 1")
    evaluate_timeout: Duration = Field(default=600.0, gt=0, description="must be > 0 seconds")
    model: str = "model.pt2"  # where train.py saves its model, in its run directory
    # The values the metric can take; one outside is a crash ("impossible metric"), never
    # a best. None: the known bound of the metric's name (bits per byte and losses are
    # >= 0), else none.
    lower: float | None = None
    upper: float | None = None

    @property
    def bounds(self) -> tuple[float, float]:
        """(lower, upper) the metric's values must lie in."""
        known = 0.0 if _NON_NEGATIVE.search(self.name) else -math.inf
        lower = known if self.lower is None else self.lower
        return lower, math.inf if self.upper is None else self.upper

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        lo, hi = self.bounds
        if not (lo < hi) or math.isnan(lo) or math.isnan(hi):
            _fail(f"[metric] lower ({lo:g}) must be below upper ({hi:g})")
        return self

    @field_validator("name", "test")
    @classmethod
    def _summary_key(cls, key: str, info: ValidationInfo) -> str:
        """A key train.py (or the evaluation) prints in its summary block: ``name: 1.23``."""
        if (key or info.field_name == "name") and not _VARIABLE.fullmatch(key):
            _fail(
                f"{info.field_name} {key!r} is not a summary-block key: letters, digits and "
                "'_', as in val_bpb (train.py prints it as `val_bpb: 0.99`)"
            )
        return key

    @field_validator("model")
    @classmethod
    def _model_inside(cls, path: str) -> str:
        if not path or path.startswith("/") or ".." in Path(path).parts:
            _fail(f"model: {path!r} must be a file name inside the run directory")
        return path


class RunConfig(_Table):
    # Training seconds per experiment (AUTOSWARM_BUDGET).
    budget: Duration = Field(default=60.0, gt=0, description="must be > 0 seconds")
    timeout: Duration = 0.0  # hard kill after this many seconds; 0 = 2 × budget + grace
    # Start-up + evaluation allowance used by the default timeout.
    grace: Duration = Field(default=60.0, ge=0, description="must be >= 0 seconds")
    # Parallel slots; 0 = one per GPU, else cores // threads_per_worker.
    workers: int = Field(default=0, ge=0, description="must be >= 0 (0 = automatic)")
    # CPU threads each run may use when there is no GPU.
    threads_per_worker: int = Field(default=1, ge=1, description="must be >= 1")
    strategy: str = "auto"
    tag: str = Field(
        default="", examples=["mar5"]
    )  # branch autoswarm/<tag>; empty = a date-based tag
    # Runs of the unmodified train.py before anything is judged: σ̂ rests on their
    # degrees of freedom until the run has measured more (5 runs: 4 df; a look at level
    # 0.0005 needs t > 31.6 on 2 df, 8.6 on 4).
    baseline_repeats: int = Field(
        default=5,
        ge=2,
        description="must be >= 2 (one run measures no noise, and the keep rule needs it; "
        "5 or more is better)",
    )
    seed: int = 42
    # The keep rule (autoswarm.judge): a variant with no real effect is kept with at most
    # this probability (0.001: 1000 such candidates keep at most 1 in expectation) ...
    false_keep_rate: float = Field(
        default=0.001,
        gt=0,
        lt=0.5,
        description="must be between 0 and 0.5 (0.001 = at most one false keep per 1000 "
        "candidates with no effect)",
    )
    keep_sigmas: float = 2.0  # ... and only gains of at least keep_sigmas standard errors
    min_delta: float = 0.0  # ... larger than this absolute floor
    confirm_sigmas: float = 1.0  # a first run this many standard errors better is re-run ...
    # ... with this many fresh seeds before the verdict (never kept on one).
    confirm_runs: int = Field(
        default=2, ge=0, description="must be >= 0 (0 = never re-run before deciding)"
    )
    # A kept variant is re-measured (fresh seeds) until its bar rests on this many fresh
    # runs; 0 = automatic (as many as the baseline's: baseline_repeats).
    best_runs: int = Field(
        default=0,
        ge=0,
        description="must be >= 0: the fresh runs (after its selection) a kept variant's bar "
        "must rest on; 0 = automatic (baseline_repeats)",
    )
    # At the end of the run the best is re-run this many times and reported as the
    # validated mean ± se (a keep they contradict is revoked); -1 = automatic: 3 with
    # several slots, 0 on one slot (where each costs a whole experiment).
    final_runs: int = Field(
        default=-1, ge=-1, description="must be >= 0, or -1 for automatic (3 with several slots)"
    )
    # 0 = unlimited; counts the whole run, baseline included.
    max_experiments: int = Field(default=0, ge=0, description="must be >= 0 (0 = unlimited)")
    time_limit: Duration = Field(default=0.0, ge=0, description="must be >= 0 (0 = unlimited)")
    log_max_bytes: int = Field(default=2_000_000, ge=10_000, description="must be at least 10000")
    # Dollars (tier prices × measured durations); 0 = unlimited.
    max_cost: float = Field(default=0.0, ge=0, description="must be >= 0 (0 = unlimited)")
    # Accelerator-hours over all tiers; 0 = unlimited.
    max_gpu_hours: float = Field(default=0.0, ge=0, description="must be >= 0 (0 = unlimited)")

    @property
    def effective_timeout(self) -> float:
        return self.timeout if self.timeout > 0 else 2.0 * self.budget + self.grace

    @field_validator("keep_sigmas", "min_delta", "confirm_sigmas")
    @classmethod
    def _finite(cls, value: float, info: ValidationInfo) -> float:
        if not math.isfinite(value) or value < 0:
            _fail(
                "keep_sigmas, confirm_sigmas, min_delta and false_keep_rate must be finite "
                f"numbers >= 0 ({info.field_name} = {value})"
            )
        return value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, strategy: str) -> str:
        if strategy not in STRATEGIES:
            _fail(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        return strategy

    @field_validator("tag")
    @classmethod
    def _branch_name(cls, tag: str) -> str:
        if tag and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", tag):
            _fail(f"tag {tag!r} must be letters, digits, '.', '_' or '-' (it names a git branch)")
        # What git itself refuses in a ref name (git check-ref-format), among those.
        if tag and (".." in tag or tag.endswith((".", ".lock"))):
            _fail(
                f"tag {tag!r} cannot name a git branch (no '..', and no '.' or '.lock' at the "
                "end): choose another, e.g. the same without the dots"
            )
        return tag

    @model_validator(mode="after")
    def _timeout_covers_budget(self) -> Self:
        if self.timeout < 0 or (self.timeout and self.timeout < self.budget):
            _fail(
                f"timeout ({self.timeout}s) must be at least the budget ({self.budget}s), "
                "or 0 for 2 × budget + grace"
            )
        return self


_KNOB_KEYS = frozenset({"low", "high", "log", "kind", "choices"})


def _finite_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class KnobConfig(_Table):
    """[knobs]: ``exclude`` and one table per knob ([knobs.MATRIX_LR]), kept in ``overrides``."""

    _keys_hint: ClassVar[str | None] = (
        "known keys: exclude; per-knob settings go in a table such as [knobs.MATRIX_LR]"
    )
    exclude: Annotated[tuple[str, ...], _list_of("knob names")] = ("TIME_BUDGET",)
    # Per-knob overrides, e.g. {"MATRIX_LR": {"low": 0.005, "high": 0.2, "log": true}}.
    overrides: Mapping[str, Mapping[str, Any]] = Field(default_factory=dict)

    @field_validator("overrides")
    @classmethod
    def _knob_tables(cls, tables: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
        """Each [knobs.NAME] table checked at load, not when a proposer first reads it."""
        for name, table in tables.items():
            where = f"{name}:"
            unknown = sorted(set(table) - _KNOB_KEYS)
            if unknown:
                _fail(
                    f"{where} unknown key(s) {', '.join(unknown)}; "
                    f"known keys: {', '.join(sorted(_KNOB_KEYS))}"
                )
            for key in ("low", "high"):
                v = table.get(key)
                if v is not None and not _finite_number(v):
                    _fail(f"{where} {key} must be a finite number, got {v!r}")
            low, high = table.get("low"), table.get("high")
            if low is not None and high is not None and not low < high:
                _fail(f"{where} low ({low!r}) must be below high ({high!r})")
            if "log" in table and not isinstance(table["log"], bool):
                _fail(f"{where} log must be true or false, got {table['log']!r}")
            if "kind" in table and table["kind"] not in ("pow2", "int"):
                _fail(f'{where} kind must be "pow2" or "int", got {table["kind"]!r}')
            if "choices" in table:
                choices = table["choices"]
                if (
                    not isinstance(choices, list | tuple)
                    or not choices
                    or not all(isinstance(c, bool | int | float | str) for c in choices)
                ):
                    _fail(
                        f"{where} choices must be a non-empty list of numbers, booleans or "
                        f"strings, e.g. choices = [16, 32, 64]; got {choices!r}"
                    )
        return tables


class LLMConfig(_Table):
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
    model: str = Field(default="", examples=["claude-sonnet-4-5"])
    base_url: str = Field(default="", examples=["http://127.0.0.1:8000/v1"])
    api_key_env: str | None = None
    max_tokens: int = Field(default=8192, ge=1, description="must be >= 1")
    # None = the model's default.
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="must be between 0 and 2"
    )
    timeout: Duration = Field(default=180.0, gt=0, description="must be > 0 seconds")
    max_retries: int = Field(default=3, ge=0, description="must be >= 0")
    concurrency: int = Field(default=4, ge=1, description="must be >= 1")
    max_failures: int = Field(default=5, ge=1, description="must be >= 1")
    max_prompt_chars: int = Field(default=120_000, ge=1000, description="must be at least 1000")
    price_in_per_mtok: float | None = Field(
        default=None, ge=0, description="must be >= 0 dollars per million tokens", examples=[3.0]
    )
    price_out_per_mtok: float | None = Field(
        default=None, ge=0, description="must be >= 0 dollars per million tokens", examples=[15.0]
    )
    hybrid_ratio: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="must be strictly between 0 and 1 (the model's share of the slots)",
    )
    hybrid_knobs: str = "swarm"
    hybrid_code: str = "llm"  # the code half of ``hybrid``: "llm" ([llm]) or "agent" ([agent])

    @property
    def key_env(self) -> str:
        """The variable to read the key from ("" = none needed)."""
        if self.api_key_env is not None:
            return self.api_key_env
        return "OPENAI_API_KEY" if self.provider == "openai" else "ANTHROPIC_API_KEY"

    _provider = field_validator("provider")(
        _one_of(LLM_PROVIDERS, " (use openai with base_url for vLLM, Ollama or llama.cpp)")
    )
    _hybrid_knobs = field_validator("hybrid_knobs")(_one_of(HYBRID_KNOBS))
    _hybrid_code = field_validator("hybrid_code")(_one_of(("llm", "agent")))

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _variable_name(cls, name: object) -> object:
        if name is not None and not isinstance(name, str):
            _fail(
                "api_key_env must be the name of an environment variable (a string), "
                f'e.g. "ANTHROPIC_API_KEY", got {name!r}'
            )
        if name and not _VARIABLE.fullmatch(name):
            _fail(
                "api_key_env must name an environment variable (letters, digits, '_'), "
                f"got {name!r}; {_KEY_HINT}"
            )
        return name

    @field_validator("base_url")
    @classmethod
    def _http(cls, url: str) -> str:
        if url and not re.match(r"https?://", url):
            _fail(f"base_url must start with http:// or https://, got {url!r}")
        return url

    @model_validator(mode="after")
    def _reply_fits(self) -> Self:
        if self.provider == "anthropic" and self.max_tokens > 21_000:
            _fail(
                "max_tokens must be <= 21000 with provider anthropic (longer replies need "
                f"streaming), got {self.max_tokens}"
            )
        return self


class AgentConfig(_Table):
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

    command: Strings = Field(default=(), examples=[("claude", "-p", "{prompt}")])
    timeout: Duration = Field(default=900.0, gt=0, description="must be > 0 seconds")
    concurrency: int = Field(default=0, ge=0, description="must be >= 0 (0 = free slots)")
    pass_env: Annotated[tuple[str, ...], _list_of("environment variable names")] = Field(
        default=(), examples=[("ANTHROPIC_API_KEY",)]
    )
    max_failures: int = Field(default=3, ge=1, description="must be >= 1")
    history: int = Field(default=30, ge=0, description="must be >= 0")

    @field_validator("command")
    @classmethod
    def _placeholders(cls, command: tuple[str, ...]) -> tuple[str, ...]:
        for arg in command:
            for name in re.findall(r"{([^{}]*)}", arg):
                if name not in AGENT_PLACEHOLDERS:
                    _fail(
                        f"command uses unknown placeholder {{{name}}}; known: "
                        + ", ".join(f"{{{p}}}" for p in AGENT_PLACEHOLDERS)
                    )
        return command

    _variables = field_validator("pass_env")(_variable_names)


class TierRole(enum.Enum):
    """What a tier's slots are for in the screening → promotion policy."""

    SCREEN = "screen"  # cheap first runs of every candidate
    VALIDATE = "validate"  # re-runs of promoted candidates; only these advance the branch
    ANY = "any"  # both


_ACCELERATOR = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(:\d+(\.\d+)?)?")


class TierConfig(_Table):
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

    name: str = Field(examples=["h100"])
    accelerator: str = Field(default="", examples=["H100:1"])
    slots: int = Field(
        default=1, ge=0, description="must be >= 1 (or 0 with max_slots > 0 for autoscaling)"
    )
    max_slots: int = Field(default=0, ge=0, description="must be >= 0 (0 = slots)")
    price_per_hour: float = Field(default=0.0, ge=0, description="must be >= 0 dollars")
    speed: float = Field(default=1.0, gt=0, description="must be > 0 (1.0 = reference)")
    role: Annotated[TierRole, _named(TierRole)] = TierRole.ANY
    options: Mapping[str, Any] = Field(default_factory=dict)

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

    @model_validator(mode="before")
    @classmethod
    def _has_name(cls, data: object) -> object:
        if isinstance(data, Mapping) and "name" not in data:
            _fail('every tier needs a name, e.g. name = "h100"')
        return data

    @field_validator("name")
    @classmethod
    def _short_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            _fail(f"name must be letters, digits, '_' or '-', got {name!r}")
        return name

    @field_validator("accelerator")
    @classmethod
    def _type_count(cls, accelerator: str) -> str:
        if accelerator and not _ACCELERATOR.fullmatch(accelerator):
            _fail(f"accelerator {accelerator!r} must look like 'H100:1' (TYPE:COUNT)")
        return accelerator

    @model_validator(mode="after")
    def _slot_bounds(self) -> Self:
        if self.slots == 0 and self.max_slots == 0:
            _fail("slots must be >= 1 (or 0 with max_slots > 0 for autoscaling), got 0")
        if self.max_slots and self.max_slots < self.slots:
            _fail(f"max_slots ({self.max_slots}) must be >= slots ({self.slots}), or 0")
        return self


def _tier_tables(value: object) -> object:
    if isinstance(value, list | tuple) and all(isinstance(t, Mapping | TierConfig) for t in value):
        return tuple(value)
    _fail(f"tiers must be written as [[pool.tiers]] tables, got {_show(value)}")


class PoolConfig(_Table):
    """Where experiments run: one backend and its tiers (none = local slots from [run] workers)."""

    _keys_hint: ClassVar[str | None] = (
        "known keys: backend, tiers, options (backend settings go in [pool.options], "
        "tiers in [[pool.tiers]])"
    )
    backend: str = "local"
    tiers: Annotated[tuple[TierConfig, ...], BeforeValidator(_tier_tables)] = ()
    options: Mapping[str, Any] = Field(default_factory=dict)

    _backend = field_validator("backend")(_one_of(BACKENDS))

    @model_validator(mode="after")
    def _tier_set(self) -> Self:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            _fail(f"tier names must be unique, got {', '.join(names)}")
        if self.tiers and all(t.role is TierRole.VALIDATE for t in self.tiers):
            _fail("every tier has role 'validate'; give at least one tier role 'screen' or 'any'")
        return self

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


class SandboxConfig(_Table):
    """How experiments (and the agent CLI) are contained ([sandbox]; see autoswarm.sandbox).

    Attributes:
        mode: "auto" (bubblewrap where it works, else the allowlisted environment and
            the process's own session only, said in the run's first lines and in
            ``status``), "bwrap" (bubblewrap or refuse to start) or "off".
        network: let experiments use the network (off: a network namespace of their own,
            loopback only).
        pass_env: environment variables passed to experiments beside the allowlist
            (autoswarm.sandbox.ALLOWED_NAMES), e.g. WANDB_API_KEY.
        read_only: directories experiments may read although they are under a hidden
            one (the home directory, the workspace): data and caches, e.g.
            "~/.cache/autoresearch". The interpreter and ~/.cache/autoswarm always are.
        hide: more directories to replace by empty ones (secrets outside the home).
        memory_gb: address-space limit per experiment (RLIMIT_AS; leave 0 on GPUs, CUDA
            maps more address space than it uses).
        open_files: open-file limit per experiment (RLIMIT_NOFILE), 0 = the system's.
        processes: process limit (RLIMIT_NPROC, counted per user), 0 = the system's.
    """

    mode: Annotated[SandboxMode, _named(SandboxMode)] = SandboxMode.AUTO
    network: bool = False
    pass_env: Annotated[tuple[str, ...], _list_of("environment variable names")] = Field(
        default=(), examples=[("WANDB_API_KEY",)]
    )
    read_only: Annotated[tuple[str, ...], _list_of("directories")] = ()
    hide: Annotated[tuple[str, ...], _list_of("directories")] = ()
    memory_gb: float = Field(default=0.0, ge=0, description="must be >= 0 (0 = no limit)")
    open_files: int = Field(default=0, ge=0, description="must be >= 0 (0 = no limit)")
    processes: int = Field(default=0, ge=0, description="must be >= 0 (0 = no limit)")

    _variables = field_validator("pass_env")(_variable_names)


class Config(_Table):
    """The whole of autoswarm.toml, one field per table."""

    workspace: WorkspaceConfig = Field(default_factory=WorkspaceConfig)
    metric: MetricConfig = Field(default_factory=MetricConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    knobs: KnobConfig = Field(default_factory=KnobConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)

    @model_validator(mode="after")
    def _evaluation_is_locked(self) -> Self:
        """The evaluation runs from the locked files only: every script it names is one."""
        scripts = [a for a in self.metric.evaluate if a.endswith(".py") and not a.startswith("/")]
        loose = [s for s in scripts if s not in self.workspace.locked]
        if loose:
            _fail(
                f"[metric] evaluate runs {', '.join(loose)}, which [workspace] locked does not "
                f"list: a variant could change how it is measured. Add it to locked "
                f'(e.g. locked = ["prepare.py", "{loose[0]}"])'
            )
        return self

    @model_validator(mode="after")
    def _strategy_needs(self) -> Self:
        strategy, llm = self.run.strategy, self.llm
        code = "llm" if strategy == "llm" else llm.hybrid_code if strategy == "hybrid" else ""
        if code == "llm" and not llm.model:
            _fail(
                f"[llm] model is required by strategy {strategy!r}: "
                'set e.g. model = "claude-sonnet-4-5" in [llm]'
            )
        if (strategy == "agent" or code == "agent") and not self.agent.command:
            _fail(
                f"[agent] command is required by strategy {strategy!r}: "
                'set e.g. command = ["claude", "-p", "{prompt}"] in [agent]'
            )
        return self

    def to_record(self) -> dict[str, Any]:
        """The configuration as JSON data: what the ledger stores with a run (``runs.config``)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, base: Config | None = None) -> Config:
        """The configuration a run stored (:meth:`to_record`), checked like the file.

        Keys this version does not know (a record of another version) are ignored; keys the
        record lacks keep their value in ``base`` (default: the defaults).

        Raises:
            ConfigError: a recorded value breaks a rule, one line per value.
        """
        data = _overlay(cls, (base or cls()).model_dump(), record)
        return _checked(cls, data, "the recorded run configuration")


# ---------------------------------------------------------------------------
# Loading and checking: every ValidationError becomes one ConfigError line per mistake

_M = TypeVar("_M", bound=_Table)


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
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {e.start}: {e.reason}): TOML files are UTF-8; "
            "save it as UTF-8 and run again"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}. Fix the file and run again.") from e
    return _checked(Config, _from_toml(raw), str(path))


def _from_toml(raw: dict[str, Any]) -> dict[str, Any]:
    """The file's tables in the schema's shape: [knobs] holds its per-knob tables beside
    ``exclude`` ([knobs.MATRIX_LR]); the schema keeps them apart in ``overrides``."""
    knobs = raw.get("knobs")
    if not isinstance(knobs, dict):
        return raw
    tables = {k: v for k, v in knobs.items() if k != "exclude" and isinstance(v, dict)}
    rest = {k: v for k, v in knobs.items() if k not in tables}
    return {**raw, "knobs": {"overrides": tables, **rest}}


def _checked(model: type[_M], data: object, where: str) -> _M:
    """``model`` validated from ``data``; a ConfigError with one line per mistake if not."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(_lines(e, model, data, where))) from e


def _overlay(
    model: type[_Table], base: dict[str, Any], record: Mapping[str, Any]
) -> dict[str, Any]:
    """``base`` with the values of ``record`` that ``model`` knows, table by table."""
    out = dict(base)
    for name, info in model.model_fields.items():
        if name not in record:
            continue
        value, (table, array) = record[name], _table_of(info)
        if table is not None and not array and isinstance(value, Mapping):
            out[name] = _overlay(table, dict(base.get(name) or {}), value)
        elif table is not None and array and isinstance(value, list | tuple):
            out[name] = [_overlay(table, {}, v) if isinstance(v, Mapping) else v for v in value]
        else:
            out[name] = value
    return out


def _table_of(info: FieldInfo | None) -> tuple[type[_Table] | None, bool]:
    """The table model a field holds, and whether it is an array of them ([[pool.tiers]])."""
    annotation = info.annotation if info is not None else None
    if isinstance(annotation, type) and issubclass(annotation, _Table):
        return annotation, False
    item = get_args(annotation)[0] if get_origin(annotation) is tuple else None
    if isinstance(item, type) and issubclass(item, _Table):
        return item, True
    return None, False


@dataclass(frozen=True)
class _Spot:
    """Where an error is: the table (``[run]``, ``[[pool.tiers]] #2 (h200)``) and its key."""

    table: type[_Table]
    label: str  # "" for the top of what was checked
    key: str = ""  # "" when the table itself is wrong
    field: FieldInfo | None = None
    element: bool = False  # an entry of an array of tables


def _locate(model: type[_Table], loc: tuple[int | str, ...], data: object) -> _Spot:
    table, path, label, element = model, [], "", False
    i = 0
    while i < len(loc):
        part = loc[i]
        info = table.model_fields.get(part) if isinstance(part, str) else None
        sub, array = _table_of(info)
        entry = i + 1 < len(loc) and isinstance(loc[i + 1], int)
        if sub is None or (array and not entry):
            return _Spot(table, label, str(part), info, element)
        path.append(str(part))
        data = data.get(part) if isinstance(data, Mapping) else None
        if array:
            i += 1
            n = int(loc[i])
            data = data[n] if isinstance(data, list | tuple) and n < len(data) else None
            name = data.get("name") if isinstance(data, Mapping) else None
            named = f" ({name})" if isinstance(name, str) and name else ""
            label, element = f"[[{'.'.join(path)}]] #{n + 1}{named}", True
        else:
            label, element = f"[{'.'.join(path)}]", False
        table = sub
        i += 1
    return _Spot(table, label, "", None, element)


def _lines(error: ValidationError, model: type[_Table], data: object, where: str) -> list[str]:
    lines: list[str] = []
    unknown: dict[str, tuple[int, _Spot, list[str]]] = {}  # label → (line, spot, keys)
    for err in error.errors():
        spot = _locate(model, err["loc"], data)
        if err["type"] == "extra_forbidden":  # one line per table for all its unknown keys
            if spot.label not in unknown:
                unknown[spot.label] = (len(lines), spot, [])
                lines.append("")
            unknown[spot.label][2].append(spot.key)
        else:
            lines.append(_say(err, spot))
    for at, spot, keys in unknown.values():
        lines[at] = _unknown(spot, keys)
    return [f"{where}: {line}" for line in lines]


_KINDS = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "tuple_type": "a list",
    "list_type": "a list",
}
_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _say(err: Any, spot: _Spot) -> str:
    """One error as a line: the table, the key, what is wrong and what to write."""
    kind, key = err["type"], spot.key
    head = f"{spot.label} {key}".strip()
    got = _show(err.get("input"), spot.field)
    if kind == "rule":  # our own sentence, which names its key
        if not spot.label:
            return str(err["msg"])
        return f"{spot.label}{'' if key else ':'} {err['msg']}"
    if kind in _KINDS:
        if not key:
            return f"{head} must be a table, got {got}; write it as a {head} section"
        return f"{head} must be {_KINDS[kind]}, got {got}{_example(spot)}"
    if kind in _BOUNDS or kind in ("too_short", "too_long"):  # a Field constraint
        if spot.field is not None and spot.field.description:
            return f"{head} {spot.field.description}, got {got}"
        return f"{head} {err['msg'].lower().replace('input should be', 'must be')}, got {got}"
    if kind == "missing":
        return f"{head} is required{_example(spot)}"
    return f"{head}: {err['msg']}, got {got}"


def _unknown(spot: _Spot, keys: list[str]) -> str:
    known = list(spot.table.model_fields)
    guesses = [m[0] for k in keys if (m := difflib.get_close_matches(k, known, n=1, cutoff=0.75))]
    listed = ", ".join(keys)
    if spot.table is Config:
        text = f"unknown table(s) {listed}; known: {', '.join(known)}"
        guesses = [f"[{g}]" for g in guesses]
    else:
        hint = spot.table._keys_hint or f"known keys: {', '.join(sorted(known))}"
        if spot.element:
            text = f"{spot.label}: unknown key(s) {listed}; {hint}"
        elif spot.label:
            text = f"unknown key(s) in {spot.label}: {listed}; {hint}"
        else:
            text = f"unknown key(s) {listed}; {hint}"
    return f"{text}; did you mean {', '.join(guesses)}?" if guesses else text


def _show(value: object, info: FieldInfo | None = None) -> str:
    """A value as the error line shows it: as the field reads it (5 → 5.0 for a float)."""
    if isinstance(value, tuple):
        value = list(value)
    floats = info is not None and info.annotation is float
    if floats and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return repr(value)


def _example(spot: _Spot) -> str:
    """``; write e.g. key = <value>`` from the field's example or its default ("" if none)."""
    if spot.field is None:
        return ""
    value = spot.field.examples[0] if spot.field.examples else spot.field.get_default()
    text = _toml(value)
    return f"; write e.g. {spot.key} = {text}" if text else ""


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return json.dumps(value.value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str) and value:
        return json.dumps(value)
    if isinstance(value, tuple | list) and value:
        return "[" + ", ".join(json.dumps(x) for x in value) + "]"
    return ""


def validate(cfg: Config, where: str = CONFIG_NAME) -> None:
    """Check every rule again (``model_copy`` skips them); raise :class:`ConfigError` if broken."""
    _checked(Config, cfg.model_dump(), where)


def with_overrides(cfg: Config, **run_fields: Any) -> Config:
    """Return ``cfg`` with the given [run] fields replaced (None values are ignored)."""
    changes = {k: v for k, v in run_fields.items() if v is not None}
    if not changes:
        return cfg
    where = "command-line options"
    run = _checked(RunConfig, {**cfg.run.model_dump(), **changes}, where)
    return _checked(Config, {**dict(cfg), "run": run}, where)


def with_recorded_run(cfg: Config, recorded: Mapping[str, Any]) -> Config:
    """``cfg`` with the [run] and [metric] settings a run was started with (for ``--resume``).

    A resumed run continues toward the same totals, with the same budget and keep rule,
    whatever autoswarm.toml says now; flags given to the resuming command still win.
    """
    rec = Config.from_record(recorded, base=cfg)
    new = {**dict(cfg), "run": rec.run, "metric": rec.metric}
    return _checked(Config, new, "the recorded run configuration")


def render_default_config(
    *,
    budget: float,
    timeout: float = 0.0,
    workers: int = 0,
    exclude: tuple[str, ...] = ("TIME_BUDGET",),
    sealed: tuple[str, ...] = (),
) -> str:
    """The autoswarm.toml written by ``autoswarm init`` (documented, every key shown).

    ``sealed``: the template's sealed data; with it, the metric is measured by the
    locked ``prepare.py evaluate`` (otherwise train.py's printed value is the metric).
    """
    evaluate = (
        f"""\
evaluate = ["{{python}}", "prepare.py", "evaluate"] # the locked evaluation of the saved model
test = "test_bpb"                  # held out: shown to you, never used or shown to a proposer
sealed = [{", ".join(f'"{s}"' for s in sealed)}]      # only the evaluation sees these (in the data cache)
tolerance = 1e-4                   # a printed val_bpb further than this (relative) is forged
"""
        if sealed
        else ""
    )
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
{evaluate}
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
    "AGENT_PLACEHOLDERS",
    "BACKENDS",
    "CONFIG_NAME",
    "HYBRID_KNOBS",
    "KNOB_STRATEGIES",
    "LLM_PROVIDERS",
    "STRATEGIES",
    "AgentConfig",
    "Config",
    "Duration",
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
