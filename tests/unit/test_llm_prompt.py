"""Prompt building and reply parsing of the llm proposer, and the [llm] config table."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoswarm.config import LLMConfig, load_config, render_default_config, with_overrides
from autoswarm.errors import ConfigError, LockedFileError, PatchError
from autoswarm.proposers.llm import price_of
from autoswarm.proposers.prompt import (
    PromptInput,
    build_prompt,
    history_lines,
    parse_reply,
    repair_prompt,
)
from autoswarm.testing.synthetic import TRAIN_PY
from autoswarm.types import Direction, Experiment, Kind, Status

FILES = {"train.py": TRAIN_PY}
EDITABLE = ("train.py",)

GOOD_DIFF = """\
DESCRIPTION: double the learning rate
```diff
--- a/train.py
+++ b/train.py
@@ -3,3 +3,3 @@
\x20
-LR = 0.01
+LR = 0.02
 WIDTH = 64
```
"""


def exp(i: int, status: Status, desc: str, value: float | None = None, **kw: object) -> Experiment:
    return Experiment(
        id=i,
        run_id=1,
        kind=kw.pop("kind", Kind.CANDIDATE),  # type: ignore[arg-type]
        status=status,
        parent="p",
        commit="c",
        description=desc,
        proposer="llm",
        metrics={"val_bpb": value} if value is not None else {},
        reason=str(kw.pop("reason", "")),
    )


# ---------------------------------------------------------------------------
# parse_reply


def test_diff_reply_applies() -> None:
    r = parse_reply(GOOD_DIFF, FILES, EDITABLE)
    assert r.description == "double the learning rate"
    assert "LR = 0.02\n" in r.files["train.py"]
    assert set(r.files) == {"train.py"}


def test_bare_diff_and_bold_description_are_tolerated() -> None:
    text = GOOD_DIFF.replace("DESCRIPTION:", "**Description:**").replace("```diff\n", "")
    text = text.replace("```\n", "")
    r = parse_reply(text, FILES, EDITABLE)
    assert r.description == "double the learning rate"
    assert "LR = 0.02" in r.files["train.py"]


def test_whole_file_block_with_path() -> None:
    new = TRAIN_PY.replace("WIDTH = 64", "WIDTH = 128")
    for opener in ("```python train.py", "```python:train.py", "FILE: train.py\n```python"):
        r = parse_reply(f"DESCRIPTION: wider\n{opener}\n{new}```\n", FILES, EDITABLE)
        assert r.files == {"train.py": new}
        assert r.description == "wider"


def test_snippet_without_path_is_not_a_whole_file() -> None:
    text = "DESCRIPTION: x\n```python\nLR = 0.02\n```\n"
    with pytest.raises(PatchError, match="no edit"):
        parse_reply(text, FILES, EDITABLE)


def test_missing_description_falls_back() -> None:
    r = parse_reply(GOOD_DIFF.split("\n", 1)[1], FILES, EDITABLE)
    assert r.description and "\n" not in r.description


def test_diff_that_does_not_apply_is_a_patch_error() -> None:
    bad = GOOD_DIFF.replace("-LR = 0.01", "-LR = 0.03")
    with pytest.raises(PatchError, match="does not apply"):
        parse_reply(bad, FILES, EDITABLE)


def test_locked_file_is_refused() -> None:
    diff = GOOD_DIFF.replace("train.py", "prepare.py")
    with pytest.raises(LockedFileError, match=r"prepare\.py"):
        parse_reply(diff, {**FILES, "prepare.py": TRAIN_PY}, EDITABLE)
    with pytest.raises(LockedFileError, match=r"prepare\.py"):
        parse_reply("DESCRIPTION: x\n```python prepare.py\nX = 1\n```\n", FILES, EDITABLE)


def test_syntax_error_is_refused_with_line() -> None:
    text = GOOD_DIFF.replace("+LR = 0.02", "+LR = = 0.02")
    with pytest.raises(PatchError, match=r"does not parse.*line 4"):
        parse_reply(text, FILES, EDITABLE)


def test_no_edit_and_no_change_are_refused() -> None:
    with pytest.raises(PatchError, match="no edit"):
        parse_reply("I think we should raise the learning rate.", FILES, EDITABLE)
    with pytest.raises(PatchError, match="changes nothing"):
        parse_reply(f"DESCRIPTION: same\n```python train.py\n{TRAIN_PY}```\n", FILES, EDITABLE)


def test_repair_prompt_carries_the_error() -> None:
    text = repair_prompt("the diff does not apply: patch failed: train.py:4", EDITABLE)
    assert "patch failed: train.py:4" in text and "train.py" in text


# ---------------------------------------------------------------------------
# build_prompt


def test_prompt_has_program_files_history_and_running() -> None:
    history = [
        exp(1, Status.KEEP, "baseline", 1.0, kind=Kind.BASELINE),
        exp(2, Status.DISCARD, "LR 0.01 -> 0.02", 1.01),
        exp(3, Status.CRASH, "LR 1.0", reason="exit code 1: " + "x" * 1000 + " loss is nan"),
        exp(4, Status.REJECTED, "edit prepare", reason="prepare.py is locked"),
    ]
    running = [exp(5, Status.RUNNING, "WIDTH 64 -> 128")]
    text = build_prompt(
        PromptInput(
            program="Be bold about width.",
            files=FILES,
            editable=EDITABLE,
            locked=("prepare.py",),
            best_value=1.0,
            noise_sigma=0.002,
            history=history,
            running=running,
            pending=["DEPTH 4 -> 6"],
            variant=1,
            variants=3,
        )
    )
    assert "Be bold about width." in text
    assert "LR = 0.01" in text  # the whole file
    assert "#2 discard: LR 0.01 -> 0.02 -- val_bpb 1.01" in text
    assert "#3 crash: LR 1.0" in text and "loss is nan" in text
    assert "x" * 400 not in text  # only the tail of a crash reason
    assert "prepare.py is locked" in text
    assert "WIDTH 64 -> 128" in text and "DEPTH 4 -> 6" in text
    assert "number 2" in text and "Locked (never change): prepare.py" in text
    assert "lower" in text


def test_prompt_is_bounded() -> None:
    history = [exp(i, Status.DISCARD, f"idea number {i} " + "y" * 100, 1.0) for i in range(1, 400)]
    text = build_prompt(
        PromptInput(program="p" * 50_000, files=FILES, editable=EDITABLE, history=history),
        max_chars=12_000,
    )
    assert len(text) <= 12_000
    assert "idea number 399" in text  # the most recent survive
    assert "LR = 0.01" in text
    lines = history_lines(history, "val_bpb", limit=10)
    assert len(lines) == 11 and "389 older" in lines[0]


def test_prompt_for_maximize() -> None:
    text = build_prompt(
        PromptInput(program="", files=FILES, editable=EDITABLE, direction=Direction.MAXIMIZE)
    )
    assert "higher" in text


# ---------------------------------------------------------------------------
# Prices and config


def test_price_table() -> None:
    assert price_of("claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert price_of("gpt-4o-mini-2024") == (0.15, 0.6)
    assert price_of("openai/gpt-4o") == (2.5, 10.0)
    assert price_of("qwen2.5-coder:7b") is None


def write_cfg(tmp_path: Path, llm: str, strategy: str = "llm") -> Path:
    text = render_default_config(budget=1).replace('strategy = "auto"', f'strategy = "{strategy}"')
    (tmp_path / "autoswarm.toml").write_text(text + "\n[llm]\n" + llm)
    return tmp_path


def test_llm_table_defaults_and_key_env(tmp_path: Path) -> None:
    cfg = load_config(write_cfg(tmp_path, 'model = "claude-sonnet-4-5"\ntimeout = "2m"\n'))
    assert cfg.run.strategy == "llm"
    assert cfg.llm.key_env == "ANTHROPIC_API_KEY" and cfg.llm.timeout == 120.0
    cfg = load_config(write_cfg(tmp_path, 'provider = "openai"\nmodel = "m"\ntemperature = 0\n'))
    assert cfg.llm.key_env == "OPENAI_API_KEY" and cfg.llm.temperature == 0.0
    cfg = load_config(
        write_cfg(
            tmp_path,
            'provider = "openai"\nmodel = "m"\napi_key_env = ""\nbase_url = "http://127.0.0.1:8000/v1"\n'
            "price_in_per_mtok = 1\n",
        )
    )
    assert cfg.llm.key_env == "" and cfg.llm.price_in_per_mtok == 1.0
    assert LLMConfig(provider="openai", api_key_env="MY_KEY").key_env == "MY_KEY"


@pytest.mark.parametrize(
    ("llm", "match"),
    [
        ('provider = "gemini"\nmodel = "m"\n', "provider 'gemini' is unknown"),
        ("max_tokens = 10\n", "model is required"),
        ('model = "m"\napi_key_env = "sk-ant-123"\n', "must name an environment variable"),
        ('model = "m"\napi_key_env = 5\n', "api_key_env must be the name"),
        ('model = "m"\ntemperature = 3\n', "temperature"),
        ('model = "m"\nbase_url = "localhost:8000"\n', "base_url"),
        ('model = "m"\nmax_tokens = 50000\n', "21000"),
        ('model = "m"\nconcurrency = 0\n', "concurrency"),
        ('model = "m"\nprice_out_per_mtok = -1\n', "price_out_per_mtok"),
        ('model = "m"\nhybrid_ratio = 1.5\n', "hybrid_ratio"),
        ('model = "m"\nfoo = 1\n', "unknown key"),
    ],
)
def test_llm_table_errors(tmp_path: Path, llm: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write_cfg(tmp_path, llm))


def test_strategy_flag_needs_a_model(tmp_path: Path) -> None:
    cfg = load_config(write_cfg(tmp_path, "", strategy="auto"))
    with pytest.raises(ConfigError, match="model is required"):
        with_overrides(cfg, strategy="llm")
