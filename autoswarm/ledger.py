"""The ledger: a SQLite database (WAL) that is the single source of truth of a workspace.

Every experiment ever proposed is a row, written *before* it runs and updated when
it finishes, so an orchestrator killed at any moment loses nothing: resuming a run
means re-reading this file. results.tsv, ``autoswarm status`` and every report are
read-only views of it. Other processes may read while the orchestrator writes (WAL).

Tables::

    meta         key/value, holds schema_version
    runs         one per tag: config, base commit, branch
    sessions     one per `autoswarm run` process on a run (for elapsed time and busy fraction)
    experiments  one per proposal: provenance, status, metrics, timing, process ids
    submissions  variants queued by `autoswarm submit` (another process) for an external run;
                 a submission's id is reserved in the experiments' id sequence, so the
                 experiment it becomes has the same id
"""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoswarm.errors import LedgerError
from autoswarm.types import Evidence, Experiment, Kind, Purpose, Status

SCHEMA_VERSION = 6

# The scheduler's own facts about an experiment, once keys of the proposer's meta
# (schema 3) and columns since schema 4: meta key -> column. Re-runs also carried flags
# (confirms/replicates/promoted/final/reproduce) that schema 4 reads as one purpose.
_MOVED_FACTS = {
    "fingerprint": "fingerprint",
    "dedup": "dedup",
    "knobs": "knobs",
    "duplicate_of": "duplicate_of",
    "confirms": "rerun_of",
    "tier": "pinned_tier",
    "z_before": "z_before",
    "screening": "screening",
    "evidence": "evidence",
    "kept_at": "kept_at",
    "revoked_at": "revoked_at",
    "validated_on": "validated_on",
}
_MOVED_FLAGS = ("replicates", "promoted", "final", "reproduce", "validated")

# Each entry upgrades the schema by one version; never edit a released entry.
_MIGRATIONS: dict[int, Sequence[str]] = {
    1: (
        """CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            tag TEXT NOT NULL UNIQUE,
            branch TEXT NOT NULL,
            base_commit TEXT NOT NULL,
            config TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            pid INTEGER NOT NULL,
            workers INTEGER NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            ended_at REAL,
            end_reason TEXT NOT NULL DEFAULT ''
        )""",
        """CREATE TABLE experiments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            parent TEXT NOT NULL,
            commit_sha TEXT NOT NULL,
            diff TEXT NOT NULL DEFAULT '',
            description TEXT NOT NULL,
            proposer TEXT NOT NULL,
            seed INTEGER NOT NULL,
            slot INTEGER,
            metrics TEXT NOT NULL DEFAULT '{}',
            metric REAL,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            log_path TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            meta TEXT NOT NULL DEFAULT '{}',
            handle TEXT,
            attempts INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE INDEX experiments_run ON experiments(run_id, status)""",
    ),
    # 2: the hardware tier an experiment ran on ([[pool.tiers]] name; '' = implicit local tier).
    2: ("""ALTER TABLE experiments ADD COLUMN tier TEXT NOT NULL DEFAULT ''""",),
    # 3: variants queued by `autoswarm submit` (external-agent mode); id = the experiment's id.
    3: (
        """CREATE TABLE IF NOT EXISTS submissions (
            id INTEGER PRIMARY KEY,
            tag TEXT,
            parent TEXT NOT NULL,
            files TEXT NOT NULL,
            diff TEXT NOT NULL DEFAULT '',
            description TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
    ),
    # 4: the scheduler's facts leave the proposer's meta for columns of their own
    # (Experiment.purpose, rerun_of, pinned_tier, evidence, ...); meta keeps the rest.
    4: (
        *(
            f"ALTER TABLE experiments ADD COLUMN {column} {kind}"
            for column, kind in (
                ("fingerprint", "TEXT"),
                ("dedup", "TEXT"),
                ("knobs", "TEXT"),  # JSON object
                ("duplicate_of", "INTEGER"),
                ("purpose", "TEXT"),
                ("rerun_of", "INTEGER"),
                ("pinned_tier", "TEXT"),
                ("z_before", "REAL"),
                ("screening", "TEXT"),  # JSON object (Evidence.as_meta)
                ("evidence", "TEXT"),  # JSON object (Evidence.as_meta)
                ("kept_at", "REAL"),
                ("revoked_at", "REAL"),
                ("validated_on", "TEXT"),
                ("validated", "INTEGER NOT NULL DEFAULT 0"),
            )
        ),
        "UPDATE experiments SET "
        + ", ".join(
            f"{column} = json_extract(meta, '$.{key}')" for key, column in _MOVED_FACTS.items()
        )
        + """, validated = COALESCE(json_extract(meta, '$.validated'), 0) = 1,
            purpose = CASE WHEN kind = 'confirm' THEN CASE
                WHEN json_extract(meta, '$.reproduce') THEN 'reproduce'
                WHEN json_extract(meta, '$.final') THEN 'final'
                WHEN json_extract(meta, '$.replicates') THEN 'replicate'
                WHEN json_extract(meta, '$.promoted') THEN 'validate'
                ELSE 'confirm' END END
            WHERE json_valid(meta)""",
        "UPDATE experiments SET meta = json_remove(meta, "
        + ", ".join(f"'$.{k}'" for k in (*_MOVED_FACTS, *_MOVED_FLAGS))
        + ") WHERE json_valid(meta)",
    ),
    # 5: how many orchestrators died while the experiment ran (a variant that ends the run
    # is recorded as a crash the second time, not re-queued forever; issue 15).
    # An index that holds everything `status` reads of every row, so its counts, slot
    # time and noise model are read from the index alone (about a tenth of the table).
    5: (
        """ALTER TABLE experiments ADD COLUMN orphaned INTEGER NOT NULL DEFAULT 0""",
        """CREATE INDEX experiments_view ON experiments(run_id, kind, status, tier,
            pinned_tier, started_at, finished_at, commit_sha, metric)""",
    ),
    # 6: what the locked evaluation measured on the sealed test split (issue 16). A column
    # of its own, never read into an Experiment: proposers are handed Experiments, and no
    # proposer may see a test value.
    6: ("""ALTER TABLE experiments ADD COLUMN sealed TEXT""",),
}


@dataclass(frozen=True, kw_only=True)
class Tally:
    """How many of a run's experiments have one status on one tier, and their slot time."""

    status: Status
    tier: str
    pinned_tier: str | None
    count: int
    ran: int  # of them, with a start and an end (or still running): they cost slot time
    seconds: float


@dataclass(frozen=True, kw_only=True)
class HeldOut:
    """One experiment's test values (the sealed split) beside its metric: the human's view."""

    id: int
    kind: Kind
    status: Status
    commit: str
    value: float | None  # the metric the decisions used
    sealed: Mapping[str, float]


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    id: int
    tag: str
    branch: str
    base_commit: str
    config: Mapping[str, Any]
    created_at: float


@dataclass(frozen=True, kw_only=True)
class SessionRecord:
    id: int
    run_id: int
    pid: int
    workers: int
    started_at: float
    heartbeat_at: float
    ended_at: float | None
    end_reason: str

    @property
    def seconds(self) -> float:
        end = self.ended_at if self.ended_at is not None else self.heartbeat_at
        return max(0.0, end - self.started_at)

    def live(self, now: float) -> bool:
        """True while its orchestrator runs: not ended, a heartbeat in the last 30 s, and
        its process still there (a killed orchestrator is not "active" for 30 s more)."""
        if self.ended_at is not None or now - self.heartbeat_at >= LIVE_HEARTBEAT_S:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # another user's process (EPERM): it exists
            return True
        return True


# A session whose heartbeat is older than this has no orchestrator any more.
LIVE_HEARTBEAT_S = 30.0


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused (rows have no reference cycles to collect).

    Building a long run's rows makes millions of objects, and every one of the collector's
    passes over the ones made so far costs more than the last: with it running, reading
    100,000 experiments took 40% longer.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _retry_locked(op: Callable[[], object], patience_s: float = 30.0) -> None:
    """Run ``op``, retrying while another connection holds the lock it needs.

    Switching a new file to WAL takes an exclusive lock, and SQLite reports a busy
    file at once instead of waiting (its busy timeout does not apply there), so two
    processes creating the ledger together would fail without this.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            op()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class _FileIds:
    """The (device, inode) of the ledger file and of its WAL, as this connection opened them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, tuple[int, int]] = {}

    @staticmethod
    def _id(path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    def note(self, conn: sqlite3.Connection) -> None:
        """Remember the files once a read has made SQLite open (or create) the WAL."""
        conn.execute("SELECT 1 FROM meta LIMIT 1").fetchall()
        for suffix in ("", "-wal"):
            found = self._id(Path(f"{self.path}{suffix}"))
            if found is not None:
                self.ids[suffix] = found

    def is_ours(self, suffix: str, path: Path) -> bool:
        return self.ids.get(suffix) is not None and self._id(path) == self.ids[suffix]

    def changed(self) -> str | None:
        """What happened to the files since :meth:`note` (``None``: nothing)."""
        for suffix, name in (("", "file"), ("-wal", "write-ahead log")):
            want = self.ids.get(suffix)
            if want is None:
                continue
            found = self._id(Path(f"{self.path}{suffix}"))
            if found is None:
                return "was deleted" if not suffix else f"lost its {name} ({self.path.name}-wal)"
            if found != want:
                return "was replaced by another file" if not suffix else f"had its {name} replaced"
        return None


class Ledger:
    """Thread-safe access to ``.autoswarm/ledger.sqlite``.

    One connection, guarded by a lock: the orchestrator writes from its loop thread
    and backends' threads never touch the ledger directly.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            _retry_locked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as e:
            raise LedgerError(
                f"cannot open the ledger {path}: {e}. If the file is damaged, move it aside "
                "together with results.tsv and .autoswarm/logs (a new run rewrites both; "
                "they and the git branch are the copy of the results that is left), e.g. "
                f"mv {path.parent} {path.parent}.damaged && mv results.tsv results.damaged.tsv"
            ) from e
        self._lock = threading.RLock()
        self._broken: str | None = None
        self._files = _FileIds(path)
        self._migrate()
        self._files.note(self._conn)

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def broken(self) -> str | None:
        """Why this ledger stopped taking writes (its file was deleted or replaced), or None."""
        return self._broken

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._verify()
            try:
                with self._conn:
                    yield self._conn
            except sqlite3.DatabaseError as e:
                raise LedgerError(f"ledger write failed ({self.path}): {e}") from e

    def _verify(self) -> None:
        """Before every commit of state: the file and its WAL are still the ones we opened.

        A process that deletes ``ledger.sqlite`` (or its ``-wal``) or puts another file in
        its place leaves this connection writing to a file no one will ever open again,
        and the next ``autoswarm`` would start from an empty or foreign ledger. So the
        first write after it saves what this connection still sees (a whole copy, through
        SQLite's backup API) back at the ledger's path, keeps the file found there, and
        stops with one line; every later write fails with the same line.

        Raises:
            LedgerError: the ledger was deleted or replaced (say what was saved where).
        """
        if self._broken is None:
            what = self._files.changed()
            if what is None:
                return
            self._broken = self._rescue(what)
        raise LedgerError(self._broken)

    def _rescue(self, what: str) -> str:
        """Put this connection's ledger back at its path; the message for the error."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.path
        saved = path.with_name(f"{path.name}.rescued-{stamp}")
        try:
            dst = sqlite3.connect(str(saved))
            try:
                self._conn.backup(dst)
            finally:
                dst.close()
        except sqlite3.DatabaseError as e:
            return (
                f"the ledger {path} {what} while this run was writing it, and saving this "
                f"run's copy failed ({e}): stopped. Run experiments inside the sandbox "
                '([sandbox] mode = "auto"); results.tsv and the git branch hold the results'
            )
        self._conn.close()
        kept = []
        for suffix in ("", "-wal", "-shm"):
            found = Path(f"{path}{suffix}")
            if not found.exists():
                continue
            if suffix == "-shm" or self._files.is_ours(suffix, found):
                found.unlink()  # this connection's own (stale) file; the saved copy is whole
            else:
                aside = path.with_name(f"{path.name}{suffix}.found-{stamp}")
                found.rename(aside)
                kept.append(aside.name)
        os.replace(saved, path)
        self._conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row  # reads go on (status, results.tsv); writes stop
        also = f"; the file found in its place is kept as {', '.join(kept)}" if kept else ""
        return (
            f"the ledger {path} {what} while this run was writing it (an experiment outside "
            f"the sandbox? see `autoswarm doctor`): stopped. What this run had recorded is "
            f"saved back at {path.name}{also}; continue with `autoswarm run --resume`"
        )

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, safely when processes open the file at once.

        The version is read again under SQLite's write lock (BEGIN IMMEDIATE), so of two
        processes that both saw an old schema only the first migrates; the other finds
        the new version and does nothing.
        """
        with self._lock:
            if self._read_version() == SCHEMA_VERSION:
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    version = self._read_version()
                    if version > SCHEMA_VERSION:
                        raise LedgerError(
                            f"{self.path} has schema version {version}, newer than this "
                            f"autoswarm understands ({SCHEMA_VERSION}): upgrade autoswarm "
                            "(pip install -U autoswarm)"
                        )
                    for v in range(version + 1, SCHEMA_VERSION + 1):
                        for stmt in _MIGRATIONS[v]:
                            self._conn.execute(stmt)
                        self._conn.execute(
                            "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                            (str(v),),
                        )
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                raise LedgerError(f"cannot upgrade the ledger {self.path}: {e}") from e

    def _read_version(self) -> int:
        """The schema version recorded in the file (0 for a new, empty file)."""
        has_meta = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return 0
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if not row:
            return 0
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise LedgerError(
                f"{self.path} records schema version {row[0]!r}, which is not a number: the "
                "file was changed by something other than autoswarm. Restore it from a backup, "
                "or move it aside (with results.tsv and .autoswarm/logs) to start a new ledger"
            ) from None

    @property
    def schema_version(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0])

    # -- runs ----------------------------------------------------------------

    def create_run(
        self, *, tag: str, branch: str, base_commit: str, config: Mapping[str, Any], now: float
    ) -> RunRecord:
        try:
            with self._tx() as c:
                cur = c.execute(
                    "INSERT INTO runs(tag, branch, base_commit, config, created_at) VALUES (?,?,?,?,?)",
                    (tag, branch, base_commit, json.dumps(config, sort_keys=True), now),
                )
        except LedgerError as e:
            if "UNIQUE" in str(e):
                raise LedgerError(
                    f"a run tagged {tag!r} already exists: continue it with "
                    f"`autoswarm run --resume --tag {tag}` or start another with a new --tag"
                ) from e
            raise
        run = self.get_run(tag)
        assert run is not None and run.id == cur.lastrowid
        return run

    def update_run_config(self, run_id: int, config: Mapping[str, Any]) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET config=? WHERE id=?", (json.dumps(config, sort_keys=True), run_id)
            )

    def get_run(self, tag: str | None = None) -> RunRecord | None:
        """The run with ``tag``, or the most recent run when ``tag`` is None."""
        with self._lock:
            if tag is None:
                row = self._conn.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
            else:
                row = self._conn.execute("SELECT * FROM runs WHERE tag=?", (tag,)).fetchone()
        if row is None:
            return None
        return RunRecord(
            id=row["id"],
            tag=row["tag"],
            branch=row["branch"],
            base_commit=row["base_commit"],
            config=json.loads(row["config"]),
            created_at=row["created_at"],
        )

    def runs(self) -> list[RunRecord]:
        with self._lock:
            tags = [r[0] for r in self._conn.execute("SELECT tag FROM runs ORDER BY id")]
        return [r for t in tags if (r := self.get_run(t)) is not None]

    # -- sessions ------------------------------------------------------------

    def start_session(self, run_id: int, *, pid: int, workers: int, now: float) -> int:
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO sessions(run_id, pid, workers, started_at, heartbeat_at) VALUES (?,?,?,?,?)",
                (run_id, pid, workers, now, now),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def heartbeat(self, session_id: int, now: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE sessions SET heartbeat_at=? WHERE id=?", (now, session_id))

    def end_session(self, session_id: int, *, now: float, reason: str) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE sessions SET heartbeat_at=?, ended_at=?, end_reason=? WHERE id=?",
                (now, now, reason, session_id),
            )

    def sessions(self, run_id: int) -> list[SessionRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM sessions WHERE run_id=? ORDER BY id", (run_id,)
            ).fetchall()
        return [
            SessionRecord(
                id=r["id"],
                run_id=r["run_id"],
                pid=r["pid"],
                workers=r["workers"],
                started_at=r["started_at"],
                heartbeat_at=r["heartbeat_at"],
                ended_at=r["ended_at"],
                end_reason=r["end_reason"],
            )
            for r in rows
        ]

    # -- experiments ---------------------------------------------------------

    def add_experiment(
        self,
        *,
        run_id: int,
        kind: Kind,
        status: Status,
        parent: str,
        commit: str,
        description: str,
        proposer: str,
        seed: int,
        now: float,
        diff: str = "",
        reason: str = "",
        meta: Mapping[str, Any] | None = None,
        exp_id: int | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> Experiment:
        """Insert an experiment row; ``exp_id`` = an id reserved by :meth:`add_submission`.

        ``facts``: the scheduler's own facts, by :class:`~autoswarm.types.Experiment` field
        name (``purpose``, ``rerun_of``, ``pinned_tier``, ``fingerprint``, ...); ``meta`` is
        the proposer's.
        """
        finished = now if status.is_finished() else None
        columns, values = _fact_columns(facts or {})
        with self._tx() as c:
            cur = c.execute(
                f"""INSERT INTO experiments(id, run_id, kind, status, parent, commit_sha, diff,
                       description, proposer, seed, created_at, finished_at, reason, meta
                       {"".join(", " + col for col in columns)})
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?{",?" * len(columns)})""",
                (
                    exp_id,
                    run_id,
                    kind.value,
                    status.value,
                    parent,
                    commit,
                    diff,
                    description,
                    proposer,
                    seed,
                    now,
                    finished,
                    reason,
                    json.dumps(dict(meta or {}), sort_keys=True, default=str),
                    *values,
                ),
            )
        assert cur.lastrowid is not None
        return self.get(cur.lastrowid)

    def mark_running(
        self, exp_id: int, *, slot: int, started_at: float, log_path: str, tier: str = ""
    ) -> None:
        with self._tx() as c:
            c.execute(
                """UPDATE experiments SET status=?, slot=?, started_at=?, log_path=?, tier=?,
                       attempts=attempts+1, handle=NULL WHERE id=?""",
                (Status.RUNNING.value, slot, started_at, log_path, tier, exp_id),
            )

    def set_handle(self, exp_id: int, handle: str) -> None:
        """Remember the backend's handle of a running job (to kill or re-attach after a crash)."""
        with self._tx() as c:
            c.execute("UPDATE experiments SET handle=? WHERE id=?", (handle, exp_id))

    def handle(self, exp_id: int) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT handle FROM experiments WHERE id=?", (exp_id,)
            ).fetchone()
        return None if row is None else row[0]

    def finish(
        self,
        exp_id: int,
        *,
        status: Status,
        metrics: Mapping[str, float],
        metric: float | None,
        finished_at: float,
        reason: str = "",
        started_at: float | None = None,
        meta: Mapping[str, Any] | None = None,
        facts: Mapping[str, Any] | None = None,
        sealed: Mapping[str, float] | None = None,
    ) -> Experiment:
        """Record the end of an experiment (any state but QUEUED/RUNNING).

        ``meta`` replaces the proposer's meta when given. ``facts``: scheduler facts to set
        with it (``evidence``, ``kept_at``, ...), by :class:`~autoswarm.types.Experiment`
        field name; the others stay as they are. ``sealed``: the evaluation's test values
        (read back only by :meth:`sealed_metrics`, never into the Experiment).
        """
        if status in (Status.QUEUED, Status.RUNNING):
            raise ValueError(f"finish() needs an end state, got {status}")
        columns, values = _fact_columns(facts or {})
        if sealed:
            columns.append("sealed")
            values.append(json.dumps({k: _jsonable(v) for k, v in sealed.items()}, sort_keys=True))
        with self._tx() as c:
            c.execute(
                f"""UPDATE experiments SET status=?, metrics=?, metric=?, finished_at=?, reason=?,
                       started_at=COALESCE(?, started_at), meta=COALESCE(?, meta)
                       {"".join(f", {col}=?" for col in columns)}
                   WHERE id=?""",
                (
                    status.value,
                    json.dumps({k: _jsonable(v) for k, v in metrics.items()}, sort_keys=True),
                    metric,
                    finished_at,
                    reason,
                    started_at,
                    None if meta is None else json.dumps(dict(meta), sort_keys=True, default=str),
                    *values,
                    exp_id,
                ),
            )
        return self.get(exp_id)

    def sealed_metrics(self, run_id: int) -> list[HeldOut]:
        """The test values of a run's experiments, with what the human compares them to.

        Never part of an :class:`~autoswarm.types.Experiment`, so nothing that hands
        experiments to a proposer can pass them on.
        """
        with self._lock:
            rows = self._conn.execute(
                """SELECT id, kind, status, commit_sha, metric, sealed FROM experiments
                   WHERE +run_id=? AND sealed IS NOT NULL ORDER BY id""",
                (run_id,),
            ).fetchall()
        return [
            HeldOut(
                id=i,
                kind=Kind(kind),
                status=Status(status),
                commit=commit,
                value=value,
                sealed={k: float(v) for k, v in json.loads(text).items()},
            )
            for i, kind, status, commit, value, text in rows
        ]

    def requeue(self, exp_id: int, *, reason: str) -> None:
        """Put an interrupted or orphaned experiment back in the queue (same id, same commit)."""
        with self._tx() as c:
            c.execute(
                """UPDATE experiments SET status=?, slot=NULL, started_at=NULL, finished_at=NULL,
                       handle=NULL, reason=? WHERE id=?""",
                (Status.QUEUED.value, reason, exp_id),
            )

    def orphaned(self, exp_id: int) -> int:
        """Count one more orchestrator that died while ``exp_id`` ran; the count so far."""
        with self._tx() as c:
            c.execute("UPDATE experiments SET orphaned = orphaned + 1 WHERE id=?", (exp_id,))
            row = c.execute("SELECT orphaned FROM experiments WHERE id=?", (exp_id,)).fetchone()
        return int(row[0]) if row else 0

    def get(self, exp_id: int) -> Experiment:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM experiments WHERE id=?", (exp_id,)
            ).fetchone()
        if row is None:
            raise LedgerError(f"no experiment with id {exp_id} in {self.path}")
        return _experiment(row)

    def experiments(
        self,
        run_id: int,
        *,
        statuses: Sequence[Status] | None = None,
        kinds: Sequence[Kind] | None = None,
        since_id: int = 0,
        summary: bool = False,
    ) -> list[Experiment]:
        """Experiments of a run in id order, optionally filtered by status and kind.

        ``summary``: for a view over the whole run that reads a few facts of each row
        (``autoswarm status``): the rows come without their diff, and each one's meta is
        parsed when first read (a long run's rows are mostly meta, and parsing all of it
        was most of the time ``status`` took).
        """
        columns = _SUMMARY_COLUMNS if summary else _COLUMNS
        # Without a status filter, "+run_id" keeps SQLite off the (run_id, status) index:
        # through it, every row of the run is found and then sorted by id (half a second
        # at 100,000); walking the ids from since_id needs no sort and reads only the tail.
        sql = f"SELECT {columns} FROM experiments WHERE +run_id=? AND id>?"
        args: list[Any] = [run_id, since_id]
        if statuses or kinds:  # a few rows of the run: found through an index
            sql = f"SELECT {columns} FROM experiments WHERE run_id=? AND id>?"
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += [s.value for s in statuses]
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += [k.value for k in kinds]
        with self._lock, _no_gc():
            cur = self._conn.cursor()
            cur.row_factory = None  # plain tuples (read by position): a run has many rows
            rows = cur.execute(sql + " ORDER BY id", args).fetchall()
            return [_experiment(r, summary=summary) for r in rows]

    # -- aggregates (views over a whole run without building its rows) ----------

    def tally(self, run_id: int, now: float) -> list[Tally]:
        """Counts and slot time of a run's experiments by status and tier, in one pass.

        An experiment's slot time is from its start to its end (to ``now`` while it runs,
        never negative), as :func:`autoswarm.costs.experiment_cost` counts it.
        """
        sql = """SELECT status, tier, pinned_tier, COUNT(*),
                   TOTAL(started_at IS NOT NULL
                         AND (finished_at IS NOT NULL OR status = 'running')),
                   TOTAL(CASE WHEN started_at IS NULL THEN 0.0
                              WHEN finished_at IS NOT NULL THEN MAX(0.0, finished_at - started_at)
                              WHEN status = 'running' THEN MAX(0.0, ? - started_at)
                              ELSE 0.0 END)
                 FROM experiments INDEXED BY experiments_view
                 WHERE run_id=? GROUP BY status, tier, pinned_tier"""
        with self._lock:
            rows = self._conn.execute(sql, (now, run_id)).fetchall()
        return [
            Tally(
                status=_STATUSES.get(st) or Status(st),
                tier=tier,
                pinned_tier=pinned,
                count=int(n),
                ran=int(ran),
                seconds=float(sec),
            )
            for st, tier, pinned, n, ran, sec in rows
        ]

    def median_duration(self, run_id: int, statuses: Sequence[Status]) -> float | None:
        """The median run time (end - start) of the run's experiments in ``statuses``
        that have both, sorted by SQLite (None when there are none)."""
        where = f"""FROM experiments INDEXED BY experiments_view
                    WHERE run_id=? AND status IN ({",".join("?" * len(statuses))})
                    AND started_at IS NOT NULL AND finished_at IS NOT NULL"""
        args = (run_id, *(s.value for s in statuses))
        with self._lock:
            (n,) = self._conn.execute(f"SELECT COUNT(*) {where}", args).fetchone()
            if not n:
                return None
            mid = self._conn.execute(
                f"SELECT finished_at - started_at AS d {where} ORDER BY d LIMIT ? OFFSET ?",
                (*args, 2 - n % 2, (n - 1) // 2),
            ).fetchall()
        return sum(float(d) for (d,) in mid) / len(mid)

    def measurements(
        self, run_id: int, *, repeated: bool = False
    ) -> list[tuple[int, str, str, str | None, float]]:
        """(id, commit, tier, pinned tier, value) of every measurement of a commit, read
        from an index without building the rows: the noise model's input at any size.

        The same choice :func:`autoswarm.analysis.noise.measured` makes on rows (a test
        holds the two together): a finite value of the run's metric, a commit, a status
        in ``MEASURED``, and a baseline repeat only if it was kept.
        """
        from autoswarm.analysis.noise import MEASURED

        statuses = ",".join(f"'{s.value}'" for s in MEASURED)
        where = f"""FROM experiments INDEXED BY experiments_view
                  WHERE run_id=? AND status IN ({statuses}) AND commit_sha != ''
                  AND metric IS NOT NULL AND metric > -9e999 AND metric < 9e999
                  AND (kind != '{Kind.BASELINE.value}' OR status = '{Status.KEEP.value}')"""
        # ``repeated``: only commits measured more than once (the others cannot show noise).
        sql = f"SELECT id, commit_sha, tier, pinned_tier, metric {where}"
        if repeated:
            sql += f" AND commit_sha IN (SELECT commit_sha {where} GROUP BY commit_sha"
            sql += " HAVING COUNT(*) > 1)"
        with self._lock:
            cur = self._conn.cursor()
            cur.row_factory = None
            return cur.execute(sql + " ORDER BY id", (run_id,) * (1 + repeated)).fetchall()

    def attempts(self, exp_id: int) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT attempts FROM experiments WHERE id=?", (exp_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    # -- submissions (external-agent mode) -------------------------------------
    # `autoswarm submit` runs in another process while `autoswarm run` owns the
    # workspace; SQLite (WAL) serialises the two writers. The submission's id is
    # taken from the experiments' AUTOINCREMENT sequence in the same transaction,
    # so no experiment ever gets it and the run later inserts the experiment under
    # exactly that id: the agent deals with one id from submit to results.

    def add_submission(
        self,
        *,
        parent: str,
        files: Mapping[str, str],
        description: str,
        now: float,
        diff: str = "",
        tag: str | None = None,
    ) -> int:
        """Queue a variant for an external run; returns its id (= its future experiment id)."""
        with self._tx() as c:
            # IMMEDIATE: take the write lock before reading the sequence, so neither the
            # run's next experiment nor a concurrent submit can take the same id.
            if not c.in_transaction:
                c.execute("BEGIN IMMEDIATE")
            seq = c.execute("SELECT seq FROM sqlite_sequence WHERE name='experiments'").fetchone()
            top = c.execute("SELECT COALESCE(MAX(id), 0) FROM experiments").fetchone()[0]
            subs = c.execute("SELECT COALESCE(MAX(id), 0) FROM submissions").fetchone()[0]
            new_id = max(int(seq[0]) if seq else 0, int(top), int(subs)) + 1
            if seq:
                c.execute("UPDATE sqlite_sequence SET seq=? WHERE name='experiments'", (new_id,))
            else:
                c.execute(
                    "INSERT INTO sqlite_sequence(name, seq) VALUES ('experiments', ?)", (new_id,)
                )
            c.execute(
                """INSERT INTO submissions(id, tag, parent, files, diff, description, created_at)
                   VALUES (?,?,?,?,?,?,?)""",
                (
                    new_id,
                    tag,
                    parent,
                    json.dumps(dict(files), sort_keys=True),
                    diff,
                    description,
                    now,
                ),
            )
        return new_id

    def pending_submissions(
        self, *, tag: str | None = None, exclude: Sequence[int] = (), limit: int = 0
    ) -> list[SubmissionRecord]:
        """Submissions no experiment was made of yet, oldest first (for ``tag`` or untagged)."""
        sql = """SELECT s.* FROM submissions s LEFT JOIN experiments e ON e.id = s.id
                 WHERE e.id IS NULL AND (s.tag IS NULL OR s.tag = ?)"""
        args: list[Any] = [tag or ""]
        if exclude:
            sql += f" AND s.id NOT IN ({','.join('?' * len(exclude))})"
            args += list(exclude)
        sql += " ORDER BY s.id"
        if limit > 0:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [_submission(r) for r in rows]

    def get_submission(self, sub_id: int) -> SubmissionRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM submissions WHERE id=?", (sub_id,)).fetchone()
        return None if row is None else _submission(row)

    def find(self, exp_id: int) -> Experiment | None:
        """The experiment with this id, or None (``get`` raises instead)."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM experiments WHERE id=?", (exp_id,)
            ).fetchone()
        return None if row is None else _experiment(row)


@dataclass(frozen=True, kw_only=True)
class SubmissionRecord:
    """A variant queued by ``autoswarm submit``; its experiment (once made) has the same id."""

    id: int
    tag: str | None
    parent: str
    files: Mapping[str, str]
    diff: str
    description: str
    created_at: float


def _submission(row: sqlite3.Row) -> SubmissionRecord:
    return SubmissionRecord(
        id=row["id"],
        tag=row["tag"],
        parent=row["parent"],
        files=json.loads(row["files"]),
        diff=row["diff"],
        description=row["description"],
        created_at=row["created_at"],
    )


def _jsonable(v: float) -> float | str:
    # JSON has no NaN/inf; keep them readable and round-trippable.
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    return v


# The scheduler's facts: Experiment field -> how its column is written. JSON columns hold
# objects; the others plain values.
_FACTS: dict[str, Callable[[Any], Any]] = {
    "fingerprint": lambda v: v,
    "dedup": lambda v: v,
    "knobs": lambda v: None if v is None else json.dumps(dict(v), sort_keys=True, default=str),
    "duplicate_of": lambda v: v,
    "purpose": lambda v: None if v is None else Purpose(v).value,
    "rerun_of": lambda v: v,
    "pinned_tier": lambda v: v,
    "z_before": lambda v: v,
    "screening": lambda v: _evidence_json(v),
    "evidence": lambda v: _evidence_json(v),
    "kept_at": lambda v: v,
    "revoked_at": lambda v: v,
    "validated_on": lambda v: v,
    "validated": lambda v: int(bool(v)),
}


def _evidence_json(v: Evidence | None) -> str | None:
    return None if v is None else json.dumps(v.as_meta(), sort_keys=True)


def _fact_columns(facts: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    unknown = set(facts) - set(_FACTS)
    if unknown:
        raise ValueError(f"not a fact the ledger records: {', '.join(sorted(unknown))}")
    return list(facts), [_FACTS[k](v) for k, v in facts.items()]


# The columns an Experiment is read from, in the order _experiment reads them; a summary
# row (Ledger.experiments(summary=True)) has an empty diff, and evidence only where a
# view reads it (keeps and revoked keeps: the bars).
_FIELDS = (
    *("id", "run_id", "kind", "status", "parent", "commit_sha", "diff", "description"),
    *("proposer", "seed", "slot", "metrics", "created_at", "started_at", "finished_at"),
    *("log_path", "reason", "meta", "tier", *_FACTS),
)
_COLUMNS = ", ".join(_FIELDS)
_SUMMARY_COLUMNS = ", ".join(
    "'' AS diff"
    if c == "diff"
    else "CASE WHEN status IN ('keep', 'revoked') THEN evidence END AS evidence"
    if c == "evidence"
    else c
    for c in _FIELDS
)
_KINDS = {k.value: k for k in Kind}
_STATUSES = {s.value: s for s in Status}
_PURPOSES = {p.value: p for p in Purpose}


class _LazyJSON(Mapping[str, Any]):
    """A JSON object of the ledger, parsed when first read.

    Asked for a plain key (an identifier, as every meta key autoswarm reads is) that its
    text does not contain in quotes, it answers without parsing: the ledger writes meta
    with ``json.dumps``, which spells such a key as itself between quotes.
    """

    __slots__ = ("_text", "_value")

    def __init__(self, text: str) -> None:
        self._text = text
        self._value: dict[str, Any] | None = None

    def _data(self) -> dict[str, Any]:
        if self._value is None:
            self._value = json.loads(self._text)
        return self._value

    def _absent(self, key: object) -> bool:
        return (
            self._value is None
            and isinstance(key, str)
            and key.isascii()
            and key.isidentifier()
            and f'"{key}"' not in self._text
        )

    def get(self, key: str, default: Any = None) -> Any:
        return default if self._absent(key) else self._data().get(key, default)

    def __contains__(self, key: object) -> bool:
        return not self._absent(key) and key in self._data()

    def __getitem__(self, key: str) -> Any:
        if self._absent(key):
            raise KeyError(key)
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def __repr__(self) -> str:
        return repr(self._data())


def _experiment(row: Sequence[Any], *, summary: bool = False) -> Experiment:
    """An Experiment from a row of ``_COLUMNS`` (a tuple or an sqlite3.Row)."""
    id_, run_id, kind, status, parent, commit, diff, description, proposer, seed, slot = row[:11]
    metrics, created_at, started_at, finished_at, log_path, reason, meta, tier = row[11:19]
    fp, dedup, knobs, duplicate_of, purpose, rerun_of, pinned_tier, z_before = row[19:27]
    screening, evidence, kept_at, revoked_at, validated_on, validated = row[27:]
    return Experiment(
        id=id_,
        run_id=run_id,
        kind=_KINDS.get(kind) or Kind(kind),
        status=_STATUSES.get(status) or Status(status),
        parent=parent,
        commit=commit,
        description=description,
        proposer=proposer,
        diff=diff,
        seed=seed,
        slot=slot,
        metrics={k: float(v) for k, v in json.loads(metrics).items()},
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        log_path=log_path,
        reason=reason,
        meta=_LazyJSON(meta) if summary else json.loads(meta),
        tier=tier,
        fingerprint=fp,
        dedup=dedup,
        knobs=None if knobs is None else _LazyJSON(knobs) if summary else json.loads(knobs),
        duplicate_of=duplicate_of,
        purpose=None if purpose is None else _PURPOSES.get(purpose) or Purpose(purpose),
        rerun_of=rerun_of,
        pinned_tier=pinned_tier,
        z_before=z_before,
        screening=None if screening is None else Evidence.from_meta(json.loads(screening)),
        evidence=None if evidence is None else Evidence.from_meta(json.loads(evidence)),
        kept_at=kept_at,
        revoked_at=revoked_at,
        validated_on=validated_on,
        validated=bool(validated),
    )


__all__ = [
    "SCHEMA_VERSION",
    "HeldOut",
    "Ledger",
    "RunRecord",
    "SessionRecord",
    "SubmissionRecord",
    "Tally",
]
