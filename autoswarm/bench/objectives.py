"""Synthetic objectives for the search benchmark: known functions of the knobs.

Each :class:`Objective` is a metric to minimise (a val_bpb stand-in) that is a known
function of a handful of knobs, with interactions, a crash region and at least one
knob that does nothing, plus seed noise. The same objective is used two ways:

* :meth:`Objective.train_py` writes a real ``train.py`` that sleeps for the budget
  and prints the summary block (for benchmarks with real processes);
* :meth:`Objective.measure` gives the value that script would print, in-process,
  for the simulated backend (hours of research in seconds).

:meth:`Objective.true_value` is the noise-free value, so a benchmark reports the
*true* quality of what a strategy found, not a lucky measurement. Several shapes
exist so that no strategy is tuned to a single function.

Noise can depend on the knobs (heteroscedastic): a run's seed noise has standard
deviation ``noise * spread``, ``spread`` being an expression over the knobs like
``formula`` (``"1.0"``: the same noise everywhere). A smaller evaluation set, a
learning rate at the edge of stability, make a run noisier without making it better:
``null``, ``lottery`` and ``edge`` are built to show whether a keep rule is fooled by
such variants (issue 13). On ``null`` nothing is better than the baseline, so every
keep is a false one.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import CodeType

from autoswarm.knobs import Literal, format_literal


@dataclass(frozen=True)
class Objective:
    """A metric as a Python expression over knob names (``math`` is in scope)."""

    name: str
    start: Mapping[str, Literal]
    formula: str
    crash: str = "False"
    noise: float = 0.002
    spread: str = "1.0"  # a run's noise is noise * spread (an expression over the knobs)
    notes: str = ""
    _code: dict[str, CodeType] = field(default_factory=dict, compare=False, repr=False)

    def __getstate__(self) -> dict[str, object]:
        # Compiled code does not pickle; a copy sent to a worker process compiles anew.
        return {**self.__dict__, "_code": {}}

    def _eval(self, expr: str, values: Mapping[str, Literal]) -> object:
        code = self._code.get(expr)
        if code is None:
            code = compile(expr, f"<objective {self.name}>", "eval")
            self._code[expr] = code
        scope = {"math": math, "max": max, "min": min, "abs": abs, "__builtins__": {}}
        return eval(code, scope, dict(values))

    def true_value(self, values: Mapping[str, Literal]) -> float | None:
        """The noise-free metric, or None inside the crash region."""
        merged = {**self.start, **values}
        if self._eval(self.crash, merged):
            return None
        return float(self._eval(self.formula, merged))  # type: ignore[arg-type]

    def sigma(self, values: Mapping[str, Literal]) -> float:
        """The standard deviation of one run's noise at ``values``: ``noise * spread``."""
        return self.noise * float(self._eval(self.spread, {**self.start, **values}))  # type: ignore[arg-type]

    def measure(self, values: Mapping[str, Literal], seed: int, variant: str) -> float | None:
        """What one run prints: the true value plus noise fixed by (variant, seed)."""
        v = self.true_value(values)
        if v is None:
            return None
        h = hashlib.sha256(f"{self.name}|{variant}|{seed}".encode()).digest()
        return v + random.Random(int.from_bytes(h[:8], "big")).gauss(0.0, self.sigma(values))

    def train_py(self) -> str:
        """A runnable train.py: knobs as literals, sleeps for the budget, prints the summary."""
        knobs = "\n".join(f"{k} = {format_literal(v)}" for k, v in self.start.items())
        # The same arithmetic as sigma(); written only where the noise depends on the knobs,
        # so the homoscedastic objectives' scripts (and their variants' noise) are unchanged.
        sigma = repr(self.noise) if self.spread == "1.0" else f"{self.noise!r} * ({self.spread})"
        return f'''"""Synthetic train.py ({self.name}): sleeps for the budget, prints a known metric."""
import hashlib, math, os, random, sys, time

{knobs}

budget = float(os.environ.get("AUTOSWARM_BUDGET", "1"))
seed = int(os.environ.get("AUTOSWARM_SEED", "42"))
if {self.crash}:
    print("loss is nan: diverged", flush=True)
    sys.exit(1)
time.sleep(budget)
value = {self.formula}
variant = hashlib.sha256(open(__file__, "rb").read()).hexdigest()[:16]
h = hashlib.sha256(f"{self.name}|{{variant}}|{{seed}}".encode()).digest()
value += random.Random(int.from_bytes(h[:8], "big")).gauss(0.0, {sigma})
print("---")
print(f"val_bpb:          {{value:.6f}}")
print(f"training_seconds: {{budget:.1f}}")
print("peak_vram_mb:     1024.0")
'''


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            name="bowl",
            notes="a bowl in log LR and log width with an LR×width interaction; USE_BIAS does nothing",
            start={"LR": 0.01, "WIDTH": 64, "DEPTH": 4, "WARMUP_RATIO": 0.1, "USE_BIAS": False},
            formula=(
                "1.0 + 0.02 * math.log2(LR / 0.04) ** 2 + 0.03 * math.log2(WIDTH / 256) ** 2"
                " + 0.01 * ((DEPTH - 6) / 2) ** 2 + 0.01 * math.log2(LR / 0.04) * math.log2(WIDTH / 256)"
                " + 0.02 * (WARMUP_RATIO - 0.05) ** 2"
            ),
            crash="LR > 0.5",
        ),
        Objective(
            name="ridge",
            notes="the best LR grows with the batch size (a ridge); too high an LR diverges; DROPOUT does nothing",
            start={"LR": 0.002, "BATCH_SIZE": 32, "WEIGHT_DECAY": 0.3, "DEPTH": 6, "DROPOUT": 0.1},
            formula=(
                "0.98 + 0.03 * math.log2(LR / (0.004 * math.sqrt(BATCH_SIZE / 32))) ** 2"
                " + 0.012 * math.log2(BATCH_SIZE / 128) ** 2 + 0.2 * (WEIGHT_DECAY - 0.1) ** 2"
                " + 0.006 * (DEPTH - 8) ** 2 / 4"
            ),
            crash="LR > 0.05 * math.sqrt(BATCH_SIZE / 32)",
        ),
        Objective(
            name="wide",
            notes="eight knobs, width dominates (as in the seed's run); a too-large model runs out of memory",
            start={
                "MODEL_DIM": 128,
                "N_HEAD": 4,
                "MLP_RATIO": 4,
                "MATRIX_LR": 0.02,
                "EMBEDDING_LR": 0.2,
                "WARMDOWN_RATIO": 0.3,
                "WEIGHT_DECAY": 0.0,
                "DEPTH": 8,
            },
            formula=(
                "0.97 + 0.04 * math.log2(MODEL_DIM / 768) ** 2 + 0.004 * math.log2(N_HEAD / 8) ** 2"
                " + 0.005 * (MLP_RATIO - 4) ** 2 / 4 + 0.015 * math.log2(MATRIX_LR / 0.04) ** 2"
                " + 0.008 * math.log2(EMBEDDING_LR / 0.6) ** 2 + 0.05 * (WARMDOWN_RATIO - 0.5) ** 2"
                " + 0.0 * WEIGHT_DECAY + 0.004 * (DEPTH - 8) ** 2 / 4"
                " + 0.006 * math.log2(MODEL_DIM / 768) * math.log2(MATRIX_LR / 0.04)"
            ),
            crash="MODEL_DIM * DEPTH > 12000",
        ),
        Objective(
            name="far",
            notes=(
                "ten knobs, all far from their optimum (a long climb, as in a recipe nobody"
                " tuned yet); the best LR depends on batch size and width; DROPOUT does nothing"
            ),
            start={
                "MATRIX_LR": 0.002,
                "EMBEDDING_LR": 0.02,
                "UNEMBEDDING_LR": 0.0005,
                "MODEL_DIM": 64,
                "DEPTH": 2,
                "N_HEAD": 1,
                "WARMDOWN_RATIO": 0.0,
                "BATCH_SIZE": 8,
                "SEQ_LEN": 128,
                "DROPOUT": 0.1,
            },
            formula=(
                "0.96 + 0.01 * math.log2(MATRIX_LR / (0.04 * math.sqrt(BATCH_SIZE / 64)"
                " * math.sqrt(512 / MODEL_DIM))) ** 2"
                " + 0.006 * math.log2(EMBEDDING_LR / 0.6) ** 2"
                " + 0.004 * math.log2(UNEMBEDDING_LR / 0.004) ** 2"
                " + 0.012 * math.log2(MODEL_DIM / 1024) ** 2 + 0.003 * (DEPTH - 12) ** 2 / 4"
                " + 0.004 * math.log2(N_HEAD / 8) ** 2 + 0.04 * (WARMDOWN_RATIO - 0.6) ** 2"
                " + 0.006 * math.log2(BATCH_SIZE / 64) ** 2 + 0.005 * math.log2(SEQ_LEN / 1024) ** 2"
                " + 0.0 * DROPOUT"
            ),
            crash="MODEL_DIM * DEPTH > 20000 or MATRIX_LR > 0.3",
        ),
        Objective(
            name="null",
            notes=(
                "a pure null: every setting is as good as the baseline (0.997). EVAL_TOKENS only"
                " widens the noise (a smaller evaluation is noisier: 2x at 32768, 4x at 16384,"
                " 16x at 4096); MATRIX_LR above 0.04 makes runs a lottery (8x at 0.08, 64x at"
                " 0.16); the two multiply, up to 64x; the other knobs do nothing. Every keep is"
                " a false keep"
            ),
            start={
                "MATRIX_LR": 0.04,
                "EMBEDDING_LR": 0.6,
                "MODEL_DIM": 512,
                "DEPTH": 8,
                "WARMUP_RATIO": 0.0,
                "WEIGHT_TYING": False,
                "EVAL_TOKENS": 65536,
            },
            formula="0.997",
            spread="min(64.0, (65536 / EVAL_TOKENS) * max(1.0, MATRIX_LR / 0.04) ** 3)",
        ),
        Objective(
            name="lottery",
            notes=(
                "a bowl with real gains and an LR x width interaction, plus EVAL_BATCHES,"
                " which only changes the noise ((32 / EVAL_BATCHES) ** 2: 4x at 16, 16x at 8, at most"
                " 64x),"
                " and USE_BIAS, which does nothing"
            ),
            start={
                "LR": 0.02,
                "WIDTH": 128,
                "DEPTH": 6,
                "WARMUP_RATIO": 0.1,
                "EVAL_BATCHES": 32,
                "USE_BIAS": False,
            },
            formula=(
                "1.0 + 0.02 * math.log2(LR / 0.04) ** 2 + 0.02 * math.log2(WIDTH / 256) ** 2"
                " + 0.01 * ((DEPTH - 8) / 2) ** 2 + 0.01 * math.log2(LR / 0.04) * math.log2(WIDTH / 256)"
                " + 0.02 * (WARMUP_RATIO - 0.05) ** 2 + 0.0 * EVAL_BATCHES + 0.0 * USE_BIAS"
            ),
            crash="LR > 0.5",
            spread="min(64.0, (32 / EVAL_BATCHES) ** 2)",
        ),
        Objective(
            name="edge",
            notes=(
                "the best learning rate is also the noisiest (training near the edge of"
                " stability): the noise grows as (MATRIX_LR / 0.01) ** 1.5 above the start,"
                " 8x at the optimum 0.04, 23x at 0.08, 64x at 0.16; past 0.25 it diverges; DROPOUT"
                " does nothing"
            ),
            start={
                "MATRIX_LR": 0.01,
                "EMBEDDING_LR": 0.1,
                "MODEL_DIM": 128,
                "DEPTH": 4,
                "WARMDOWN_RATIO": 0.2,
                "DROPOUT": 0.0,
            },
            formula=(
                "0.97 + 0.012 * math.log2(MATRIX_LR / 0.04) ** 2 + 0.006 * math.log2(EMBEDDING_LR / 0.4) ** 2"
                " + 0.02 * math.log2(MODEL_DIM / 512) ** 2 + 0.004 * (DEPTH - 8) ** 2 / 4"
                " + 0.04 * (WARMDOWN_RATIO - 0.4) ** 2"
                " + 0.004 * math.log2(MATRIX_LR / 0.04) * math.log2(MODEL_DIM / 512) + 0.0 * DROPOUT"
            ),
            crash="MATRIX_LR > 0.25 or MODEL_DIM * DEPTH > 12000",
            spread="min(64.0, max(1.0, MATRIX_LR / 0.01) ** 1.5)",
        ),
    )
}


# What `bench search` runs by default: the main table (speed to a target) on the
# objectives whose noise is the same everywhere, the noise table (issue 13) on the
# ones built to fool a keep rule.
SEARCH_OBJECTIVES = ("bowl", "ridge", "wide", "far")
NOISE_OBJECTIVES = ("null", "lottery", "edge")


__all__ = ["NOISE_OBJECTIVES", "OBJECTIVES", "SEARCH_OBJECTIVES", "Objective"]
