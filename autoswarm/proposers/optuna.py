"""Optuna search over the knobs: TPE (or CMA-ES) through batched ask and tell.

The search space is the knob space of the baseline files (:func:`autoswarm.knobs.knob_spaces`),
computed once on the first :meth:`OptunaProposer.propose` so the study's distributions never
change: floats and ints map to Optuna's float and int distributions (log scale where the
space says so), powers of two to an integer exponent (so they stay powers of two), booleans
and listed alternatives to categorical ones.

Every call ``propose(ctx, n)`` asks the study for up to ``n`` trials at once. TPE runs with
the *constant liar*, so trials asked while others are still running differ from them. Each
trial is a full point of the space, so it is applied to the baseline files and proposed
relative to the baseline commit; its description lists the knobs that differ from the baseline
(``LR 0.01 -> 0.0312, WIDTH 64 -> 256``). :meth:`OptunaProposer.observe` tells the study each
outcome: a kept or discarded candidate its metric, a crash or a rejection ``FAIL``; the baseline
runs are added as completed trials, so the sampler knows the starting point.

With ``storage_dir`` (the workspace's ``.autoswarm``) the study lives in ``optuna.db`` (SQLite),
named after the run's tag, and ``autoswarm run --resume`` continues it: the scheduler replays
every finished experiment through ``observe`` before the first ``propose``; those observations
are buffered until the study is loaded, and trials that were told already are skipped.

Run its tests with ``pytest tests/unit/test_optuna_proposer.py``.
"""

from __future__ import annotations

import importlib.util
import math
import random
import sqlite3
import statistics
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoswarm.errors import ProposerError
from autoswarm.knobs import Literal, Space, apply_values, format_literal, knob_spaces, knobs_of
from autoswarm.proposers.base import Context, fingerprint
from autoswarm.types import Experiment, Kind, Proposal, Status

if TYPE_CHECKING:  # optuna is imported when the first study is made: keeps `import autoswarm` fast
    import optuna
    from optuna.distributions import BaseDistribution

SAMPLERS = ("tpe", "cmaes")

# Floats are written with this many significant digits, so diffs stay readable.
_DIGITS = 3
# How many extra asks one propose() may spend on points that were tried already.
_EXTRA_ASKS = 8
# How many random points it then draws, looking for one not tried yet.
_RANDOM_DRAWS = 64


# ---------------------------------------------------------------------------
# Knob spaces as Optuna distributions


@dataclass(frozen=True)
class _Param:
    """One knob's Optuna parameter: its name in the study and its distribution."""

    knob: str
    space: Space
    name: str  # the knob's name, or ``<KNOB>_log2`` for a power of two searched by its exponent
    distribution: BaseDistribution

    def value(self, param: Any) -> Literal:
        """The knob value for an Optuna parameter value (rounded, clipped, typed)."""
        if self.space.kind == "pow2":
            return int(2 ** int(param))
        if self.space.kind == "int":
            return int(param)
        if self.space.kind == "float":
            v = float(f"{float(param):.{_DIGITS}g}")
            return min(max(v, self.space.low), self.space.high)
        assert isinstance(param, bool | int | float | str)
        return param

    def param(self, value: Any) -> Any | None:
        """The Optuna parameter value for a knob value, or None if it lies outside."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            # Compare types too: True == 1 in Python, but not as knob values.
            hits = [c for c in d.choices if type(c) is type(value) and c == value]
            return hits[0] if hits else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(d, IntDistribution):
            if self.space.kind == "pow2":
                if not isinstance(value, int) or value <= 0 or value & (value - 1):
                    return None
                value = value.bit_length() - 1
            if not isinstance(value, int) or not d.low <= value <= d.high:
                return None
            return value
        if isinstance(d, FloatDistribution) and d.low <= value <= d.high:
            return float(value)
        return None


def _params_of(spaces: Mapping[str, Space]) -> list[_Param]:
    """Optuna parameters for the knob spaces (spaces Optuna cannot express are left out)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: list[_Param] = []
    for knob, s in spaces.items():
        dist: BaseDistribution
        name = knob
        if s.kind in ("bool", "choice"):
            if not s.choices:
                continue
            dist = CategoricalDistribution(list(s.choices))
        elif s.kind == "pow2":
            lo, hi = math.ceil(math.log2(max(s.low, 1.0))), math.floor(math.log2(max(s.high, 1.0)))
            if lo > hi:
                continue
            name, dist = f"{knob}_log2", IntDistribution(lo, hi)
        elif s.kind == "int":
            lo, hi = math.ceil(s.low), math.floor(s.high)
            if lo > hi:
                continue
            dist = IntDistribution(lo, hi, log=s.log and lo >= 1)
        elif s.kind == "float":
            if s.low > s.high:
                continue
            dist = FloatDistribution(s.low, s.high, log=s.log and s.low > 0)
        else:
            continue
        out.append(_Param(knob, s, name, dist))
    return out


class _Connection(sqlite3.Connection):
    """SQLite connections of the study database: WAL, synchronous=NORMAL, like the ledger.

    Optuna commits after every ask and tell; with SQLite's default (a full fsync per
    commit) that costs more than the sampling itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")


# ---------------------------------------------------------------------------
# The proposer


class OptunaProposer:
    """See the module docstring. Deterministic for a given seed and history."""

    name = "optuna"

    def __init__(
        self,
        *,
        exclude: tuple[str, ...] = ("TIME_BUDGET",),
        overrides: Mapping[str, Mapping[str, object]] | None = None,
        seed: int = 0,
        sampler: str = "tpe",
        storage_dir: Path | None = None,
    ) -> None:
        """Make a proposer; the study itself is made (or loaded) by the first ``propose``.

        Args:
            exclude: knobs never to search.
            overrides: ``[knobs.NAME]`` settings of autoswarm.toml (low, high, log, choices).
            seed: seeds the sampler (and the random fallback for repeated points).
            sampler: ``"tpe"`` (TPE with the constant liar) or ``"cmaes"`` (CMA-ES).
            storage_dir: where ``optuna.db`` lives (the workspace's ``.autoswarm``), so that
                ``--resume`` continues the study; None keeps the study in memory.

        Raises:
            ProposerError: an unknown sampler, or CMA-ES without its ``cmaes`` package.
        """
        if sampler not in SAMPLERS:
            raise ProposerError(
                f"unknown Optuna sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}"
            )
        if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
            raise ProposerError(
                "the CMA-ES sampler needs the `cmaes` package: `pip install cmaes`, "
                "or choose the strategy `optuna` (TPE)"
            )
        self.exclude = exclude
        self.overrides = dict(overrides or {})
        self.seed = seed
        self.sampler = sampler
        self.storage_dir = storage_dir
        self._rng = random.Random(seed)
        self._study: optuna.Study | None = None
        self._storage: Any = None  # the RDBStorage, closed by close()
        self._uid = ""  # identifies this study in proposals' meta (trial numbers are per study)
        self._metric = ""
        self._params: list[_Param] = []
        self._dists: dict[str, BaseDistribution] = {}
        self._base_files: dict[str, str] = {}  # knob values are applied to these
        self._base_values: dict[str, Literal] = {}
        self._parent: str = ""  # the commit proposals are relative to
        self._parent_files: dict[str, str] = {}
        self._buffer: list[Experiment] = []  # observed before the study exists (resume)
        self._baseline: Experiment | None = None
        self._added: set[int] = set()  # experiments added to the study as whole trials
        self._dry = False

    # -- protocol ----------------------------------------------------------------

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (made by the first ``propose``).

        Raises:
            ProposerError: before the first ``propose``.
        """
        if self._study is None:
            raise ProposerError("the Optuna study is made by the first propose(); none yet")
        return self._study

    @property
    def exhausted(self) -> bool:
        """True only once a discrete space has no untried point left."""
        return self._dry

    def close(self) -> None:
        """Close the study's database connection (if any). Idempotent."""
        storage, self._storage = self._storage, None
        if storage is not None:
            storage.remove_session()
            storage.engine.dispose()

    def observe(self, experiment: Experiment) -> None:
        """Tell the study what came of a trial; add baseline runs as completed trials."""
        if experiment.kind is Kind.BASELINE and self._baseline is None:
            self._baseline = experiment
        if self._study is None:
            self._buffer.append(experiment)
        else:
            self._tell(experiment)

    def propose(self, ctx: Context, n: int) -> list[Proposal]:
        """Ask the study for up to ``n`` trials and turn each into a variant of the baseline.

        Raises:
            ProposerError: the editable files have no knob Optuna can search.
        """
        if n <= 0:
            return []
        study = self._open(ctx)
        for e in ctx.history:
            # The scheduler does not pass baseline runs to observe() while it runs (only
            # when it replays a resumed run), so they are picked up here; once each.
            if e.kind is Kind.BASELINE and e.id not in self._added:
                self._tell(e)
        known = _known_values(ctx, self._metric)
        seen = set(ctx.seen) | {fingerprint(self._base_files)}
        out: list[Proposal] = []
        asks = 0
        while len(out) < n and asks < n + _EXTRA_ASKS:
            asks += 1
            trial = study.ask(self._dists)
            prop = self._proposal(trial, seen, known)
            if prop is not None:
                out.append(prop)
        # The sampler keeps returning points tried already (a small discrete space, or a
        # converged search): go on with random points that were not.
        draws = 0
        while len(out) < n and draws < _RANDOM_DRAWS:
            draws += 1
            params = {p.name: self._random_param(p) for p in self._params}
            values = {p.knob: p.value(params[p.name]) for p in self._params}
            if self._fingerprint(values) in seen:
                continue
            study.enqueue_trial(params)
            prop = self._proposal(study.ask(self._dists), seen, known)
            if prop is not None:
                out.append(prop)
        self._dry = not out and draws >= _RANDOM_DRAWS and not ctx.running
        return out

    # -- the study -------------------------------------------------------------------

    def _open(self, ctx: Context) -> optuna.Study:
        """Make or load the study on the first call; fix the space; replay observations."""
        if self._study is not None:
            return self._study
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._metric = ctx.metric
        self._set_base(ctx)
        spaces = knob_spaces(self._base_files, self.exclude, self.overrides)
        self._params = _params_of(spaces)
        if not self._params:
            raise ProposerError(
                "the editable files have no knob Optuna can search (module-level UPPER_CASE "
                "numeric, boolean or choice literals, see [knobs] in autoswarm.toml): add some, "
                "or use a strategy that edits code"
            )
        self._dists = {p.name: p.distribution for p in self._params}
        base = knobs_of(self._base_files, self.exclude)
        self._base_values = {p.knob: base[p.knob].value for p in self._params}
        storage: Any = None
        if self.storage_dir is not None:
            self.storage_dir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{(self.storage_dir / 'optuna.db').resolve()}"
            try:
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 30, "factory": _Connection}}
                )
            except Exception as e:  # a corrupt or newer database: say where it is
                raise ProposerError(
                    f"cannot open the Optuna study in {self.storage_dir / 'optuna.db'}: {e} "
                    f"(move the file away to start a fresh study)"
                ) from e
        self._storage = storage
        study = optuna.create_study(
            storage=storage,
            sampler=self._make_sampler(),
            study_name=(ctx.tag or "autoswarm") if storage is not None else None,
            direction=ctx.direction.value,
            load_if_exists=True,
        )
        if study.direction.name.lower() != ctx.direction.value:
            raise ProposerError(
                f"the Optuna study {study.study_name!r} in {self.storage_dir} optimises in the "
                f"other direction: move optuna.db away or use another --tag"
            )
        uid = study.user_attrs.get("autoswarm_id")
        if not isinstance(uid, str):
            uid = uuid.uuid4().hex[:12]
            study.set_user_attr("autoswarm_id", uid)
        self._uid = uid
        for t in study.get_trials(deepcopy=False):
            exp_id = t.user_attrs.get("autoswarm_experiment")
            if isinstance(exp_id, int):
                self._added.add(exp_id)
        self._study = study
        buffered, self._buffer = self._buffer, []
        for exp in buffered:
            self._tell(exp)
        return study

    def _make_sampler(self) -> optuna.samplers.BaseSampler:
        import optuna

        with warnings.catch_warnings():
            # multivariate and constant_liar are marked experimental; they work well here.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.sampler == "cmaes":
                return optuna.samplers.CmaEsSampler(seed=self.seed, warn_independent_sampling=False)
            return optuna.samplers.TPESampler(seed=self.seed, constant_liar=True, multivariate=True)

    def _set_base(self, ctx: Context) -> None:
        """The files the space is built from: the baseline's, also when resuming from a later best.

        A fresh run proposes first while the best is still the baseline. A resumed run may
        start from a kept variant: its knobs are set back to the baseline's values (recorded
        in the baseline's meta) so the space, and so the study's distributions, stay the same.
        """
        self._base_files = dict(ctx.best_files)
        self._parent, self._parent_files = ctx.best_commit, dict(ctx.best_files)
        b = self._baseline
        if b is None or b.commit == ctx.best_commit:
            return
        current = knobs_of(ctx.best_files)
        values = {
            k: v
            for k, v in dict(b.knobs or {}).items()
            if k in current and current[k].value != v and isinstance(v, bool | int | float | str)
        }
        try:
            restored = apply_values(ctx.best_files, values)
        except (KeyError, ValueError, SyntaxError):
            return
        self._base_files = restored
        if fingerprint(restored) == b.fingerprint:
            # Exactly the baseline's files: propose relative to the baseline commit.
            self._parent, self._parent_files = b.commit, restored

    def _tell(self, exp: Experiment) -> None:
        """Tell the study about one finished experiment (at most once per trial/experiment)."""
        study = self.study
        if exp.kind is Kind.CONFIRM or not exp.status.is_finished():
            return  # a confirmation re-runs a trial whose own value was told already
        value = exp.value(self._metric) if exp.status in (Status.KEEP, Status.DISCARD) else None
        if exp.kind is Kind.BASELINE:
            if value is not None:
                self._add(exp, dict(exp.knobs or {}), value)
            return
        number = exp.meta.get("optuna_trial")
        if not isinstance(number, int) or exp.proposer != self.name:
            return
        if exp.meta.get("optuna_study") == self._uid and 0 <= number < len(
            study.get_trials(deepcopy=False)
        ):
            import optuna

            if value is None:
                study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            else:
                study.tell(number, value, skip_if_finished=True)
        elif value is not None:
            # A trial of another study (an in-memory one before --resume): add its point.
            self._add(exp, dict(exp.meta.get("values", {})), value)

    def _add(self, exp: Experiment, values: Mapping[str, Any], value: float) -> None:
        """Add an experiment's point, with its value, as a completed trial (once)."""
        if exp.id in self._added:
            return
        import optuna

        params: dict[str, Any] = {}
        dists: dict[str, BaseDistribution] = {}
        for p in self._params:
            if p.knob in values and (x := p.param(values[p.knob])) is not None:
                params[p.name], dists[p.name] = x, p.distribution
        if not params:
            return
        self.study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                value=value,
                user_attrs={"autoswarm_experiment": exp.id},
            )
        )
        self._added.add(exp.id)

    # -- trials to proposals ------------------------------------------------------------

    def _proposal(
        self, trial: optuna.trial.Trial, seen: set[str], known: Mapping[str, float]
    ) -> Proposal | None:
        """The proposal for an asked trial, or None (the trial is told) if it was tried already."""
        import optuna

        study = self.study
        values = {p.knob: p.value(trial.params[p.name]) for p in self._params}
        try:
            files = apply_values(self._base_files, values)
        except (KeyError, ValueError):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
        fp = fingerprint(files)
        if fp in seen:
            # Tried already (or running): tell the known value, so the sampler learns from it.
            if fp in known:
                study.tell(trial, known[fp])
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
        seen.add(fp)
        changes = [
            f"{k} {format_literal(self._base_values[k])} -> {format_literal(v)}"
            for k, v in values.items()
            if v != self._base_values[k] or type(v) is not type(self._base_values[k])
        ]
        return Proposal(
            description=", ".join(changes) or f"optuna trial {trial.number}",
            files={p: t for p, t in files.items() if t != self._parent_files.get(p)},
            parent=self._parent,
            proposer=self.name,
            meta={"optuna_trial": trial.number, "optuna_study": self._uid, "values": values},
        )

    def _fingerprint(self, values: Mapping[str, Literal]) -> str:
        try:
            return fingerprint(apply_values(self._base_files, values))
        except (KeyError, ValueError):
            return ""

    def _random_param(self, p: _Param) -> Any:
        """A random value of ``p``'s distribution (log-uniform on a log scale)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        d = p.distribution
        if isinstance(d, CategoricalDistribution):
            return self._rng.choice(list(d.choices))
        assert isinstance(d, FloatDistribution | IntDistribution)
        if d.log:
            x = math.exp(self._rng.uniform(math.log(d.low), math.log(d.high)))
        else:
            x = self._rng.uniform(d.low, d.high)
        return min(d.high, max(d.low, round(x))) if isinstance(d, IntDistribution) else x


def _known_values(ctx: Context, metric: str) -> dict[str, float]:
    """Mean metric of every finished variant with a value, by fingerprint."""
    by_fp: dict[str, list[float]] = {}
    for e in ctx.history:
        fp, v = e.fingerprint, e.value(metric)
        if isinstance(fp, str) and v is not None and e.status in (Status.KEEP, Status.DISCARD):
            by_fp.setdefault(fp, []).append(v)
    return {fp: statistics.fmean(vs) for fp, vs in by_fp.items()}


__all__ = ["SAMPLERS", "OptunaProposer"]
