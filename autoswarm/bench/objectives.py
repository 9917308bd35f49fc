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
        return eval(code, {"math": math, "__builtins__": {}}, dict(values))

    def true_value(self, values: Mapping[str, Literal]) -> float | None:
        """The noise-free metric, or None inside the crash region."""
        merged = {**self.start, **values}
        if self._eval(self.crash, merged):
            return None
        return float(self._eval(self.formula, merged))  # type: ignore[arg-type]

    def measure(self, values: Mapping[str, Literal], seed: int, variant: str) -> float | None:
        """What one run prints: the true value plus noise fixed by (variant, seed)."""
        v = self.true_value(values)
        if v is None:
            return None
        h = hashlib.sha256(f"{self.name}|{variant}|{seed}".encode()).digest()
        return v + random.Random(int.from_bytes(h[:8], "big")).gauss(0.0, self.noise)

    def train_py(self) -> str:
        """A runnable train.py: knobs as literals, sleeps for the budget, prints the summary."""
        knobs = "\n".join(f"{k} = {format_literal(v)}" for k, v in self.start.items())
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
value += random.Random(int.from_bytes(h[:8], "big")).gauss(0.0, {self.noise!r})
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
    )
}


__all__ = ["OBJECTIVES", "Objective"]
