"""`autoswarm effects` and the effects block of `status --json` over a factorial run."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from autoswarm.cli import app
from autoswarm.proposers.factorial import FactorialProposer
from tests.conftest import Harness


def test_effects_command_reports_the_factorial_waves(harness: Harness) -> None:
    sched, _, ledger = harness.scheduler(FactorialProposer(seed=0), slots=8, max_experiments=40)
    sched.run(tag="f")
    ledger.close()
    runner = CliRunner()
    out = runner.invoke(app, ["effects", "--workspace", str(harness.root), "--json"])
    assert out.exit_code == 0, out.output
    rec = json.loads(out.output)
    terms = {t["term"]: t for t in rec["terms"]}
    assert rec["se_source"] == "sigma" and rec["runs"] > 8
    assert "WIDTH" in terms
    # In the first wave WIDTH is far below its optimum (64 vs 256): widening must lower
    # val_bpb. (Later waves sit around better widths, so the pooled estimate may differ.)
    first = runner.invoke(
        app, ["effects", "--workspace", str(harness.root), "--json", "--wave", "1"]
    )
    assert first.exit_code == 0, first.output
    wave1 = {t["term"]: t for t in json.loads(first.output)["terms"]}
    assert wave1["WIDTH"]["estimate"] < 0 and wave1["WIDTH"]["p_value"] < 0.05
    status = json.loads(
        runner.invoke(app, ["status", "--workspace", str(harness.root), "--json"]).output
    )
    assert {t["term"] for t in status["effects"]["terms"]} == set(terms)
    table = runner.invoke(app, ["effects", "--workspace", str(harness.root)])
    assert table.exit_code == 0 and "WIDTH" in table.output


def test_effects_without_waves_says_how_to_get_them(harness: Harness) -> None:
    from autoswarm.testing.proposers import ScriptedProposer

    sched, _, ledger = harness.scheduler(ScriptedProposer([]), slots=1)
    sched.run(tag="g")
    ledger.close()
    out = CliRunner().invoke(app, ["effects", "--workspace", str(harness.root)])
    assert out.exit_code == 0 and "--strategy factorial" in out.output
