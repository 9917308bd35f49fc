"""Judge → apply: what the scheduler does with the keep rule's answers.

:mod:`autoswarm.judge` decides on plain numbers (screen, confirm, keep, discard,
revoke); :class:`Keeper` applies its answers to the run: it queues the re-runs a verdict
waits for (confirmations on the candidate's tier, validations on the deciding tier,
re-measurements of a keep), records verdicts on the candidate and its re-runs, moves the
bar and the branch on a keep, reviews a keep as its re-measurements come in and revokes
it (and the keeps judged against it) when it no longer holds, and ends the run with the
end-of-run validation of the best. Each step is written to the ledger before it takes
effect (a verdict before the branch moves).

One experiment's way through it, from ``Scheduler._apply``:

    a first run or a confirmation is in  → verdict → _add_reruns | _conclude → _record_verdict
    a keep                                → _replicate → _queue_replicates (re-measurements)
    a re-measurement is in                → replicated → judge.review → _revoke
    the run ends                          → start_final (validate the best), _decide_leftovers
"""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autoswarm import judge
from autoswarm.admission import Admission, knob_values
from autoswarm.analysis.noise import Baseline
from autoswarm.bars import Bars
from autoswarm.clock import Clock
from autoswarm.config import Config
from autoswarm.dedup import dedup_key
from autoswarm.errors import RunStateError
from autoswarm.judge import Action, Noise, Rule, Verdict
from autoswarm.ledger import Ledger, RunRecord
from autoswarm.limits import Limits
from autoswarm.policy import Best, best_of, kept_chain
from autoswarm.proposers.base import Proposer, fingerprint
from autoswarm.run_state import RunState
from autoswarm.tiers import TierPlan
from autoswarm.types import Experiment, Kind, Purpose, Status
from autoswarm.workspace import Workspace


@dataclass(frozen=True)
class Reproduce:
    """``autoswarm reproduce``: re-run one recorded experiment's commit with fresh seeds."""

    experiment_id: int
    runs: int = 3
    tier: str = ""


class Keeper:
    """Applies the keep rule's verdicts to one run (see the module docstring)."""

    def __init__(
        self,
        *,
        run: RunRecord,
        state: RunState,
        bars: Bars,
        admission: Admission,
        limits: Limits,
        ledger: Ledger,
        ws: Workspace,
        proposer: Proposer,
        cfg: Config,
        rule: Rule,
        tiers: TierPlan,
        clock: Clock,
        slots: int,
        tier_of: Callable[[Experiment], str],
        event: Callable[[str], None],
    ) -> None:
        self.run_rec = run
        self.state = state
        self.bars = bars
        self.admission = admission
        self.limits = limits
        self.ledger = ledger
        self.ws = ws
        self.proposer = proposer
        self.cfg = cfg
        self.metric = cfg.metric.name
        self.rule = rule
        self.tiers = tiers
        self.clock = clock
        self.slots = slots
        self._tier = tier_of
        self.event = event
        # End-of-run validation of the best ([run] final_runs) and `autoswarm reproduce`:
        # once started, only rows of that purpose are dispatched (Scheduler._pick).
        self.final: str | None = None  # the reason the run ends, once validation started
        self.final_ids: set[int] = set()

    @property
    def _lock(self) -> Any:
        return self.state.lock

    @property
    def baseline(self) -> Baseline | None:
        return self.bars.baseline

    @property
    def best(self) -> Best | None:
        return self.bars.best

    @best.setter
    def best(self, best: Best | None) -> None:
        self.bars.best = best

    # -- the baseline ----------------------------------------------------------------

    def ensure_baseline(self) -> None:
        """Queue the baseline repeats still missing, on every tier (each tier has its own)."""
        assert self.run_rec is not None
        base = self.run_rec.base_commit
        files = self.admission.files(base)
        for tier in self.tiers.used:
            rows = [
                e
                for e in self.state.all.values()
                if e.kind is Kind.BASELINE and self._tier(e) == tier
            ]
            # A repeat left out as slowed by other load (DISCARD) is replaced, at most once each.
            left_out = sum(1 for e in rows if e.status is Status.DISCARD)
            have = len(rows) - min(left_out, self.cfg.run.baseline_repeats)
            on = f" on {tier}" if tier else ""
            for i in range(have, self.cfg.run.baseline_repeats):
                i += len(rows) - have  # seeds and descriptions continue after left-out repeats
                exp = self.ledger.add_experiment(
                    run_id=self.run_rec.id,
                    kind=Kind.BASELINE,
                    status=Status.QUEUED,
                    parent=base,
                    commit=base,
                    description=f"baseline{on}"
                    if i == 0
                    else f"baseline{on} (repeat {i + 1}, seed {self.cfg.run.seed + i})",
                    proposer="baseline",
                    seed=self.cfg.run.seed + i,
                    now=self.clock.now(),
                    facts={
                        "fingerprint": fingerprint(files),
                        "dedup": dedup_key(files),
                        "knobs": knob_values(files),
                    }
                    | ({"pinned_tier": tier} if tier else {}),
                )
                self.state.record(exp)
                self.admission.index(exp)
                self.state.queue.append(exp.id)
        self.bars.refresh_baselines()
        # Baselines go first, whatever else was queued.
        self.state.queue = collections.deque(
            sorted(self.state.queue, key=lambda i: (self.state.all[i].kind is not Kind.BASELINE, i))
        )

    def check_baseline(self, tier: str) -> None:
        """Once a tier's repeats are in: leave out a repeat slowed by other load, then judge."""
        rows = sorted(
            (
                e
                for e in self.state.all.values()
                if e.kind is Kind.BASELINE and self._tier(e) == tier and e.status is Status.KEEP
            ),
            key=lambda e: e.id,
        )
        if len(rows) >= self.cfg.run.baseline_repeats:
            steps = [e.metrics.get("num_steps") for e in rows]
            # Each repeat left out is replaced, at most baseline_repeats in all (see
            # ensure_baseline); past that, a slowed repeat counts as it is, or on a machine
            # that stays loaded the baseline would never be complete and the run would wait
            # for it forever.
            left_out = sum(
                1
                for e in self.state.all.values()
                if e.kind is Kind.BASELINE and self._tier(e) == tier and e.status is Status.DISCARD
            )
            replaceable = max(0, self.cfg.run.baseline_repeats - left_out)
            for i in judge.slowed(steps)[:replaceable]:
                e = rows[i]
                others = statistics.median(
                    s for j, s in enumerate(steps) if j != i and s is not None
                )
                why = (
                    f"slowed by other load on the machine ({steps[i]:g} steps, the other repeats "
                    f"a median of {others:g}): left out of the noise estimate and re-run"
                )
                self.state.noise.unmeasure(self._refinish(e, Status.DISCARD, why))
                self.event(f"baseline #{e.id} {why}")
            if any(self.state.all[e.id].status is Status.DISCARD for e in rows):
                self.ensure_baseline()
        self.bars.refresh_baselines()
        self.best = best_of(list(self.state.all.values()), self.metric, self.baseline)
        base = self.bars.baselines.get(tier)
        if base and base.complete:
            self.judge_pending()

    def judge_pending(self) -> None:
        """Decide every candidate that waits for a verdict (after a baseline, on resume)."""
        pending = sorted(
            (
                e
                for e in self.state.all.values()
                if e.status is Status.PENDING and e.kind is Kind.CANDIDATE
            ),
            key=lambda e: (e.finished_at or 0.0, e.id),
        )
        for e in pending:
            self.verdict(e)

    def _room(self, need: int = 1) -> bool:
        """Whether the run's limits leave room for ``need`` more runs (none once it ends)."""
        if self.final is not None:
            return False
        return self.limits.room(self.state, self.clock.now(), need)

    def verdict(self, cand: Experiment) -> None:
        """Screen, confirm, keep or discard ``cand`` (the rule: :mod:`autoswarm.judge`).

        A first run is a screen; a promising one is re-run with fresh seeds (on its own
        tier, or promoted to the tier where it counts), and the verdict is on all its runs
        on the deciding tier, against the best measured on that same tier, with that
        tier's noise model. A screening stage is final without a validation tier, unless
        the current best was never measured on that tier (then the candidate is promoted
        to a tier where the best was measured).
        """
        assert self.run_rec is not None
        if cand.status is not Status.PENDING:
            return  # already decided (a sibling re-run crashed and discarded it)
        confirms = [c for c in self.state.reruns(cand) if not c.is_remeasure]
        if any(c.status in (Status.QUEUED, Status.RUNNING, Status.INTERRUPTED) for c in confirms):
            return  # evidence still on its way
        promoted = [c for c in confirms if c.purpose is Purpose.VALIDATE]
        rows = promoted if promoted else [cand, *confirms]
        tier = self._tier(rows[0])
        base = self.bars.baselines.get(tier)
        if base is None or not base.complete:
            return  # judged once this tier's own baseline is complete
        values = [v for e in rows if (v := e.value(self.metric)) is not None]
        if not values:  # its runs were withdrawn (a tier left the pool)
            self.conclude_discard(cand, "no usable run left to decide on")
            return
        best = self.bars.best_on(tier)
        noise = self._noise_of(tier)
        current = self.best.commit if self.best else best.commit
        final = bool(promoted) or (self.tiers.validation is None and best.commit == current)
        room = self._room(max(1, self.rule.confirm_runs))
        if not promoted and not confirms:
            sv = judge.screen(
                self.rule, values[0], best.samples, best.experiment_id, noise, room=room
            )
            runs = max(1, self.rule.confirm_runs)
            if not final and sv.action is not Action.DISCARD:
                # A screen on a tier that does not decide: run it where it counts.
                target = self.bars.promotion_tier(current)
                if room and target is not None:
                    self._add_reruns(cand, target, runs, promoted=True, ev=sv.evidence)
                    return
                why = (
                    f"promising on {tier} (z={sv.evidence.t:.2f}) but the run's limits leave "
                    "no room to validate it"
                )
                self._conclude(cand, Verdict(Action.DISCARD, sv.evidence, reason=why))
                return
            if sv.action is Action.CONFIRM:
                self._add_reruns(cand, tier, sv.runs, promoted=False, ev=sv.evidence)
                return
            if not room and sv.action is Action.DISCARD and sv.evidence.gain > self.rule.min_delta:
                se1 = noise.sigma * math.sqrt(1 + 1 / len(best.samples))
                if se1 > 0 and sv.evidence.gain / se1 > self.rule.screen_sigmas:
                    sv = dataclasses.replace(
                        sv,
                        reason="promising, but the run's limits leave no room for the "
                        f"{self.rule.confirm_runs} fresh runs a keep needs",
                    )
            self._conclude(cand, sv)
            return
        selected = 0 if promoted else 1
        per_look = max(1, self.rule.confirm_runs)
        look = math.ceil((len(values) - selected) / per_look)
        verdict = judge.judge(
            self.rule,
            values,
            selected,
            best.samples,
            best.experiment_id,
            noise,
            look=look,
            room=self._room(per_look),
        )
        if verdict.action is Action.CONFIRM:  # promising, short of the keep level: more fresh runs
            seed = max(e.seed for e in [cand, *confirms]) + 1
            self._add_reruns(
                cand, tier, verdict.runs, promoted=bool(promoted), ev=verdict.evidence, seed=seed
            )
            return
        self._conclude(cand, verdict)

    def _best_runs(self) -> int:
        """How many fresh runs a kept variant's bar should rest on ([run] best_runs)."""
        return self.cfg.run.best_runs or self.cfg.run.baseline_repeats

    def _replicate(self, cand: Experiment, fresh: int) -> None:
        """Queue re-runs of a just-kept ``cand`` until its bar rests on ``best_runs`` fresh runs.

        The winner's curse: of many candidates compared with the best, the one kept is
        likely to have been measured lucky; its bar is the mean of runs measured after it
        was selected. The re-runs go to the tier its evidence came from, with the next seeds.
        """
        missing = self._best_runs() - fresh
        if missing <= 0 or not self._room():
            return
        left = self.limits.left(self.state)
        if left is not None:
            missing = min(missing, left)  # --max-experiments counts these too
        self._queue_replicates(cand, missing, "re-measure kept")

    def _queue_replicates(
        self, cand: Experiment, n: int, what: str, purpose: Purpose = Purpose.REPLICATE
    ) -> list[int]:
        confirms = [c for c in self.state.reruns(cand) if c.kind is Kind.CONFIRM]
        promoted = [c for c in confirms if c.purpose is Purpose.VALIDATE]
        rows = promoted if promoted else [cand, *confirms]
        facts: dict[str, Any] = {"purpose": purpose, "rerun_of": cand.id}
        if tier := self._tier(rows[0]):
            facts["pinned_tier"] = tier
        seed = max(e.seed for e in [cand, *confirms]) + 1
        ids = []
        for i in range(n):
            ids.append(self._queue_rerun(cand, f"{what} #{cand.id}", seed + i, facts))
        return ids

    def replicated(self, rep: Experiment) -> None:
        """A re-run of a kept variant is in: its value joins the variant's fresh runs, and
        the keep is reviewed against the bar it replaced (and revoked if it no longer holds)."""
        cand = self.state.rerun_parent(rep)
        value = rep.value(self.metric)
        before = cand.evidence
        if (
            value is not None
            and before is not None
            and before.values
            and cand.status is Status.KEEP
        ):
            # The runs the keep was decided on are remembered (decided_runs); every later
            # one is a replicate.
            evidence = before.with_run(value)
            fresh, values = list(evidence.fresh), list(evidence.values)
            updated = self._update_facts(cand, {"evidence": evidence})
            standing = updated.status is Status.KEEP
            if standing and self.best is not None and self.best.experiment_id == cand.id:
                self.best = Best(
                    statistics.fmean(fresh), cand.commit, cand.id, len(fresh), tuple(fresh)
                )
            bar = list(evidence.bar)
            noise = self._noise_of(self._tier(rep))
            assert evidence.decided_runs is not None
            action, why = judge.review(
                self.rule, fresh, bar, noise, values=values, kept_with=evidence.decided_runs
            )
            if standing and action is Action.REVOKE:
                self._revoke(
                    updated,
                    f"revoked: re-measured at {statistics.fmean(fresh):.6f} on {len(fresh)} fresh "
                    f"run(s); {why} (#{evidence.bar_id} at {statistics.fmean(bar):.6f})",
                )
        self.proposer.observe(rep)

    def _revoke(self, cand: Experiment, why: str) -> None:
        """Withdraw a keep whose evidence no longer stands; the branch moves back.

        Keeps made after it were judged against a bar that no longer stands: each is
        judged again against the best standing before it, and revoked too unless its own
        runs beat that one.
        """
        assert self.run_rec is not None
        later = [
            k
            for k in kept_chain(list(self.state.all.values()), self.metric)
            if k.id != cand.id and (k.kept_at or 0.0) >= (cand.kept_at or 0.0)
        ]
        self._set_status(cand, Status.REVOKED, why, {"revoked_at": self.clock.now()})
        self.event(f"#{cand.id} {why}")
        # Each later keep is judged against the best standing before it: without itself
        # and the keeps after it (those not yet judged again), with the ones that stood.
        waiting = {k.id for k in later}
        for k in later:
            standing = [e for e in self.state.all.values() if e.id not in waiting]
            self.best = best_of(standing, self.metric, self.baseline)
            self.bars.stale()  # the cached bars per tier are stale
            tier = self._tier(k)
            bar = (
                self.bars.best_on(tier, without=frozenset(waiting))
                if self.bars.baselines.get(tier)
                else self.best
            )
            waiting.discard(k.id)
            values = list(k.evidence.values) if k.evidence else []
            selected = len(k.evidence.selected) if k.evidence else 0
            if bar is None or not values:
                continue
            v = judge.judge(
                self.rule, values, selected, bar.samples, bar.experiment_id, self._noise_of(tier)
            )
            if v.action is not Action.KEEP:
                self._set_status(
                    k,
                    Status.REVOKED,
                    f"revoked: judged against #{cand.id}, which was revoked; against "
                    f"#{bar.experiment_id} it does not hold (p={v.evidence.p:.3g})",
                    {"revoked_at": self.clock.now()},
                )
        self.bars.refresh_best()
        target = self.best.commit if self.best else self.run_rec.base_commit
        self.ws.advance_branch(
            self.run_rec.branch, target, f"autoswarm revoke #{cand.id}: back to {target[:10]}"
        )
        self.proposer.observe(self.state.all[cand.id])

    def _set_status(
        self, e: Experiment, status: Status, reason: str, facts: Mapping[str, Any]
    ) -> Experiment:
        with self._lock:
            done = self._refinish(e, status, reason, facts)
            if status is Status.REVOKED:  # its re-runs were kept with it: withdrawn with it
                for c in self.state.reruns(e):
                    if c.status is Status.KEEP:
                        self._refinish(
                            c, Status.REVOKED, f"a run of #{e.id}, whose keep was revoked"
                        )
                    elif c.status is Status.QUEUED and c.id not in self.final_ids:
                        self._withdraw(c, f"not run: #{e.id}'s keep was revoked")
        self.bars.stale()
        return done

    def _refinish(
        self,
        e: Experiment,
        status: Status,
        reason: str = "",
        facts: Mapping[str, Any] | None = None,
    ) -> Experiment:
        """Give a finished row a new status (a verdict, a revocation), keeping its metrics."""
        done = self.ledger.finish(
            e.id,
            status=status,
            metrics=e.metrics,
            metric=e.value(self.metric),
            finished_at=e.finished_at or self.clock.now(),
            reason=reason,
            facts=facts,
        )
        self.state.record(done)
        return done

    def _withdraw(self, e: Experiment, reason: str) -> Experiment:
        """A queued row that will never run: out of the queue, recorded REJECTED with why."""
        if e.id in self.state.queue:
            self.state.queue.remove(e.id)
        done = self.ledger.finish(
            e.id,
            status=Status.REJECTED,
            metrics={},
            metric=None,
            finished_at=self.clock.now(),
            reason=reason,
        )
        self.state.record(done)
        return done

    def _update_facts(self, e: Experiment, facts: Mapping[str, Any]) -> Experiment:
        return self._set_status(e, e.status, e.reason, facts)

    def _add_reruns(
        self,
        cand: Experiment,
        tier: str,
        n: int,
        *,
        promoted: bool,
        ev: judge.Evidence,
        seed: int | None = None,
    ) -> None:
        """Queue ``n`` confirmation (same tier) or validation (another tier) runs of ``cand``,
        with fresh seeds: they are the evidence its verdict, and its bar, rest on."""
        facts: dict[str, Any] = {
            "purpose": Purpose.VALIDATE if promoted else Purpose.CONFIRM,
            "rerun_of": cand.id,
            "z_before": ev.t if math.isfinite(ev.t) else None,
        }
        if tier:
            facts["pinned_tier"] = tier
        if promoted:
            facts["screening"] = ev  # the evidence that earned the promotion
        for i in range(n):
            what = f"validate #{cand.id} on {tier}" if promoted else f"confirm #{cand.id}"
            self._queue_rerun(cand, what, (cand.seed + 1 if seed is None else seed) + i, facts)

    def _queue_rerun(self, cand: Experiment, what: str, seed: int, facts: dict[str, Any]) -> int:
        """Record a CONFIRM row re-running ``cand``'s commit with ``seed``, first in the queue."""
        assert self.run_rec is not None
        row = self.ledger.add_experiment(
            run_id=self.run_rec.id,
            kind=Kind.CONFIRM,
            status=Status.QUEUED,
            parent=cand.parent,
            commit=cand.commit,
            description=f"{what} (seed {seed}): {cand.description}",
            proposer=cand.proposer,
            seed=seed,
            now=self.clock.now(),
            facts=facts,
        )
        self.state.record(row)
        self.state.queue.appendleft(row.id)  # re-runs gate decisions and the bar: they go first
        return row.id

    # -- the end of a run: validating the best ---------------------------------------

    def _final_runs(self) -> int:
        n = self.cfg.run.final_runs
        return n if n >= 0 else (3 if self.slots > 1 else 0)

    def start_final(self, reason: str) -> bool:
        """Queue the end-of-run re-runs of the best ([run] final_runs); True if any were."""
        self.final = reason
        self._decide_leftovers()
        best = self.best
        if best is None or self._final_runs() <= 0:
            return False
        if not (reason.startswith("time limit") or reason == "proposer exhausted"):
            return False  # a count or money limit is a hard stop: no runs beyond it
        cand = self.state.all.get(best.experiment_id)
        if cand is None or cand.kind is not Kind.CANDIDATE:
            return False  # the baseline is the best: its repeats already measure it
        if cand.validated:
            return False
        self._update_facts(cand, {"validated": True})
        self.event(f"validating the best #{cand.id}: {self._final_runs()} more runs, fresh seeds")
        ids = self._queue_replicates(cand, self._final_runs(), "validate best", Purpose.FINAL)
        self.final_ids.update(ids)
        return bool(ids)

    def _decide_leftovers(self) -> None:
        """The run ends: candidates still waiting on re-runs that will not start now are
        decided on the evidence there is (their queued re-runs withdrawn), so that a run
        that ended leaves no verdict open. (Ctrl-C does not come here: --resume goes on.)"""
        for cand in sorted(self.state.all.values(), key=lambda e: e.id):
            if cand.kind is not Kind.CANDIDATE or cand.status is not Status.PENDING:
                continue
            rows = self.state.reruns(cand)
            if any(c.status in (Status.RUNNING, Status.INTERRUPTED) for c in rows):
                continue
            for c in rows:
                if c.status is Status.QUEUED:
                    with self._lock:
                        self._withdraw(c, f"not run: the run ended ({self.final}) first")
            self.verdict(self.state.all[cand.id])

    def start_reproduce(self, r: Reproduce) -> None:
        """Queue ``r.runs`` re-runs of experiment ``r.experiment_id`` with fresh seeds.

        For a kept variant they join its fresh runs, so a reproduction that contradicts
        the keep revokes it (as any re-measurement does).
        """
        exp = self.state.all.get(r.experiment_id)
        if exp is None or not exp.commit or not exp.status.is_finished():
            raise RunStateError(
                f"experiment #{r.experiment_id} is not a finished experiment of run "
                f"{self.run_rec.tag if self.run_rec else ''!r}: pick an id from `autoswarm results`"
            )
        if r.tier and r.tier not in self.tiers.used:
            raise RunStateError(
                f"tier {r.tier!r} is not in this run's pool ({', '.join(self.tiers.used) or 'no tiers'})"
            )
        self.final = "reproduced"
        seed = max(e.seed for e in self.state.all.values() if e.commit == exp.commit) + 1
        facts: dict[str, Any] = {"purpose": Purpose.REPRODUCE, "rerun_of": exp.id}
        if r.tier or self._tier(exp):
            facts["pinned_tier"] = r.tier or self._tier(exp)
        for i in range(r.runs):
            rid = self._queue_rerun(exp, f"reproduce #{exp.id}", seed + i, facts)
            self.final_ids.add(rid)

    def reject_unplaceable(self) -> None:
        """Queued rows pinned to a tier the pool no longer has can never run: reject them."""
        if not self.cfg.pool.tiers:
            return
        for e in list(self.state.all.values()):
            pin = e.pinned_tier
            if e.status is Status.QUEUED and pin and pin not in self.tiers.used:
                self._withdraw(e, f"its tier {pin!r} is no longer in [pool]; it cannot run")

    def conclude_discard(self, cand: Experiment, reason: str) -> None:
        """Discard ``cand`` without evidence to weigh (its re-run crashed, its runs are gone)."""
        self._record_verdict(cand, Status.DISCARD, None, reason)

    def _conclude(self, cand: Experiment, v: Verdict) -> None:
        """Record the final verdict of a candidate and of its confirmation runs."""
        status = Status.KEEP if v.action is Action.KEEP else Status.DISCARD
        self._record_verdict(cand, status, v.evidence, v.reason)

    def _record_verdict(
        self, cand: Experiment, status: Status, ev: judge.Evidence | None, reason: str
    ) -> None:
        assert self.run_rec is not None
        facts: dict[str, Any] = {}
        if ev is not None:
            facts["evidence"] = ev
        promoted = [c for c in self.state.reruns(cand) if c.purpose is Purpose.VALIDATE]
        if promoted:
            facts["screening"] = promoted[0].screening
            facts["validated_on"] = promoted[0].pinned_tier or ""
        if status is Status.KEEP:
            facts["kept_at"] = self.clock.now()
            self.bars.stale()
        finished_confirms: list[Experiment] = []
        with self._lock:
            done = self._refinish(cand, status, reason, facts)
            for c in self.state.reruns(cand):
                if c.status is Status.QUEUED and not c.is_remeasure:
                    self._withdraw(c, f"not run: #{cand.id} was decided without it")
                if c.status is Status.PENDING:
                    finished_confirms.append(self._refinish(c, status))
            if status is Status.KEEP and ev is not None:
                bar = ev.fresh or ev.values
                self.best = Best(
                    value=statistics.fmean(bar),
                    commit=cand.commit,
                    experiment_id=cand.id,
                    runs=len(bar),
                    values=tuple(bar),
                )
        if status is Status.KEEP:
            self.ws.advance_branch(
                self.run_rec.branch, cand.commit, f"autoswarm keep #{cand.id}: {cand.description}"
            )
            if ev is not None:
                self._replicate(done, len(ev.fresh))
        # Observed in the order a resume replays them: the candidate, then its confirmations.
        for e in (done, *finished_confirms):
            self.proposer.observe(e)

    def _noise_of(self, tier: str) -> Noise:
        """The noise model of ``tier`` now (:func:`autoswarm.judge.noise_model`)."""
        base = self.bars.baselines.get(tier)
        return self.state.noise.model(tier, base.commit if base else None)


__all__ = ["Keeper", "Reproduce"]
