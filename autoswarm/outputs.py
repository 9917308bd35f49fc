"""Read-only views of the ledger: results.tsv, ``status`` and ``results`` records.

results.tsv keeps autoresearch's exact format so its notebook and habits keep
working: tab-separated ``commit val_bpb memory_gb status description``; status is
``keep``, ``discard`` or ``crash``; a crash (or a variant rejected before it ran)
shows ``0.000000`` and ``0.0``; memory is peak_vram_mb / 1024 to one decimal; the
baseline comes first and is kept. The file is rewritten atomically as experiments
finish, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoswarm.analysis.noise import Baseline, baseline_of, group_values
from autoswarm.config import Config, PoolConfig
from autoswarm.costs import (
    Cost,
    Price,
    experiment_cost,
    prices_of,
    slot_cost,
    tier_of,
    total_cost,
)
from autoswarm.heldout import HIDDEN, heldout_record
from autoswarm.judge import Noise, Rule, noise_model, standard_error
from autoswarm.ledger import Ledger, RunRecord
from autoswarm.policy import best_of
from autoswarm.tiers import deciding_tier, tier_key
from autoswarm.types import Experiment, Kind, Purpose, Status

TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"


def _finished_in_order(experiments: Sequence[Experiment]) -> list[Experiment]:
    """Final-state experiments: baseline first, then in the order they finished."""
    done = [e for e in experiments if e.status.is_finished()]
    baseline = sorted((e for e in done if e.kind is Kind.BASELINE), key=lambda e: e.id)
    rest = sorted(
        (e for e in done if e.kind is not Kind.BASELINE), key=lambda e: (e.finished_at or 0.0, e.id)
    )
    return baseline + rest


def tsv_rows(experiments: Sequence[Experiment], metric: str = "val_bpb") -> list[str]:
    rows = []
    for e in _finished_in_order(experiments):
        commit = (e.commit or e.parent)[:7]
        desc = " ".join(e.description.split()) or "-"
        if e.status.failed or e.status is Status.REJECTED:
            value, mem = "0.000000", "0.0"
            if e.reason:
                desc = f"{desc} ({e.reason})"[:300]
        else:
            if e.status is Status.REVOKED and e.reason:
                desc = f"{desc} ({e.reason})"[:300]
            v = e.value(metric)
            value = f"{v:.6f}" if v is not None else "0.000000"
            mem = f"{e.metrics.get('peak_vram_mb', 0.0) / 1024:.1f}"
        rows.append(f"{commit}\t{value}\t{mem}\t{e.status.tsv}\t{desc.replace(chr(9), ' ')}")
    return rows


def write_results_tsv(
    path: Path, experiments: Sequence[Experiment], metric: str = "val_bpb"
) -> None:
    text = "\n".join([TSV_HEADER, *tsv_rows(experiments, metric)]) + "\n"
    atomic_write(path, text)


class ResultsTsvWriter:
    """An observer of the run's state: rewrites results.tsv when a row changes.

    At most once a second, and never sooner after a write than ten times what that write
    took (a write is O(experiments): at 100,000 rows it takes a second or two on a slow
    machine, and a run would otherwise spend its loop rewriting the file). A change
    inside that time is written by the next :meth:`flush` (the scheduler's loop calls it
    each turn), and ``flush(force=True)`` writes whatever is pending when the run ends.

    A file that cannot be written (a read-only directory, a full disk) does not stop the
    run: the ledger holds every row. ``on_error`` hears about it once, and the writer
    tries again every 30 seconds.
    """

    def __init__(
        self,
        path: Path,
        rows: Callable[[], Sequence[Experiment]],
        metric: str,
        *,
        on_write: Callable[[], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.path = path
        self.on_error = on_error
        self.failing = ""  # why the last write failed ("" = it did not)
        self.rows = rows
        self.metric = metric
        self.on_write = on_write
        self.interval_s = interval_s
        self.dirty = False
        self._written = 0.0
        self._wait_s = interval_s  # before the next write: grows with what a write costs

    def changed(self) -> None:
        self.dirty = True
        self.flush()

    def flush(self, *, force: bool = False) -> None:
        if not (self.dirty or force):
            return
        start = time.monotonic()
        if not force and start - self._written < self._wait_s:
            return
        try:
            write_results_tsv(self.path, self.rows(), self.metric)
        except OSError as e:
            self._written, self._wait_s = time.monotonic(), max(self.interval_s, 30.0)
            if not self.failing and self.on_error is not None:
                self.on_error(
                    f"cannot write {self.path} ({e.strerror or e}): the run goes on and the "
                    "ledger keeps every row; `autoswarm results --format tsv` prints them"
                )
            self.failing = str(e)
            return
        self.failing = ""
        self._written = time.monotonic()
        self._wait_s = max(self.interval_s, 10.0 * (self._written - start))
        self.dirty = False
        if self.on_write is not None:
            self.on_write()


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# Records for `autoswarm results --format json`


def experiment_record(e: Experiment, pool: PoolConfig | None = None) -> dict[str, Any]:
    """One row of ``autoswarm results --json``; ``pool`` (the run's) prices its tier."""
    pool = pool or PoolConfig()
    cost = experiment_cost(e, pool, prices_of(pool))
    return {
        "id": e.id,
        "kind": e.kind.value,
        "commit": e.commit,
        "parent": e.parent,
        "status": e.status.value,
        "description": e.description,
        "proposer": e.proposer,
        "metrics": {
            k: (v if v == v and abs(v) != float("inf") else None) for k, v in e.metrics.items()
        },
        "created_at": e.created_at,
        "started_at": e.started_at,
        "finished_at": e.finished_at,
        "duration_s": e.duration_s,
        "slot": e.slot,
        "seed": e.seed,
        "reason": e.reason,
        "log_path": e.log_path,
        "tier": tier_key(pool, e.tier, e.pinned_tier),
        "cost_usd": cost.usd,
        "gpu_hours": cost.gpu_hours,
        "meta": recorded_meta(e),
    }


def recorded_meta(e: Experiment) -> dict[str, Any]:
    """``meta`` as ``results --json`` has always shown it: the proposer's keys with the
    scheduler's facts beside them, under the names they had before they became columns
    (ledger schema 4), keys sorted as the ledger stored them."""
    out: dict[str, Any] = dict(e.meta)
    facts: dict[str, Any] = {
        "fingerprint": e.fingerprint,
        "dedup": e.dedup,
        "knobs": None if e.knobs is None else dict(e.knobs),
        "duplicate_of": e.duplicate_of,
        "confirms": e.rerun_of,
        "tier": e.pinned_tier,
        "screening": None if e.screening is None else e.screening.as_meta(),
        "evidence": None if e.evidence is None else e.evidence.as_meta(),
        "kept_at": e.kept_at,
        "revoked_at": e.revoked_at,
        "validated_on": e.validated_on,
    }
    out.update((k, v) for k, v in facts.items() if v is not None)
    if e.validated:
        out["validated"] = True
    p = e.purpose
    if p is not None:
        if p in (Purpose.CONFIRM, Purpose.VALIDATE):
            out["z_before"] = e.z_before
        if p is Purpose.VALIDATE:
            out["promoted"] = True
        if p.remeasures:
            out["replicates"] = True
        if p is Purpose.FINAL:
            out["final"] = True
        if p is Purpose.REPRODUCE:
            out["reproduce"] = True
    # As the ledger stored it (json.dumps(sort_keys=True)): nested keys sorted too.
    return json.loads(json.dumps(out, sort_keys=True, default=str))


# ---------------------------------------------------------------------------
# `autoswarm status`


def effects_record(
    experiments: Sequence[Experiment], metric: str, sigma: float | None, wave: int | None = None
) -> dict[str, Any]:
    """The effect table of a run's factorial waves, JSON-ready (empty without waves)."""
    from autoswarm.analysis.effects import effects_from_experiments

    table = effects_from_experiments(experiments, metric, sigma, wave=wave)
    return {
        "runs": table.runs,
        "se_source": table.se_source,
        "terms": table.as_records(),
        "dropped": list(table.dropped),
    }


def status_record(
    ledger: Ledger, run: RunRecord, now: float, *, effects: bool = True, show_test: bool = True
) -> dict[str, Any]:
    """Everything ``autoswarm status --json`` prints, derived from the ledger alone.

    A run's rows are not built: counts, slot time and costs are SQL aggregates, the
    noise model reads each measurement's value, and only the baselines, the keeps and
    the best come as rows, so a glance at a run of 100,000 experiments stays cheap.
    ``effects``: also fit the factorial waves' effect table (reads every wave's rows).
    ``show_test``: include the test split's values (:mod:`autoswarm.heldout`); without
    it they are left out, and ``test`` says why.
    """
    cfg = Config.from_record(run.config)
    metric, repeats, pool = cfg.metric.name, cfg.run.baseline_repeats, cfg.pool
    sessions = ledger.sessions(run.id)
    tallies = ledger.tally(run.id, now)
    counts = {s.value: 0 for s in Status}
    prices = prices_of(pool)
    by_tier: dict[str, Cost] = {k: Cost() for k in prices}
    for t in tallies:
        counts[t.status.value] += t.count
        if t.ran:
            key = tier_of(pool, t.tier, t.pinned_tier)
            by_tier[key] = by_tier.get(key, Cost()) + slot_cost(
                prices.get(key, Price()), t.seconds, t.ran
            )
    spent = total_cost(by_tier)
    used = sum(t.seconds for t in tallies)
    # With tiers, each tier has its own baseline: report the one whose results advance the branch.
    deciding = deciding_tier(pool)

    def on_deciding(tier: str, pinned: str | None) -> bool:
        return not pool.tiers or tier_key(pool, tier, pinned) == deciding

    few = ledger.experiments(run.id, kinds=[Kind.BASELINE], summary=True)
    few += ledger.experiments(run.id, statuses=[Status.KEEP], kinds=[Kind.CANDIDATE], summary=True)
    baselines = [e for e in few if e.kind is Kind.BASELINE and on_deciding(e.tier, e.pinned_tier)]
    baseline = baseline_of(baselines, metric, repeats)
    best = best_of(few, metric, baseline)
    model = noise_model(
        group_values(
            (
                (i, commit, value)
                # groups of one value are left out by the noise model anyway
                for i, commit, tier, pinned, value in ledger.measurements(run.id, repeated=True)
                if on_deciding(tier, pinned)
            ),
            run.base_commit,
        )
    )
    noise = _noise_record(model, baselines, baseline)
    active = [s for s in sessions if s.live(now)]
    elapsed = sum(s.seconds for s in sessions)
    for s in active:  # a live session: count up to now, not to its last heartbeat
        elapsed += max(0.0, now - s.heartbeat_at)
    slot_seconds = sum(s.seconds * s.workers for s in sessions) + sum(
        max(0.0, now - s.heartbeat_at) * s.workers for s in active
    )
    finished = (Status.KEEP, Status.DISCARD, Status.CRASH, Status.FORGED)
    done = sum(counts[s.value] for s in finished)
    best_row = None
    if best is not None:
        best_row = next((e for e in few if e.id == best.experiment_id), None)
        best_row = best_row or ledger.find(best.experiment_id)
    heldout: dict[str, Any] | None = None
    if not show_test:
        heldout = {"hidden": HIDDEN}
    elif cfg.metric.evaluate:
        heldout = heldout_record(
            ledger.sealed_metrics(run.id),
            test=cfg.metric.test,
            direction=cfg.metric.direction,
            base_commit=run.base_commit,
            best_commit=best.commit if best else None,
            keeps=[
                (e.id, e.commit, e.description)
                for e in few
                if e.kind is Kind.CANDIDATE and e.status is Status.KEEP
            ],
        )
    if effects:
        rows = ledger.experiments(run.id, summary=True)
        sigma = baseline.sigma if baseline and len(baseline.values) > 1 else None
        table: dict[str, Any] | None = effects_record(rows, metric, sigma)
    else:
        table = None
    return {
        "tag": run.tag,
        "branch": run.branch,
        "metric": metric,
        "active": bool(active),
        "experiments": {
            "total": sum(counts.values()),
            "keep": counts["keep"],
            "discard": counts["discard"],
            "crash": counts["crash"],
            "forged": counts["forged"],
            "rejected": counts["rejected"],
            "running": counts["running"],
            "queued": counts["queued"],
            "pending": counts["pending"],
            "interrupted": counts["interrupted"],
            "revoked": counts["revoked"],
        },
        "baseline": {
            "val_bpb" if metric == "val_bpb" else metric: baseline.mean
            if baseline and baseline.values
            else None,
            "commit": run.base_commit,
            "runs": len(baseline.values) if baseline else 0,
        },
        "best": {
            "val_bpb" if metric == "val_bpb" else metric: best.value if best else None,
            "commit": best.commit if best else None,
            "id": best.experiment_id if best else None,
            "description": best_row.description if best_row else None,
            **_best_evidence(best_row, best.values if best else (), model),
        },
        "improvement_pct": (
            100.0 * abs(baseline.mean - best.value) / abs(baseline.mean)
            if best and baseline and baseline.values and baseline.mean
            else None
        ),
        "metric_source": (
            "locked evaluation ([metric] evaluate)"
            if cfg.metric.evaluate
            else "self-reported: train.py prints it and nothing checks it ([metric] evaluate is "
            "not set)"
        ),
        "test": heldout,
        "noise_sigma": noise["sigma"],
        "noise": noise,
        "elapsed_s": elapsed,
        "experiments_per_hour": (done / (elapsed / 3600.0)) if elapsed > 0 else 0.0,
        "busy_fraction": min(1.0, used / slot_seconds) if slot_seconds > 0 else 0.0,
        "median_duration_s": ledger.median_duration(run.id, finished),
        **({"effects": table} if table is not None else {}),
        "sessions": len(sessions),
        "workers": sessions[-1].workers if sessions else 0,
        "cost_usd": spent.usd,
        "gpu_hours": spent.gpu_hours,
        "tiers": {name or "local": c.as_record() for name, c in by_tier.items()},
    }


def _noise_record(
    noise: Noise, exps: Sequence[Experiment], baseline: Baseline | None
) -> dict[str, Any]:
    """σ̂ as the keep rule uses it now (re-estimated from every repeated commit)."""
    return {
        "sigma": noise.sigma if noise.known else None,
        "df": noise.df,
        "groups": noise.groups,
        "unstable": noise.unstable,
        "baseline_sigma": baseline.sigma if baseline and len(baseline.values) > 1 else None,
        "slowed_repeats": sum(
            1 for e in exps if e.kind is Kind.BASELINE and e.status is Status.DISCARD
        ),
    }


def _best_evidence(row: Experiment | None, values: Sequence[float], noise: Noise) -> dict[str, Any]:
    """The best's winner's curse (selected vs replicated) and its end-of-run validation."""
    ev = row.evidence.as_meta() if row is not None and row.evidence is not None else {}
    # With the best's own spread where that is wider than σ̂ (an unstable variant).
    se = standard_error(Rule(), values, noise) if values else None
    return {
        "runs": len(values),
        "selected": ev.get("selected_mean"),
        "replicated": statistics.fmean(values) if values else None,
        "se": se,
        "validated": bool(row is not None and row.validated),
    }


__all__ = [
    "TSV_HEADER",
    "ResultsTsvWriter",
    "atomic_write",
    "effects_record",
    "experiment_record",
    "recorded_meta",
    "status_record",
    "tsv_rows",
    "write_results_tsv",
]
