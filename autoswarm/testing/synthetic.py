"""Synthetic workspaces: a train.py that sleeps for the budget and prints a known metric.

The metric is a known function of the knobs plus seed noise, so search strategies,
the scheduler and backends can be tested and benchmarked with real processes (or
a fake backend) without torch. :func:`true_value` is the noise-free value, so a
benchmark can report the *true* quality of what a strategy found.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from autoswarm.config import render_default_config
from autoswarm.knobs import Literal, knobs_of

# The default synthetic objective: a bowl in log-LR and width with an interaction,
# a knob with no effect and a crash region (too large a learning rate diverges).
TRAIN_PY = '''\
"""Synthetic train.py: sleeps for the budget, prints a metric that is a known function of the knobs."""
import math, os, random, sys, time

LR = 0.01
WIDTH = 64
DEPTH = 4
WARMUP_RATIO = 0.1
USE_BIAS = False  # no effect at all

budget = float(os.environ.get("AUTOSWARM_BUDGET", "1"))
seed = int(os.environ.get("AUTOSWARM_SEED", "42"))
NOISE = float(os.environ.get("AUTOSWARM_SYNTH_NOISE", "0.002"))

def true_value(lr, width, depth, warmup):
    x = math.log2(lr / 0.04)            # best LR 0.04
    w = math.log2(width / 256)          # best width 256
    d = (depth - 6) / 2.0               # best depth 6
    return 1.0 + 0.02 * x * x + 0.03 * w * w + 0.01 * d * d + 0.01 * x * w + 0.02 * (warmup - 0.05) ** 2

if LR > 0.5:
    print("loss is nan: diverged", flush=True)
    sys.exit(1)
time.sleep(budget)
v = true_value(LR, WIDTH, DEPTH, WARMUP_RATIO) + random.Random(seed * 1000003 + 17).gauss(0, NOISE)
print("---")
print(f"val_bpb:          {v:.6f}")
print(f"training_seconds: {budget:.1f}")
print(f"peak_vram_mb:     {WIDTH * DEPTH * 4.0:.1f}")
print(f"depth:            {DEPTH}")
'''


def true_value(values: Mapping[str, Literal]) -> float:
    """The noise-free metric of the default synthetic objective."""
    lr, width, depth = float(values["LR"]), float(values["WIDTH"]), float(values["DEPTH"])
    warmup = float(values["WARMUP_RATIO"])
    x, w, d = math.log2(lr / 0.04), math.log2(width / 256), (depth - 6) / 2.0
    return (
        1.0
        + 0.02 * x * x
        + 0.03 * w * w
        + 0.01 * d * d
        + 0.01 * x * w
        + 0.02 * (warmup - 0.05) ** 2
    )


def value_of_files(files: Mapping[str, str], seed: int, noise: float = 0.002) -> float | None:
    """What the synthetic train.py would print for these files and seed (None = crash)."""
    values = {k: v.value for k, v in knobs_of(files).items()}
    if float(values["LR"]) > 0.5:
        return None
    return true_value(values) + random.Random(seed * 1000003 + 17).gauss(0, noise)


# The synthetic workspace with a locked evaluation (issue 16): train.py saves its "model"
# (the value it would print) where AUTOSWARM_MODEL says; prepare.py evaluates it against
# sealed data in the data cache (a test split that reads a little worse than validation).
SAVE_MODEL = """
if os.environ.get("AUTOSWARM_MODEL"):
    with open(os.environ["AUTOSWARM_MODEL"], "w") as f:
        f.write(repr(v))
"""

EVALUATED_PREPARE_PY = '''\
"""Synthetic prepare.py: `prepare.py` writes the sealed split; `prepare.py evaluate` scores."""
import json, os, pathlib, sys, time

CACHE = pathlib.Path(os.environ.get("AUTOSWARM_CACHE") or pathlib.Path.home() / ".cache" / "autoswarm")
SEALED = CACHE / "synthetic" / "sealed" / "synthetic-sealed-split.json"

def evaluate():
    t0 = time.time()
    try:
        split = json.loads(SEALED.read_text())
        value = float(pathlib.Path(os.environ["AUTOSWARM_MODEL"]).read_text())
    except (OSError, ValueError, KeyError) as e:
        print(f"prepare.py: error: cannot evaluate: {e}", file=sys.stderr)
        return 1
    print("---")
    print(f"val_bpb:          {value:.6f}")
    print(f"test_bpb:         {value + split['test_shift']:.6f}")
    print(f"eval_seconds:     {time.time() - t0:.1f}")
    return 0

if __name__ == "__main__":
    if sys.argv[1:] == ["evaluate"]:
        sys.exit(evaluate())
    SEALED.parent.mkdir(parents=True, exist_ok=True)
    SEALED.write_text(json.dumps({"test_shift": 0.01}))
'''


def make_workspace(
    directory: Path,
    *,
    train_py: str = TRAIN_PY,
    budget: float = 1.0,
    timeout: float = 0.0,
    baseline_repeats: int | None = None,
    evaluated: bool = False,
) -> Path:
    """A git workspace with the synthetic train.py and a no-op prepare.py.

    ``baseline_repeats``: written into its autoswarm.toml instead of the default.
    ``evaluated``: with a locked evaluation instead ([metric] evaluate): train.py also
    saves its model (:data:`SAVE_MODEL` is appended to ``train_py``), and prepare.py
    writes sealed data into the cache and evaluates the model (:data:`EVALUATED_PREPARE_PY`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.py").write_text(train_py + (SAVE_MODEL if evaluated else ""))
    (directory / "prepare.py").write_text(
        EVALUATED_PREPARE_PY
        if evaluated
        else '"""No data to prepare for the synthetic workspace."""\n'
    )
    (directory / "program.md").write_text("Synthetic workspace: change the knobs in train.py.\n")
    toml = render_default_config(
        budget=budget, timeout=timeout, sealed=("synthetic/sealed",) if evaluated else ()
    )
    if baseline_repeats is not None:
        toml = re.sub(
            r"(?m)^baseline_repeats = \d+", f"baseline_repeats = {baseline_repeats}", toml
        )
    (directory / "autoswarm.toml").write_text(toml)
    (directory / ".gitignore").write_text(".autoswarm/\nresults.tsv\n__pycache__/\n")
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        [
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@localhost",
            "commit",
            "-q",
            "-m",
            "synthetic workspace",
        ],
    ):
        subprocess.run(["git", *args], cwd=directory, check=True, capture_output=True)
    return directory


__all__ = [
    "EVALUATED_PREPARE_PY",
    "SAVE_MODEL",
    "TRAIN_PY",
    "make_workspace",
    "true_value",
    "value_of_files",
]
