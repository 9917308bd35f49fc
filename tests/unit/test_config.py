"""autoswarm.toml parsing and validation: every mistake is a ConfigError that says what to fix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from autoswarm.config import (
    CONFIG_NAME,
    Config,
    PoolConfig,
    RunConfig,
    TierRole,
    _checked,
    load_config,
    parse_duration,
    render_default_config,
    with_overrides,
    with_recorded_run,
)
from autoswarm.errors import ConfigError
from autoswarm.types import Direction


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / CONFIG_NAME).write_text(text)
    return tmp_path


def default_with(tmp_path: Path, old: str, new: str) -> Path:
    """The default config with one line changed (so only that line can be at fault)."""
    text = render_default_config(budget=60)
    assert old in text, old
    return write(tmp_path, text.replace(old, new, 1))


# ---------------------------------------------------------------------------
# Happy path


def test_default_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, render_default_config(budget=90, timeout=300, workers=3)))
    assert cfg.run.budget == 90.0 and isinstance(cfg.run.budget, float)
    assert cfg.run.timeout == 300.0
    assert cfg.run.workers == 3
    assert cfg.run.effective_timeout == 300.0
    assert cfg.workspace.editable == ("train.py",)
    assert cfg.workspace.locked == ("prepare.py",)
    assert cfg.workspace.command == ("{python}", "train.py")
    assert cfg.workspace.prepare == ("{python}", "prepare.py")
    assert cfg.metric.name == "val_bpb" and cfg.metric.direction is Direction.MINIMIZE
    assert cfg.knobs.exclude == ("TIME_BUDGET",)
    assert cfg.knobs.overrides == {}
    # Everything else equals the dataclass defaults: the rendered file documents them.
    defaults = Config()
    for key in (
        "grace",
        "threads_per_worker",
        "strategy",
        "baseline_repeats",
        "seed",
        "keep_sigmas",
        "min_delta",
        "max_experiments",
        "time_limit",
        "log_max_bytes",
    ):
        assert getattr(cfg.run, key) == getattr(defaults.run, key), key


def test_rendered_exclude_round_trips(tmp_path: Path) -> None:
    text = render_default_config(budget=60, exclude=("TIME_BUDGET", "EVAL_BATCH_SIZE"))
    cfg = load_config(write(tmp_path, text))
    assert cfg.knobs.exclude == ("TIME_BUDGET", "EVAL_BATCH_SIZE")


def test_default_timeout_is_twice_budget_plus_grace(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, render_default_config(budget=60)))
    assert cfg.run.timeout == 0
    assert cfg.run.effective_timeout == 2 * 60 + 60


def test_durations_strings_and_knob_tables(tmp_path: Path) -> None:
    text = render_default_config(budget=60).replace("time_limit = 0 ", 'time_limit = "1h30m"')
    text = text.replace("budget = 60 ", 'budget = "2m"')
    text += "\n[knobs.LR]\nlow = 0.001\nhigh = 0.1\nlog = true\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.run.time_limit == 5400.0
    assert cfg.run.budget == 120.0
    assert cfg.knobs.overrides == {"LR": {"low": 0.001, "high": 0.1, "log": True}}


def test_maximize_metric(tmp_path: Path) -> None:
    cfg = load_config(default_with(tmp_path, 'direction = "minimize"', 'direction = "MAXIMIZE"'))
    assert cfg.metric.direction is Direction.MAXIMIZE


def test_minimal_file_uses_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg == Config()
    # Five baseline runs (σ̂ on 4 df before anything else is measured); a keep's bar
    # rests on as many fresh runs (best_runs 0 = automatic).
    assert cfg.run.baseline_repeats == 5 and cfg.run.best_runs == 0


# ---------------------------------------------------------------------------
# Errors: each names the key and says what to do


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert CONFIG_NAME in str(e.value)
    assert f"autoswarm init {tmp_path}" in str(e.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, "[run]\nbudget = = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / CONFIG_NAME) in msg
    assert "not valid TOML" in msg and "line 2" in msg
    assert "Fix the file" in msg
    assert e.value.__cause__ is not None  # wrapped at the boundary


def test_unknown_table(tmp_path: Path) -> None:
    write(tmp_path, render_default_config(budget=60) + "\n[runn]\nbudget = 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown table\(s\) runn; known: workspace, metric, run, knobs"
    ):
        load_config(tmp_path)


def test_unknown_key_lists_known_keys(tmp_path: Path) -> None:
    default_with(tmp_path, "grace = 60", "grace = 60\nbudgett = 5")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    msg = str(e.value)
    assert "unknown key(s) in [run]: budgett" in msg
    assert "known keys:" in msg and "budget" in msg and "time_limit" in msg


def test_unknown_scalar_in_knobs_points_to_per_knob_tables(tmp_path: Path) -> None:
    default_with(tmp_path, 'exclude = ["TIME_BUDGET"]', 'exclude = ["TIME_BUDGET"]\nLR = 0.1')
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) in \[knobs\]: LR.*\[knobs.MATRIX_LR\]"
    ):
        load_config(tmp_path)


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    write(tmp_path, "run = 3\n")
    with pytest.raises(ConfigError, match=r"\[run\] must be a table"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("workers = 0", 'workers = "two"', r"\[run\] workers must be an integer, got 'two'"),
        ("workers = 0", "workers = 2.5", r"\[run\] workers must be an integer, got 2.5"),
        ("workers = 0", "workers = true", r"\[run\] workers must be an integer, got True"),
        ("keep_sigmas = 2.0", 'keep_sigmas = "lots"', r"\[run\] keep_sigmas must be a number"),
        ("keep_sigmas = 2.0", "keep_sigmas = false", r"\[run\] keep_sigmas must be a number"),
        ('strategy = "auto"', "strategy = 3", r"\[run\] strategy must be a string, got 3"),
        (
            'editable = ["train.py"]',
            'editable = "train.py"',
            r"\[workspace\] editable must be a list of strings",
        ),
        (
            'command = ["{python}", "train.py"]',
            'command = ["python", 3]',
            r"\[workspace\] command must be a list of strings",
        ),
        (
            'direction = "minimize"',
            'direction = "down"',
            r"\[metric\] direction must be 'minimize' or 'maximize', got 'down'",
        ),
        (
            'exclude = ["TIME_BUDGET"]',
            'exclude = "TIME_BUDGET"',
            r"\[knobs\] exclude must be a list of knob names",
        ),
        ("budget = 60 ", 'budget = "soon"', r"cannot read duration 'soon'.*90s, 15m, 1h30m"),
    ],
)
def test_wrong_types(tmp_path: Path, old: str, new: str, expected: str) -> None:
    default_with(tmp_path, old, new)
    with pytest.raises(ConfigError, match=expected):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("budget = 60 ", "budget = 0 ", r"budget must be > 0 seconds, got 0.0"),
        ("budget = 60 ", "budget = -5 ", r"budget must be > 0 seconds"),
        (
            "timeout = 0 ",
            "timeout = 30 ",
            r"timeout \(30.0s\) must be at least the budget \(60.0s\), or 0 for 2 × budget \+ grace",
        ),
        ("timeout = 0 ", "timeout = -1 ", r"timeout \(-1.0s\) must be at least the budget"),
        ("workers = 0", "workers = -1", r"workers must be >= 0 \(0 = automatic\)"),
        ("threads_per_worker = 1", "threads_per_worker = 0", r"threads_per_worker must be >= 1"),
        ("baseline_repeats = 5", "baseline_repeats = 0", r"baseline_repeats must be >= 2"),
        # One run measures no noise: the keep rule needs two repeats at least.
        ("baseline_repeats = 5", "baseline_repeats = 1", r"baseline_repeats must be >= 2"),
        (
            "keep_sigmas = 2.0",
            "keep_sigmas = -1.0",
            r"keep_sigmas, confirm_sigmas, min_delta and false_keep_rate must be finite numbers "
            r">= 0 \(keep_sigmas = -1.0\)",
        ),
        (
            "confirm_sigmas = 1.0",
            "confirm_sigmas = nan",
            r"keep_sigmas, confirm_sigmas, min_delta and false_keep_rate must be finite numbers "
            r">= 0 \(confirm_sigmas = nan\)",
        ),
        (
            "false_keep_rate = 0.001",
            "false_keep_rate = 0.7",
            r"false_keep_rate must be between 0 and 0.5",
        ),
        (
            "false_keep_rate = 0.001",
            "false_keep_rate = 0.0",
            r"false_keep_rate must be between 0 and 0.5",
        ),
        ("final_runs = -1", "final_runs = -2", r"final_runs must be >= 0, or -1 for automatic"),
        ("max_experiments = 0", "max_experiments = -3", r"max_experiments must be >= 0"),
        ("log_max_bytes = 2000000", "log_max_bytes = 100", r"log_max_bytes must be at least 10000"),
        (
            'strategy = "auto"',
            'strategy = "genius"',
            r"unknown strategy 'genius'; choose one of: auto, greedy",
        ),
        (
            'editable = ["train.py"]',
            'editable = ["train.py", "prepare.py"]',
            r"prepare.py cannot be both editable and locked",
        ),
        ('editable = ["train.py"]', "editable = []", r"editable must list at least one file"),
        (
            'editable = ["train.py"]',
            'editable = ["../train.py"]',
            r"'../train.py' must be a path inside the workspace",
        ),
        (
            'locked = ["prepare.py"]',
            'locked = ["/etc/prepare.py"]',
            r"'/etc/prepare.py' must be a path inside the workspace",
        ),
        ('command = ["{python}", "train.py"]', "command = []", r"command must not be empty"),
    ],
)
def test_validation_errors_name_the_file_and_the_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    default_with(tmp_path, old, new)
    with pytest.raises(ConfigError, match=expected) as e:
        load_config(tmp_path)
    assert str(e.value).startswith(str(tmp_path / CONFIG_NAME))


@pytest.mark.parametrize("tag", ["has space", "-leading-dash", "a/b", "x~1", "ünï"])
def test_bad_tag(tmp_path: Path, tag: str) -> None:
    default_with(tmp_path, 'strategy = "auto"', f'strategy = "auto"\ntag = "{tag}"')
    with pytest.raises(
        ConfigError,
        match=r"tag .* must be letters, digits, '\.', '_' or '-' \(it names a git branch\)",
    ):
        load_config(tmp_path)


@pytest.mark.parametrize("tag", ["mar5", "exp.2-b_c", "A"])
def test_good_tag(tmp_path: Path, tag: str) -> None:
    default_with(tmp_path, 'strategy = "auto"', f'strategy = "auto"\ntag = "{tag}"')
    assert load_config(tmp_path).run.tag == tag


# ---------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("8H", 28800.0),
        (" 1h 30m ", 5400.0),
        ("1.5h", 5400.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "1x", "h", "15mm", "-5", "1h-30m", "1,5h"])
def test_parse_duration_rejects_bad_text(text: str) -> None:
    with pytest.raises(ConfigError, match=r"cannot read duration .*e\.g\. 90s, 15m, 1h30m"):
        parse_duration(text)


def test_parse_duration_rejects_negative_numbers() -> None:
    with pytest.raises(ConfigError, match="must not be negative"):
        parse_duration(-1)


# ---------------------------------------------------------------------------
# Command-line overrides


def test_with_overrides_ignores_none_and_returns_same_object() -> None:
    cfg = Config()
    assert with_overrides(cfg, budget=None, workers=None) is cfg


def test_with_overrides_replaces_run_fields_only() -> None:
    cfg = Config()
    new = with_overrides(cfg, budget=10.0, workers=None, max_experiments=7, tag="t1")
    assert (new.run.budget, new.run.workers, new.run.max_experiments, new.run.tag) == (
        10.0,
        cfg.run.workers,
        7,
        "t1",
    )
    assert new.workspace == cfg.workspace and new.metric == cfg.metric
    assert cfg.run.budget == 60.0  # frozen: the original is unchanged


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"budget": 0.0}, r"command-line options: budget must be > 0"),
        (
            {"budget": 100.0, "timeout": 50.0},
            r"command-line options: timeout \(50.0s\) must be at least",
        ),
        ({"strategy": "nope"}, r"command-line options: unknown strategy 'nope'"),
        ({"tag": "bad tag"}, r"command-line options: tag 'bad tag'"),
        ({"workers": -2}, r"command-line options: workers must be >= 0"),
    ],
)
def test_with_overrides_validates(fields: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        with_overrides(Config(), **fields)


def test_negative_time_limit_is_refused(tmp_path: Path) -> None:
    default_with(tmp_path, "time_limit = 0 ", "time_limit = -1 ")
    with pytest.raises(ConfigError, match=r"\[run\] time_limit must be >= 0 \(0 = unlimited\)"):
        load_config(tmp_path)


# ---------------------------------------------------------------------------
# One line per mistake: the file, the key path and what to write instead


def error_lines(tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    msg = str(e.value)
    assert "Traceback" not in msg and "pydantic" not in msg and "Input should" not in msg
    lines = msg.splitlines()
    assert all(line.startswith(f"{tmp_path / CONFIG_NAME}: ") for line in lines), lines
    return [line.removeprefix(f"{tmp_path / CONFIG_NAME}: ") for line in lines]


def test_a_wrong_type_names_the_key_and_an_example(tmp_path: Path) -> None:
    default_with(tmp_path, "seed = 42", 'seed = "42"')
    assert error_lines(tmp_path) == [
        "[run] seed must be an integer, got '42'; write e.g. seed = 42"
    ]
    default_with(tmp_path, 'strategy = "auto"', 'strategy = "auto"\ntag = 5')
    assert error_lines(tmp_path) == ['[run] tag must be a string, got 5; write e.g. tag = "mar5"']


def test_an_out_of_range_value_says_the_range(tmp_path: Path) -> None:
    default_with(tmp_path, "max_cost = 0 ", "max_cost = -2.5 ")
    assert error_lines(tmp_path) == ["[run] max_cost must be >= 0 (0 = unlimited), got -2.5"]
    write(tmp_path, '[llm]\nmodel = "m"\nhybrid_ratio = 1\n')
    assert error_lines(tmp_path) == [
        "[llm] hybrid_ratio must be strictly between 0 and 1 (the model's share of the slots), "
        "got 1.0"
    ]


def test_an_unknown_key_suggests_the_known_one(tmp_path: Path) -> None:
    default_with(tmp_path, "grace = 60", "grace = 60\nworkerz = 2\nbudgett = 5")
    (line,) = error_lines(tmp_path)
    assert line.startswith("unknown key(s) in [run]: workerz, budgett; known keys: ")
    assert line.endswith("; did you mean workers, budget?")
    write(tmp_path, "[metrics]\nname = 'loss'\n")
    assert error_lines(tmp_path) == [
        "unknown table(s) metrics; known: workspace, metric, run, knobs, pool, llm, agent, sandbox; "
        "did you mean [metric]?"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "time_limit = 0 ",
            'time_limit = "8 hours" ',
            "[run] time_limit: cannot read duration '8 hours': use seconds or a number with "
            "s/m/h/d, e.g. 90s, 15m, 1h30m",
        ),
        (
            "grace = 60",
            "grace = true",
            '[run] grace must be a number of seconds or a duration such as "90s", "15m" or '
            '"1h30m", got True',
        ),
    ],
)
def test_a_bad_duration_says_how_to_write_one(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    default_with(tmp_path, old, new)
    assert error_lines(tmp_path) == [expected]


def test_every_duration_key_takes_every_form(tmp_path: Path) -> None:
    text = render_default_config(budget=60)
    text = text.replace("budget = 60 ", "budget = 90.5 ").replace("grace = 60", 'grace = "1m"')
    text = text.replace("timeout = 0 ", 'timeout = "1h30m" ').replace(
        "time_limit = 0 ", 'time_limit = ""'
    )
    text += '\n[llm]\ntimeout = "2m"\n\n[agent]\ntimeout = "1h"\n'
    cfg = load_config(write(tmp_path, text))
    assert (cfg.run.budget, cfg.run.grace, cfg.run.timeout, cfg.run.time_limit) == (
        90.5,
        60.0,
        5400.0,
        0.0,
    )
    assert (cfg.llm.timeout, cfg.agent.timeout) == (120.0, 3600.0)
    assert all(isinstance(v, float) for v in (cfg.run.budget, cfg.run.grace, cfg.agent.timeout))


def test_a_nested_pool_error_names_the_tier(tmp_path: Path) -> None:
    write(
        tmp_path,
        '[pool]\nbackend = "ray"\n\n[[pool.tiers]]\nname = "h100"\n\n'
        '[[pool.tiers]]\nname = "h200"\nspeed = "fast"\nrole = "judge"\n',
    )
    assert error_lines(tmp_path) == [
        "[[pool.tiers]] #2 (h200) speed must be a number, got 'fast'; write e.g. speed = 1.0",
        "[[pool.tiers]] #2 (h200) role must be 'screen', 'validate' or 'any', got 'judge'",
    ]
    write(tmp_path, '[pool]\nbackend = "ray"\n\n[[pool.tiers]]\nname = "h100"\nslots = -1\n')
    assert error_lines(tmp_path) == [
        "[[pool.tiers]] #1 (h100) slots must be >= 1 (or 0 with max_slots > 0 for autoscaling), "
        "got -1"
    ]


def test_every_mistake_gets_its_own_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        '[run]\nworkers = "2"\nbudget = 0\nbudgett = 1\n\n[metric]\ndirection = "up"\n\n'
        '[pool]\nbackend = "slurm"\n',
    )
    assert error_lines(tmp_path) == [
        "[metric] direction must be 'minimize' or 'maximize', got 'up'",
        "[run] budget must be > 0 seconds, got 0.0",
        "[run] workers must be an integer, got '2'; write e.g. workers = 0",
        "unknown key(s) in [run]: budgett; known keys: "
        + ", ".join(sorted(RunConfig.model_fields))
        + "; did you mean budget?",
        "[pool] backend 'slurm' is unknown; choose one of: local, ray, skypilot",
    ]


def test_flags_are_checked_with_exact_types() -> None:
    with pytest.raises(
        ConfigError, match=r"^command-line options: workers must be an integer, got '2'"
    ):
        with_overrides(Config(), workers="2")
    with pytest.raises(ConfigError, match=r"^command-line options: unknown key\(s\) budgett; "):
        with_overrides(Config(), budgett=1.0)


def test_sections_are_frozen() -> None:
    cfg = Config()
    with pytest.raises(ValueError, match="frozen"):
        cfg.run.budget = 5.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        cfg.pool = PoolConfig()  # type: ignore[misc]


# ---------------------------------------------------------------------------
# The run's record in the ledger: one to_record, one from_record


def full_config(tmp_path: Path) -> Config:
    text = render_default_config(budget=30, workers=2).replace(
        'strategy = "auto"', 'strategy = "hybrid"'
    )
    text += (
        "\n[knobs.LR]\nlow = 0.001\nhigh = 0.1\nlog = true\n"
        '\n[llm]\nmodel = "m"\ntemperature = 0.5\nprice_in_per_mtok = 2\n'
        '\n[pool]\nbackend = "ray"\n[pool.options]\naddress = "auto"\n'
        '\n[[pool.tiers]]\nname = "h100"\naccelerator = "H100:1"\nslots = 3\nrole = "screen"\n'
        "options = {resources = {h100 = 1}}\n"
        '\n[[pool.tiers]]\nname = "h200"\naccelerator = "H200:1"\nrole = "VALIDATE"\nprice_per_hour = 4\n'
    )
    return load_config(write(tmp_path, text))


def test_record_round_trips_through_json(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    record = cfg.to_record()
    assert json.loads(json.dumps(record)) == record  # plain JSON, as the ledger stores it
    assert record["workspace"]["editable"] == ["train.py"]
    assert record["metric"]["direction"] == "minimize"
    assert record["knobs"] == {
        "exclude": ["TIME_BUDGET"],
        "overrides": {"LR": {"low": 0.001, "high": 0.1, "log": True}},
    }
    assert [t["role"] for t in record["pool"]["tiers"]] == ["screen", "validate"]
    assert record["llm"]["api_key_env"] is None and record["llm"]["temperature"] == 0.5
    back = Config.from_record(json.loads(json.dumps(record)))
    assert back == cfg
    assert back.pool.tiers[1].role is TierRole.VALIDATE and back.workspace.locked == ("prepare.py",)


def test_from_record_ignores_unknown_keys_and_fills_missing_ones() -> None:
    assert Config.from_record({}) == Config()
    rec = Config.from_record(
        {
            "run": {"budget": 5.0, "retired_key": 1},
            "gone_table": {},
            "pool": {"tiers": [{"name": "a", "new": 2}]},
        }
    )
    assert rec.run.budget == 5.0 and rec.run.workers == 0 and rec.pool.tiers[0].name == "a"
    base = with_overrides(Config(), workers=3, seed=7)
    rec = Config.from_record({"run": {"budget": 5.0}, "metric": {"name": "loss"}}, base=base)
    assert (rec.run.budget, rec.run.workers, rec.run.seed, rec.metric.name) == (5.0, 3, 7, "loss")


def test_from_record_refuses_a_broken_record() -> None:
    with pytest.raises(
        ConfigError, match=r"^the recorded run configuration: \[run\] baseline_repeats must be >= 2"
    ):
        Config.from_record({"run": {"baseline_repeats": 1}})


def test_with_recorded_run_takes_run_and_metric_only(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    recorded = with_overrides(Config(), budget=7.0, strategy="greedy").to_record()
    recorded["metric"]["direction"] = "maximize"
    new = with_recorded_run(cfg, recorded)
    assert (new.run.budget, new.run.strategy, new.metric.direction) == (
        7.0,
        "greedy",
        Direction.MAXIMIZE,
    )
    assert new.pool == cfg.pool and new.llm == cfg.llm and new.knobs == cfg.knobs


@pytest.mark.parametrize(
    ("key", "value"),
    [("budget", math.inf), ("timeout", 1e10), ("time_limit", "400d"), ("grace", "1000d")],
)
def test_durations_too_long_to_arm_a_timer_are_refused(key: str, value: object) -> None:
    """--budget inf or --timeout 1e10 used to pass, and the deadline thread died of an
    OverflowError: the run went on with no hard kill."""
    with pytest.raises(ConfigError, match=rf"\[run\] {key} must be at most 366 days"):
        _checked(Config, {"run": {key: value}}, "autoswarm.toml")


@pytest.mark.parametrize("tag", ["a..b", "x.lock", "run."])
def test_tags_git_cannot_use_as_a_branch_are_refused_before_anything_runs(tag: str) -> None:
    """They passed the check and pygit2 then raised InvalidSpecError."""
    import pygit2

    with pytest.raises(ConfigError, match="cannot name a git branch"):
        _checked(Config, {"run": {"tag": tag}}, "autoswarm.toml")
    assert not pygit2.reference_is_valid_name(f"refs/heads/autoswarm/{tag}")
    assert pygit2.reference_is_valid_name("refs/heads/autoswarm/a.b-c_1")
    assert _checked(Config, {"run": {"tag": "a.b-c_1"}}, "autoswarm.toml").run.tag == "a.b-c_1"


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"choices": 5}, "LR: choices must be a non-empty list"),
        ({"choices": []}, "LR: choices must be a non-empty list"),
        ({"low": "abc"}, "LR: low must be a finite number, got 'abc'"),
        ({"high": float("nan")}, "LR: high must be a finite number"),
        ({"low": 0.1, "high": 0.01}, r"LR: low \(0.1\) must be below high \(0.01\)"),
        ({"lo": 0.1}, r"LR: unknown key\(s\) lo; known keys: choices, high, kind, log, low"),
        ({"log": "yes"}, "LR: log must be true or false"),
        ({"kind": "float"}, 'LR: kind must be "pow2" or "int"'),
    ],
)
def test_knob_tables_are_checked_when_the_file_is_read(
    tmp_path: Path, table: dict, says: str
) -> None:
    """``choices = 5`` (a TypeError) and ``low = "abc"`` (a ValueError) surfaced only when a
    proposer first read them, after the baselines had run."""
    text = render_default_config(budget=1) + "\n[knobs.LR]\n"
    for key, value in table.items():
        text += f"{key} = {json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else 'nan'}\n"
    (tmp_path / CONFIG_NAME).write_text(text)
    with pytest.raises(ConfigError, match=rf"\[knobs\] {says}"):
        load_config(tmp_path)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """A latin-1 byte in a comment was a UnicodeDecodeError traceback."""
    (tmp_path / CONFIG_NAME).write_bytes(
        render_default_config(budget=1).encode() + b"# r\xe9sum\xe9 of the settings\n"
    )
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte \d+: invalid continuation"):
        load_config(tmp_path)


@pytest.mark.parametrize("name", ["", "val bpb", "val-bpb", "1x"])
def test_a_metric_name_must_be_a_summary_key(name: str) -> None:
    """An empty metric name was accepted (every run then had "no metric")."""
    with pytest.raises(ConfigError, match="is not a summary-block key"):
        _checked(Config, {"metric": {"name": name}}, "autoswarm.toml")
    assert _checked(Config, {"metric": {"test": ""}}, "autoswarm.toml").metric.test == ""
