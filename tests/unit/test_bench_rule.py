"""`autoswarm bench rule`: the keep rule's Monte Carlo, re-measurements and validation included."""

from __future__ import annotations

from autoswarm.bench.rule import keep_rates, markdown


def test_keep_rates_follow_the_gain_and_revocation_only_takes_away() -> None:
    rows = keep_rates(
        earlier=(0,), gains=(0.0, 6.0), spreads=(1.0, 8.0), null_trials=1500, trials=300
    )
    by = {(r.gain, r.spread): r for r in rows}
    assert set(by) == {(0.0, 1.0), (0.0, 8.0), (6.0, 1.0)}
    for r in rows:
        assert 0.0 <= r.validated <= r.standing <= r.kept <= 1.0
        assert r.runs >= 1.0
    assert by[(6.0, 1.0)].kept > 0.5  # a real gain is kept
    assert by[(6.0, 1.0)].validated > 0.8 * by[(6.0, 1.0)].kept  # ... and stays kept
    assert by[(0.0, 1.0)].kept < 0.01
    table = markdown(rows)
    assert "standing after re-measurement" in table and "| 0 | 6 | 1× | 300 |" in table
