"""The cpu template's locked evaluation through the real loop (issue 16): real train.py.

Variants that lie about their number, each run by the scheduler on the local backend with
the template's ``[metric] evaluate`` (``prepare.py evaluate`` scoring the model train.py
exported): the three-line forger, one that evaluates on a subset of the validation split
and one that scales the loss it prints are ``forged``, never kept; the honest baseline's
printed and evaluated values agree. In the sandbox, a variant that searches the machine
for the validation and test token files finds none, and the validation split is sealed
to train.py (it prints no val_bpb), while the evaluation still measures it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from autoswarm.backends.factory import experiment_sandbox
from autoswarm.backends.local import LocalBackend
from autoswarm.config import load_config, with_overrides
from autoswarm.init import init_workspace
from autoswarm.ledger import Ledger
from autoswarm.sandbox import find_bwrap
from autoswarm.scheduler import Scheduler
from autoswarm.testing.proposers import Edit, ScriptedProposer, replace_in, write_file
from autoswarm.types import Experiment, Kind, Status
from autoswarm.workspace import Workspace

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

EVAL_LINE = "            val_bpb = evaluate_bpb(model, SEQ_LEN, EVAL_BATCH_SIZE)"
PRINT_LINE = '    print(f"val_bpb:          {val_bpb:.6f}")'

# The first eighth of the validation targets, scored by the template's own function.
SUBSET = """            import prepare as _p

            _val = _p.load_prepared().tokens("val")[: _p.EVAL_TOKENS[_p.SOURCE] // 8 + 1]
            val_bpb = _p.bits_per_byte(
                model, _val, tokenizer.token_bytes(), SEQ_LEN, EVAL_BATCH_SIZE
            )"""

# Looks for the token files of every split, then trains as usual.
PEEK = """
import json as _json
_found = []
for _root in (os.environ.get("AUTOSWARM_CACHE", "/nonexistent"), os.path.expanduser("~"), "/tmp"):
    for _dir, _dirs, _files in os.walk(_root):
        _found += [os.path.join(_dir, f) for f in _files if f.endswith(".bin")]
print("PEEK>" + _json.dumps(_found) + "<PEEK", flush=True)
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_template(
    root: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    steps: Sequence[tuple[str, Edit]],
    *,
    sandbox: bool,
) -> tuple[Ledger, list[Experiment]]:
    monkeypatch.setenv("AUTOSWARM_CACHE", str(cache))
    ws_dir = init_workspace(root / "ws", template="cpu")
    if not sandbox:
        with (ws_dir / "autoswarm.toml").open("a") as f:
            f.write('\n[sandbox]\nmode = "off"\n')
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
        subprocess.run([*git, "commit", "-qam", "no sandbox"], cwd=ws_dir, check=True)
    subprocess.run([sys.executable, "prepare.py"], cwd=ws_dir, check=True, capture_output=True)
    cfg = with_overrides(
        load_config(ws_dir),
        budget=2.0,
        timeout=60.0,
        baseline_repeats=2,
        workers=2,
        final_runs=0,
    )
    ws = Workspace(ws_dir, cfg)
    ledger = Ledger(ws.ledger_path)
    backend = LocalBackend(
        2,
        gpus=[],
        sandbox=experiment_sandbox(cfg, workspace_root=ws.root, state_dir=ws.state_dir),
    )
    sched = Scheduler(
        workspace=ws, ledger=ledger, backend=backend, proposer=ScriptedProposer(steps), config=cfg
    )
    out = sched.run(tag="ev")
    return ledger, ledger.experiments(out.run.id)


def test_forgers_on_the_cpu_template_are_forged_and_never_kept(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No sandbox: the validation split is readable, so a variant can evaluate on part of it.
    ledger, rows = run_template(
        tmp_path,
        cache,
        monkeypatch,
        [
            ("three-line forger", write_file("train.py", 'print("---")\nprint("val_bpb: 0.500000")\n')),
            ("subset of val", replace_in("train.py", EVAL_LINE, SUBSET)),
            ("scaled loss", replace_in("train.py", PRINT_LINE, PRINT_LINE.replace(
                "{val_bpb:.6f}", "{val_bpb * 0.99:.6f}"))),
        ],
        sandbox=False,
    )  # fmt: skip
    by = {e.description: e for e in rows}
    for name in ("three-line forger", "subset of val", "scaled loss"):
        e = by[name]
        assert e.status is Status.FORGED, (name, e.status, e.reason)
        assert e.reason.startswith("forged: train.py printed val_bpb"), e.reason
        assert e.value("val_bpb") is None and "printed_val_bpb" in e.metrics
    assert by["three-line forger"].metrics["printed_val_bpb"] == 0.5
    sub, scaled = by["subset of val"], by["scaled loss"]
    assert sub.metrics["printed_val_bpb"] != pytest.approx(sub.metrics["evaluated_val_bpb"], 1e-4)
    ratio = scaled.metrics["printed_val_bpb"] / scaled.metrics["evaluated_val_bpb"]
    assert ratio == pytest.approx(0.99, abs=2e-6)
    assert not [e for e in rows if e.kind is Kind.CANDIDATE and e.status is Status.KEEP]
    # The honest baseline: printed (train.py sees val without a sandbox) == evaluated.
    base = [e for e in rows if e.kind is Kind.BASELINE and e.status is Status.KEEP]
    assert len(base) >= 2
    for e in base:
        assert e.value("val_bpb") == pytest.approx(e.metrics["printed_val_bpb"], abs=1e-6)
        assert e.metrics["eval_seconds"] > 0 and e.metrics["export_seconds"] > 0
    held = {h.id: h.sealed for h in ledger.sealed_metrics(rows[0].run_id)}
    assert all(0.5 < held[e.id]["test_bpb"] < 10 for e in base)
    ledger.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux-only")
def test_in_the_sandbox_train_py_never_sees_the_sealed_splits(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert find_bwrap()[0] is not None, find_bwrap()[1]
    ledger, rows = run_template(
        tmp_path,
        cache,
        monkeypatch,
        [("peek", replace_in("train.py", "T_START = time.time()", "T_START = time.time()" + PEEK))],
        sandbox=True,
    )
    peek = next(e for e in rows if e.description == "peek")
    log = Path(peek.log_path).read_text()
    found = json.loads(log.split("PEEK>", 1)[1].split("<PEEK", 1)[0])
    assert found and all(Path(p).name == "train.bin" for p in found), found  # only train's
    assert peek.status in (Status.KEEP, Status.DISCARD), (peek.status, peek.reason)
    # train.py saw no validation split: it printed no val_bpb; the evaluation measured it.
    assert "the validation split is sealed" in log and "printed_val_bpb" not in peek.metrics
    assert peek.value("val_bpb") is not None
    assert os.path.exists(cache / "stdlib" / "sealed" / "val.bin")  # there all along
    ledger.close()
