"""The research loop end to end on the real `cpu` template: real training processes.

A few-second budget, 2 slots, baseline repeats, and scripted variants that must
end as keep (after its fresh-seed confirmations), discard, crash (syntax error, runtime
error), crash (hang, killed at the timeout) and rejected (edits the locked prepare.py),
each with its reason.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoswarm.backends.local import LocalBackend
from autoswarm.config import load_config, with_overrides
from autoswarm.init import init_workspace
from autoswarm.ledger import Ledger
from autoswarm.proposers.base import Context
from autoswarm.scheduler import Scheduler
from autoswarm.testing.proposers import ScriptedProposer, replace_in, write_file
from autoswarm.types import Kind, Proposal, Status
from autoswarm.workspace import Workspace

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def handicapped_workspace(root: Path, cache: Path) -> Path:
    """A cpu workspace whose committed baseline has crippled learning rates (a keep to find)."""
    ws = init_workspace(root / "ws", template="cpu")
    train = (ws / "train.py").read_text()
    for knob in ("MATRIX_LR = 0.02", "EMBEDDING_LR = 0.05", "UNEMBEDDING_LR = 0.004"):
        assert knob in train
    train = train.replace("MATRIX_LR = 0.02", "MATRIX_LR = 1e-06").replace(
        "EMBEDDING_LR = 0.05", "EMBEDDING_LR = 1e-06"
    )
    train = train.replace("UNEMBEDDING_LR = 0.004", "UNEMBEDDING_LR = 1e-06")
    (ws / "train.py").write_text(train)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "commit", "-qam", "cripple the learning rates"], cwd=ws, check=True)
    env = {**os.environ, "AUTOSWARM_CACHE": str(cache)}
    subprocess.run([sys.executable, "prepare.py"], cwd=ws, env=env, check=True, capture_output=True)
    return ws


class StepsOnTheBest(ScriptedProposer):
    """A scripted proposer whose next step waits until it applies to the best.

    A step that edits what a keep changed (``replace_in`` of a value only the kept variant
    has) is held back while that variant is still being confirmed, as a proposer that
    builds on the best would.
    """

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        self.contexts.append(ctx)
        out: list[Proposal] = []
        while self.steps and len(out) < n:
            desc, edit = self.steps[0]
            try:
                files = dict(edit(ctx.best_files))
            except AssertionError:  # not on the best yet
                break
            self.steps.pop(0)
            out.append(
                Proposal(description=desc, files=files, parent=ctx.best_commit, proposer=self.name)
            )
        return out


# The keep rule's test (Welch, one-sided p < false_keep_rate) has the degrees of freedom of
# its sides: σ̂ from the baseline repeats, and the variant's own runs when its spread is
# wider than the baseline's (a crippled model's metric hardly moves from seed to seed; a
# training one moves with the steps a loaded machine allows). Five repeats and four
# confirmations give each side 4, so the restored learning rates are kept on a loaded
# machine too.
REPEATS, CONFIRMS = 5, 4


def test_real_loop_on_cpu_template(tmp_path: Path, cache: Path) -> None:
    ws_dir = handicapped_workspace(tmp_path, cache)
    cfg = with_overrides(
        load_config(ws_dir),
        budget=2.0,
        timeout=25.0,
        baseline_repeats=REPEATS,
        confirm_runs=CONFIRMS,
        workers=2,
    )
    ws = Workspace(ws_dir, cfg)
    ledger = Ledger(ws.ledger_path)
    restore = lambda f: {  # noqa: E731
        "train.py": f["train.py"]
        .replace("MATRIX_LR = 1e-06", "MATRIX_LR = 0.02")
        .replace("EMBEDDING_LR = 1e-06", "EMBEDDING_LR = 0.05")
        .replace("UNEMBEDDING_LR = 1e-06", "UNEMBEDDING_LR = 0.004")
    }
    proposer = StepsOnTheBest(
        [
            ("restore learning rates", restore),
            ("syntax error", replace_in("train.py", "DEPTH = 4", "DEPTH = = 4")),
            ("edit prepare.py", write_file("prepare.py", "EVAL_TOKENS = 1\n")),
            (
                "hang",
                replace_in(
                    "train.py", "T_START = time.time()", "T_START = time.time()\ntime.sleep(1000)"
                ),
            ),
            (
                "runtime error",
                replace_in(
                    "train.py",
                    "T_START = time.time()",
                    "T_START = time.time()\nraise RuntimeError('boom')",
                ),
            ),
            (
                "MATRIX_LR 0.02 -> 1e-06",
                replace_in("train.py", "MATRIX_LR = 0.02", "MATRIX_LR = 1e-06"),
            ),
        ]
    )
    backend = LocalBackend(2, gpus=[], log_max_bytes=cfg.run.log_max_bytes)
    sched = Scheduler(
        workspace=ws,
        ledger=ledger,
        backend=backend,
        proposer=proposer,
        config=cfg,
        environ={**os.environ, "AUTOSWARM_CACHE": str(cache)},
    )
    out = sched.run(tag="it")
    rows = ledger.experiments(out.run.id)
    exps = {e.description: e for e in rows}
    assert len(exps) == len(rows)
    # The baseline repeats: seeds 42, 43, ...; a repeat slowed by other load on the machine
    # (far fewer steps) is left out of the noise (discard, with the reason) and re-run.
    base = sorted((e for e in rows if e.kind is Kind.BASELINE), key=lambda e: e.id)
    assert [e.seed for e in base] == list(range(42, 42 + len(base)))
    assert sum(e.status is Status.KEEP for e in base) == REPEATS
    assert all(
        e.status is Status.KEEP or (e.status is Status.DISCARD and "slowed" in e.reason)
        for e in base
    ), [(e.status, e.reason) for e in base]
    assert sched.baseline is not None and sched.baseline.sigma >= 0

    keep = exps["restore learning rates"]
    assert keep.status is Status.KEEP, keep.reason
    assert keep.value("val_bpb") < sched.baseline.mean - 0.5
    # Kept on its fresh-seed confirmations, not on its first run; its bar is their mean.
    confirms = [e for e in rows if e.kind is Kind.CONFIRM and e.rerun_of == keep.id]
    fresh = [e for e in confirms if not e.is_remeasure]
    assert len(fresh) >= CONFIRMS and all(e.commit == keep.commit for e in confirms)
    assert all(e.status is Status.KEEP and e.seed > keep.seed for e in confirms)
    ev = keep.evidence.as_meta()
    assert ev["selected"] == [keep.value("val_bpb")] and len(ev["fresh"]) == len(confirms)
    assert ev["p"] < ev["alpha"] and ev["replicated_mean"] < sched.baseline.mean - 0.5
    assert set(keep.metrics) >= {
        "val_bpb",
        "training_seconds",
        "total_seconds",
        "peak_vram_mb",
        "mfu_percent",
        "total_tokens_M",
        "num_steps",
        "num_params_M",
        "depth",
    }
    assert exps["MATRIX_LR 0.02 -> 1e-06"].status is Status.DISCARD
    assert exps["MATRIX_LR 0.02 -> 1e-06"].parent == keep.commit

    assert (
        exps["syntax error"].status is Status.CRASH
        and "syntax error" in exps["syntax error"].reason
    )
    assert (
        exps["edit prepare.py"].status is Status.REJECTED
        and "locked" in exps["edit prepare.py"].reason
    )
    assert exps["hang"].status is Status.CRASH and exps["hang"].reason.startswith("timeout")
    assert 24.0 <= exps["hang"].duration_s <= 40.0
    assert exps["runtime error"].status is Status.CRASH
    assert "RuntimeError: boom" in exps["runtime error"].reason

    # Two slots really ran at the same time.
    ran = sorted((e for e in exps.values() if e.started_at), key=lambda e: e.started_at)
    assert any(a.finished_at > b.started_at for a, b in itertools.pairwise(ran))
    assert {e.slot for e in ran} == {0, 1}
    # The branch head is the kept variant; results.tsv has every finished experiment.
    assert "MATRIX_LR = 0.02" in ws.read_file("refs/heads/autoswarm/it", "train.py")
    tsv = (ws_dir / "results.tsv").read_text().splitlines()
    assert tsv[1].split("\t")[3] == base[0].status.tsv and tsv[1].endswith("baseline")
    assert len(tsv) == 1 + len(exps)
    # Logs exist per experiment and the snapshot directories were cleaned up.
    assert all(Path(e.log_path).is_file() for e in ran)
    assert not any((ws.state_dir / "runs").glob("*"))
