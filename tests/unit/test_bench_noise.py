"""The noise benchmark (issue 13): heteroscedastic objectives, the head's true value,
false keeps and time-to-target on the end state."""

from __future__ import annotations

import hashlib
import math
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from autoswarm.bench.objectives import OBJECTIVES
from autoswarm.bench.report import noise_table, summarize_noise
from autoswarm.bench.simulate import SimResult, check_keeps, simulate, time_to_stay
from autoswarm.knobs import apply_values, knob_spaces

NEW = ("null", "lottery", "edge")
# A setting of each new objective where the noise is wider than at the start.
WIDE = {
    "null": {"EVAL_TOKENS": 16384, "MATRIX_LR": 0.06},
    "lottery": {"EVAL_BATCHES": 8, "LR": 0.03},
    "edge": {"MATRIX_LR": 0.04, "MODEL_DIM": 256},
}


def _printed(script: Path, seed: int) -> float:
    out = subprocess.run(
        [sys.executable, str(script)],
        env={"AUTOSWARM_BUDGET": "0", "AUTOSWARM_SEED": str(seed)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("val_bpb:")))


@pytest.mark.parametrize("name", NEW)
def test_a_variant_script_prints_what_measure_gives_where_the_noise_is_wide(
    name: str, tmp_path: Path
) -> None:
    obj = OBJECTIVES[name]
    text = apply_values({"train.py": obj.train_py()}, WIDE[name])["train.py"]
    script = tmp_path / "train.py"
    script.write_text(text)
    variant = hashlib.sha256(text.encode()).hexdigest()[:16]
    values = {**obj.start, **WIDE[name]}
    assert obj.sigma(values) > 2 * obj.noise  # the setting really is a noisier one
    for seed in (3, 11):
        expected = obj.measure(values, seed, variant)
        assert expected is not None
        assert _printed(script, seed) == pytest.approx(expected, abs=1e-6)


def test_the_old_objectives_scripts_are_unchanged_by_the_spread() -> None:
    # Their noise does not depend on the knobs: the script (and so every variant's hash,
    # and so the main search table's noise draws) is what it was.
    for name in ("bowl", "ridge", "wide", "far"):
        obj = OBJECTIVES[name]
        assert obj.spread == "1.0" and f".gauss(0.0, {obj.noise!r})\n" in obj.train_py()
        assert obj.sigma({}) == obj.noise


@pytest.mark.parametrize(
    ("name", "values", "factor"),
    [
        ("null", {"EVAL_TOKENS": 32768}, 2.0),
        ("null", {"EVAL_TOKENS": 16384}, 4.0),
        ("null", {"MATRIX_LR": 0.08}, 8.0),
        ("null", {"MATRIX_LR": 0.02}, 1.0),  # below 0.04 the LR is no lottery
        ("null", {"EVAL_TOKENS": 1024, "MATRIX_LR": 0.16}, 64.0),  # capped
        ("lottery", {"EVAL_BATCHES": 16}, 4.0),
        ("lottery", {"EVAL_BATCHES": 8}, 16.0),
        ("lottery", {"USE_BIAS": True, "LR": 0.04}, 1.0),
        ("edge", {"MATRIX_LR": 0.04}, 8.0),
        ("edge", {"MODEL_DIM": 512}, 1.0),
    ],
)
def test_the_spread_widens_the_measured_noise(
    name: str, values: dict[str, float], factor: float
) -> None:
    obj = OBJECTIVES[name]
    assert obj.sigma(values) == pytest.approx(obj.noise * factor)
    draws = [obj.measure(values, seed, "v") for seed in range(4000)]
    assert all(d is not None for d in draws)
    sd = statistics.stdev(d for d in draws if d is not None)
    assert sd == pytest.approx(obj.noise * factor, rel=0.06)


def test_null_is_the_same_everywhere_and_its_knobs_can_reach_wide_noise() -> None:
    obj = OBJECTIVES["null"]
    spaces = knob_spaces({"train.py": obj.train_py()})
    assert len(spaces) >= 6 and {"EVAL_TOKENS", "MATRIX_LR"} <= set(spaces)
    rng = random.Random(0)
    for _ in range(500):
        values: dict[str, bool | int | float | str] = {}
        for name, s in spaces.items():
            if s.kind == "bool":
                values[name] = rng.random() < 0.5
            elif s.kind in ("int", "pow2"):
                values[name] = rng.randint(int(s.low), int(s.high))
            else:
                values[name] = rng.uniform(s.low, s.high)
        assert obj.true_value(values) == obj.true_value({}) == 0.997
    # From the start, one-knob moves within the inferred ranges reach 4x and 64x noise.
    tokens, lr = spaces["EVAL_TOKENS"], spaces["MATRIX_LR"]
    assert obj.sigma({"EVAL_TOKENS": int(tokens.low)}) == pytest.approx(4 * obj.noise)
    assert obj.sigma({"MATRIX_LR": lr.high}) == pytest.approx(64 * obj.noise)
    # The other new objectives' spread knobs are searchable too.
    assert "EVAL_BATCHES" in knob_spaces({"train.py": OBJECTIVES["lottery"].train_py()})
    edge = knob_spaces({"train.py": OBJECTIVES["edge"].train_py()})["MATRIX_LR"]
    assert OBJECTIVES["edge"].sigma({"MATRIX_LR": edge.high}) == pytest.approx(8 * 0.002)


def test_lottery_has_real_gains_and_knobs_that_change_only_the_noise() -> None:
    obj = OBJECTIVES["lottery"]
    start = obj.true_value({})
    assert start is not None
    better = obj.true_value({"LR": 0.04, "WIDTH": 256, "DEPTH": 8})
    assert better is not None and better < start - 0.02
    assert obj.true_value({"EVAL_BATCHES": 8}) == start
    assert obj.true_value({"USE_BIAS": True}) == start


def test_time_to_target_counts_only_a_target_still_held_at_the_end() -> None:
    # Reached at 100, lost at 200 (a bad keep, or a revoked one), back at 300 for good.
    trace = [(0.0, 1.2), (100.0, 0.99), (200.0, 1.1), (300.0, 0.98), (400.0, 0.97)]
    assert time_to_stay(trace, 1.0) == 300.0
    assert time_to_stay(trace, 0.975) == 400.0
    assert time_to_stay(trace, 1.2) == 0.0
    # Reached early but ends above the target: not reached.
    assert time_to_stay([(0.0, 1.2), (50.0, 0.9), (60.0, 1.05)], 1.0) is None
    assert time_to_stay([], 1.0) is None


def test_false_keeps_are_counted_against_the_true_value_of_the_head_replaced() -> None:
    # Head: baseline #1 (1.0) -> #5 (0.99, a real gain) -> #7 (0.995: worse, false)
    # -> back to #5 (a revocation: no keep) -> #9 (0.99, equal: false).
    heads = [(0.0, 1, 1.0), (10.0, 5, 0.99), (20.0, 7, 0.995), (30.0, 5, 0.99), (40.0, 9, 0.99)]
    kept = {5: (10.0, 0.99), 7: (20.0, 0.995), 9: (40.0, 0.99), 12: (40.0, 0.98)}
    # #12 was kept at the same instant as #9 and superseded before the head was looked
    # at: it replaced the head of that instant other than itself.
    checks = {c.experiment_id: c for c in check_keeps(heads, kept, 1.0)}
    assert set(checks) == {5, 7, 9, 12}
    assert not checks[5].false and checks[5].replaced_true == 1.0
    assert checks[7].false and checks[7].replaced_true == 0.99
    assert checks[9].false and checks[9].replaced_true == 0.99
    assert not checks[12].false
    # A keep with no head before it replaced the baseline.
    (only,) = check_keeps([], {3: (5.0, 1.0)}, 1.0)
    assert only.false and only.replaced_true == 1.0


def _res(
    strategy: str, slots: int, trace: tuple[tuple[float, float], ...], **kw: float
) -> SimResult:
    fields: dict[str, object] = {
        "objective": "o",
        "strategy": strategy,
        "slots": slots,
        "rep": 0,
        "horizon_s": 8 * 3600,
        "experiments": 10,
        "busy_fraction": 1.0,
        "best_measured": trace[-1][1],
        "best_true": trace[-1][1],
        "baseline_true": trace[0][1],
        "trace": trace,
        "real_seconds": 0.0,
        "noise": 0.002,
        "reported_true": trace[-1][1],
    }
    fields.update(kw)
    return SimResult(**fields)  # type: ignore[arg-type]


def test_noise_rows_time_the_end_state_and_pool_false_keeps() -> None:
    seq = _res("greedy", 1, ((0.0, 1.2), (3600.0, 1.1), (7200.0, 1.0)), candidates=20, keeps=2)
    # Reaches the target at 300 s, falls off it, comes back at 1800 s and stays.
    par = _res(
        "auto",
        16,
        ((0.0, 1.2), (300.0, 0.99), (600.0, 1.05), (1800.0, 0.995)),
        candidates=400,
        keeps=10,
        false_keeps=6,
        best_measured=0.985,
        reported_se=0.004,
    )
    # Reaches it first (at 60 s) but ends above it: not reached.
    lost = _res(
        "auto", 64, ((0.0, 1.2), (60.0, 0.9), (900.0, 1.01)), candidates=1000, false_keeps=3
    )
    rows = {(r.strategy, r.slots): r for r in summarize_noise([seq, par, lost])}
    auto = rows[("auto", 16)]
    assert auto.reached == 1 and auto.time_to_target_h == pytest.approx(1800 / 3600)
    assert auto.speedup == pytest.approx(7200 / 1800)
    assert auto.gpu_hours_ratio == pytest.approx(16 * 1800 / 7200)
    assert auto.false_per_1000 == pytest.approx(15.0)
    assert auto.gap_sigma == pytest.approx(abs(0.985 - 0.995) / 0.002)
    assert auto.gap_se == pytest.approx(abs(0.985 - 0.995) / 0.004)
    far = rows[("auto", 64)]
    assert far.reached == 0 and far.speedup is None and far.false_per_1000 == pytest.approx(3.0)
    assert rows[("greedy", 1)].speedup == pytest.approx(1.0)
    table = noise_table(list(rows.values()))
    assert (
        "| o | auto | 16 | 1 | 400 | 0.9850 | 0.9950 | 5.0 | 2.5 | 15.0 (6 of 10 keeps) | 1/1 |"
        in table
    )
    assert "false keeps / 1000 candidates" in table and "0/1 | — | —× | —× |" in table


def test_on_null_every_keep_is_false_and_the_head_is_watched() -> None:
    # Whatever the keep rule: on null nothing is truly better, so every keep it makes is
    # false, and the head's true value never moves.
    r = simulate(OBJECTIVES["null"], "random", 4, horizon_s=2 * 3600, budget_s=300)
    assert r.candidates > 50
    assert r.false_keeps == r.keeps
    assert r.reported_true == r.best_true == 0.997
    assert all(v == 0.997 for _, v in r.trace)
    times = [t for t, _, _ in r.heads]
    assert times == sorted(times) and r.heads[0][1] == 1  # the first baseline run
    assert math.isfinite(r.best_measured)


def test_real_gains_move_the_watched_head() -> None:
    # Bowl's start is 40σ from its optimum: a rule keeps real gains, each seen as a head.
    r = simulate(OBJECTIVES["bowl"], "random", 4, horizon_s=3600, budget_s=300)
    assert r.keeps >= 1 and len(r.heads) >= 2
    assert r.false_keeps < r.keeps
    assert r.best_true < r.baseline_true
    assert [t for t, _ in r.trace] == sorted(t for t, _ in r.trace)


def test_bench_search_writes_the_noise_table(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from autoswarm.cli import app

    out = tmp_path / "b.md"
    out.write_text("# B\n\n<!-- bench:search -->\nmain table\n<!-- /bench:search -->\n")
    args = ["bench", "search", "--objectives", "null", "--strategies", "random", "--slots", "2"]
    args += ["--reps", "1", "--hours", "0.5", "--out", str(out)]
    args += ["--table", "noise", "--section", "noise-before"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "<!-- bench:search -->\nmain table\n<!-- /bench:search -->" in text
    block = text[
        text.index("<!-- bench:noise-before -->") : text.index("<!-- /bench:noise-before -->")
    ]
    assert "false keeps / 1000 candidates" in block
    assert "| null | random | 2 | 1 |" in block and "| null | greedy | 1 | 1 |" in block
