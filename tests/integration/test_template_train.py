"""Integration tests for the workspace templates: prepare.py then train.py as real processes.

The slow tests prepare the stdlib source into a tmp cache and run train.py with a
2-second budget on one thread, as the orchestrator's own tests will: once handing its
model to `prepare.py evaluate` (whose val_bpb must be the one train.py printed), once
with the sealed directory emptied as the orchestrator's sandbox does.
"""

from __future__ import annotations

import ast
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

TEMPLATES = Path(__file__).resolve().parents[2] / "autoswarm" / "templates"
SUMMARY_KEYS = [
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "export_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
    "depth",
]


def knob_values(source: str) -> dict[str, object]:
    """Module-level UPPER_CASE = literal assignments, as a knob editor sees them."""
    knobs = {}
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            name = node.targets[0].id
            if name.isupper() and isinstance(node.value, ast.Constant):
                knobs[name] = node.value.value
    return knobs


def set_knobs(source: str, **values: object) -> str:
    for name, value in values.items():
        source, count = re.subn(
            rf"^{name} = [^#\n]*", f"{name} = {value!r}  ", source, flags=re.MULTILINE
        )
        assert count == 1, name
    return source


def make_workspace(tmp_path: Path, template: str = "cpu", **knobs: object) -> Path:
    workspace = tmp_path / f"ws-{template}"
    workspace.mkdir()
    shutil.copy(TEMPLATES / "prepare.py", workspace)
    source = (TEMPLATES / template / "train.py").read_text()
    (workspace / "train.py").write_text(set_knobs(source, **knobs) if knobs else source)
    return workspace


def run_train(
    workspace: Path, cache: Path, seed: int = 42, budget: float = 2, model: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "AUTOSWARM_CACHE": str(cache),
        "AUTOSWARM_BUDGET": str(budget),
        "AUTOSWARM_SEED": str(seed),
        "AUTOSWARM_THREADS": "1",
        **({"AUTOSWARM_MODEL": str(model)} if model else {}),
    }
    return subprocess.run(
        [sys.executable, "train.py"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def parse_summary(stdout: str) -> dict[str, float]:
    lines = stdout.splitlines()
    assert "---" in lines, stdout
    block = lines[len(lines) - 1 - lines[::-1].index("---") + 1 :]
    return {key.strip(): float(value) for key, value in (line.split(":", 1) for line in block)}


# ---------------------------------------------------------------------------
# Fast checks on the template files themselves


def test_gpu_template_differs_from_cpu_only_in_knob_values() -> None:
    cpu = (TEMPLATES / "cpu" / "train.py").read_text()
    gpu = (TEMPLATES / "gpu" / "train.py").read_text()
    cpu_knobs, gpu_knobs = knob_values(cpu), knob_values(gpu)
    assert cpu_knobs.keys() == gpu_knobs.keys()
    assert set_knobs(gpu, **cpu_knobs) == set_knobs(cpu, **cpu_knobs)
    assert (
        gpu_knobs["DEPTH"] == 8 and gpu_knobs["SEQ_LEN"] == 2048 and gpu_knobs["TIME_BUDGET"] == 300
    )
    assert cpu_knobs["TIME_BUDGET"] == 60 and cpu_knobs["COMPILE"] is False


def test_knobs_are_plain_literals() -> None:
    knobs = knob_values((TEMPLATES / "cpu" / "train.py").read_text())
    for name in ("DEPTH", "MODEL_DIM", "SEQ_LEN", "BATCH_SIZE", "MATRIX_LR", "EMBEDDING_LR", "WEIGHT_DECAY",
                 "WARMUP_RATIO", "WARMDOWN_RATIO", "ADAM_BETA1", "ADAM_BETA2", "TIME_BUDGET"):  # fmt: skip
        assert name in knobs
    assert all(isinstance(v, int | float | bool | str) for v in knobs.values())


def test_prepare_source_is_one_rewritable_line() -> None:
    text = (TEMPLATES / "prepare.py").read_text()
    assert len(re.findall(r'^SOURCE = "stdlib"$', text, flags=re.MULTILINE)) == 1


# ---------------------------------------------------------------------------
# Real processes


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cache")
    prepare = [sys.executable, str(TEMPLATES / "prepare.py"), "--cache-dir", str(directory)]
    subprocess.run(prepare, check=True, capture_output=True, timeout=120)
    again = subprocess.run(prepare, check=True, capture_output=True, text=True, timeout=60)
    assert "already prepared" in again.stderr  # idempotent
    return directory


def run_evaluate(workspace: Path, cache: Path, model: Path) -> subprocess.CompletedProcess[str]:
    """What the orchestrator runs after training: the locked evaluator, in its own process."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "AUTOSWARM_CACHE": str(cache),
        "AUTOSWARM_MODEL": str(model),
        "AUTOSWARM_RUN_DIR": str(model.parent),
        "AUTOSWARM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "prepare.py", "evaluate"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_cpu_train_prints_summary_and_hands_over_its_model(tmp_path: Path, cache: Path) -> None:
    workspace = make_workspace(tmp_path)
    model = tmp_path / "run" / "model.pt2"
    model.parent.mkdir()
    result = run_train(workspace, cache, seed=42, model=model)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = parse_summary(result.stdout)
    assert list(summary) == SUMMARY_KEYS
    assert math.isfinite(summary["val_bpb"]) and 0 < summary["val_bpb"] < 8
    assert summary["num_steps"] >= 1 and summary["depth"] == 4
    assert 2 <= summary["training_seconds"] < 10
    assert 0 < summary["export_seconds"] < 30
    assert summary["mfu_percent"] == 0.0 and summary["peak_vram_mb"] > 0
    assert result.stdout.count("\nstep ") <= 25  # progress lines are capped

    # The template's own model passes the evaluator's checks, and scores what it printed.
    assert model.is_file() and not list(model.parent.glob("*.tmp*"))
    evaluated = run_evaluate(workspace, cache, model)
    assert evaluated.returncode == 0, evaluated.stderr
    scores = parse_summary(evaluated.stdout)
    assert list(scores) == ["val_bpb", "test_bpb", "eval_seconds"]
    assert f"val_bpb:          {summary['val_bpb']:.6f}" in evaluated.stdout.splitlines()
    assert math.isfinite(scores["test_bpb"]) and scores["test_bpb"] != scores["val_bpb"]

    other = run_train(workspace, cache, seed=43)
    assert other.returncode == 0, other.stderr[-2000:]
    assert parse_summary(other.stdout)["val_bpb"] != summary["val_bpb"]
    assert parse_summary(other.stdout)["export_seconds"] == 0.0  # no AUTOSWARM_MODEL: no export


@pytest.mark.slow
def test_train_with_sealed_splits_hidden(tmp_path: Path, cache: Path) -> None:
    # The orchestrator's sandbox: the cache as it is, with an empty directory over sealed/.
    sandboxed = tmp_path / "sandboxed-cache" / "stdlib"
    (sandboxed / "sealed").mkdir(parents=True)
    for name in ("manifest.json", "tokenizer.json", "train.bin"):
        (sandboxed / name).symlink_to(cache / "stdlib" / name)
    result = run_train(make_workspace(tmp_path), sandboxed.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    marker = lines.index("---")
    assert "val_bpb is evaluated by the orchestrator" in lines[marker - 1]
    assert "validation split is sealed" in lines[marker - 1]
    assert list(parse_summary(result.stdout)) == [k for k in SUMMARY_KEYS if k != "val_bpb"]


@pytest.mark.slow
def test_gpu_template_runs_on_cpu_with_tiny_knobs(tmp_path: Path, cache: Path) -> None:
    tiny = {"DEPTH": 2, "MODEL_DIM": 64, "HEAD_DIM": 32, "SEQ_LEN": 128, "BATCH_SIZE": 4,
            "TOTAL_BATCH_TOKENS": 1024, "COMPILE": False, "EVAL_BATCH_SIZE": 8}  # fmt: skip
    workspace = make_workspace(tmp_path, "gpu", **tiny)
    result = run_train(workspace, cache)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = parse_summary(result.stdout)
    assert summary["depth"] == 2 and math.isfinite(summary["val_bpb"])
    assert "(2 x 4 x 128)" in result.stdout  # gradient accumulation derived at run time


@pytest.mark.slow
def test_missing_data_fails_with_hint(tmp_path: Path) -> None:
    result = run_train(make_workspace(tmp_path), tmp_path / "empty-cache")
    assert result.returncode != 0
    assert "python prepare.py" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_nan_loss_stops_the_run(tmp_path: Path, cache: Path) -> None:
    workspace = make_workspace(tmp_path)
    train = workspace / "train.py"
    train.write_text(
        re.sub(
            r"^MATRIX_LR = .*$", 'MATRIX_LR = float("nan")', train.read_text(), flags=re.MULTILINE
        )
    )
    result = run_train(workspace, cache)
    assert result.returncode == 1
    assert "NaN" in result.stdout
    assert "\n---\n" not in result.stdout
