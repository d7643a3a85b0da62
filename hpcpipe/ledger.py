"""The job ledger: which backend job runs (or ran) which task, kept on the submitting machine.

Alyx has no job-id field and the embedded store should not grow one, so job ids live here, in a
small SQLite file next to the store, whatever the task store is. It answers "is this task
already queued?" before a resubmission, gives ``status`` its backend and job-id columns, and
lets the sweep find tasks whose job died without reporting.

The ledger is a *cache* of what the backend knows (docs/ARCHITECTURE.md, "who owns what"):
SLURM owns "this task has a live job"; a row here is written *before* ``sbatch`` (state
``SUBMITTING``, the intent) and corrected from SLURM at every refresh: jobs SLURM has are adopted
by their run name and comment, intents SLURM never got become ``UNSUBMITTED``, jobs SLURM has
forgotten become ``LOST`` after the grace period. ``Ledger.lock`` makes submissions on one
machine exclude each other (read, plan, record, sbatch as one step).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import HpcpipeError
from .jobstate import EMITTED, FINAL, SUBMITTING
from .settings import Settings, current

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    task_id TEXT NOT NULL, session TEXT, task_name TEXT, run_id TEXT NOT NULL,
    backend TEXT NOT NULL, job_id TEXT NOT NULL, array_index INTEGER,
    state TEXT NOT NULL DEFAULT 'SUBMITTED', reason TEXT, submitted TEXT, updated TEXT,
    run_dir TEXT, folded_ops INTEGER NOT NULL DEFAULT 0, folded INTEGER NOT NULL DEFAULT 0,
    remote TEXT, doubt_since TEXT, chunk TEXT, script TEXT,
    PRIMARY KEY (task_id, run_id));
"""
#: every query naming a job id also names its run, and ``submitted`` fills in one call's rows by
#: (run, script): one index serves both. An index on the job id would be rewritten for every
#: array element when sbatch answers (a backfill's 60,000), for no query; older ledgers lose theirs.
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_call ON jobs(run_id, script);
DROP INDEX IF EXISTS jobs_run;
DROP INDEX IF EXISTS jobs_job;
"""
#: columns added since the first schema, for ``Ledger._migrate``
_ADDED_COLUMNS = (("run_dir", "TEXT"), ("folded_ops", "INTEGER NOT NULL DEFAULT 0"),
                  ("folded", "INTEGER NOT NULL DEFAULT 0"), ("remote", "TEXT"), ("doubt_since", "TEXT"),
                  ("chunk", "TEXT"), ("script", "TEXT"))
#: the columns ``Ledger.record`` writes
_RECORD_COLUMNS = ("task_id", "session", "task_name", "run_id", "backend", "job_id", "array_index", "state",
                   "reason", "run_dir", "remote", "chunk", "script")


class Busy(HpcpipeError):
    """Another submission on this machine holds the ledger's lock (after the bounded wait)."""


@dataclass(slots=True)
class JobRecord:
    """One task's job in one run (built from a row's values in column order: ``status`` reads
    60,000 of them per poll)."""

    task_id: str
    session: str | None
    task_name: str | None
    run_id: str
    backend: str
    job_id: str
    array_index: int | None
    state: str
    reason: str | None
    submitted: str | None
    updated: str | None
    #: where the job's result file is (runs through a run folder), ops of it already folded
    run_dir: str | None = None
    folded_ops: int = 0
    #: 1 once nothing more will come from this job (result final, or the sweep closed it)
    folded: int = 0
    #: the --remote target the job was submitted through (None: this machine)
    remote: str | None = None
    #: when the job was first seen in a doubtful state (unknown to SLURM, NODE_FAIL, PREEMPTED)
    doubt_since: str | None = None
    #: the run folder chunk of its session entry, and the name of the sbatch call (its script)
    chunk: str | None = None
    script: str | None = None

    @property
    def live(self) -> bool:
        """Queued, running, or about to be submitted, as last seen."""
        return self.state not in FINAL

    @property
    def intent(self) -> bool:
        """Recorded before sbatch; the job id is not known yet."""
        return self.state == SUBMITTING and not self.job_id

    @property
    def backend_id(self) -> str:
        """The id the backend knows: ``123`` or ``123_4`` for an array element."""
        return self.job_id if self.array_index is None else f"{self.job_id}_{self.array_index}"


#: ledger paths whose lock this process holds (``Ledger.lock`` is re-entrant)
_HELD: set[str] = set()


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


class Ledger:
    """The jobs table (default ``<hpcpipe home>/jobs.sqlite``)."""

    def __init__(self, path: Path | str | None = None, settings: Settings | None = None) -> None:
        settings = settings or current()
        self.path = Path(path) if path else settings.path(settings.store.ledger, "jobs.sqlite")
        #: ``lock``'s default wait (``[submit] lock_wait_secs``)
        self.lock_wait = settings.submit.lock_wait_secs
        self._local = threading.local()
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._db.executescript(_INDEXES)  # after the migration: ``script`` may be a new column

    def _migrate(self) -> None:
        """Add columns a ledger written by an older hpcpipe lacks (nothing recorded is lost)."""
        have = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, decl in _ADDED_COLUMNS:
            if column not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {decl}")

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # each commit on the disk before the next step (an intent before its sbatch);
            # ``_write(durable=False)`` relaxes it for one write
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=60000")
            self._local.db = db
        return db

    def record(self, jobs: Iterable[dict]) -> None:
        """Insert or replace job rows (keys of ``JobRecord``; state defaults to SUBMITTING, the
        intent written before sbatch, with an empty job id until sbatch answers)."""
        rows = [(j["task_id"], j.get("session"), j.get("task_name"), j["run_id"], j["backend"],
                 str(j.get("job_id") or ""), j.get("array_index"), j.get("state", SUBMITTING), j.get("reason"),
                 j.get("run_dir"), j.get("remote"), j.get("chunk"), j.get("script")) for j in jobs]
        if not rows:
            return
        columns = dict(zip(_RECORD_COLUMNS, zip(*rows)))
        # the task id always varies (one JSON row per job, even for a single row)
        same = {n: c[0] for n, c in columns.items() if n != "task_id" and c.count(c[0]) == len(c)}
        self._insert(same, {n: c for n, c in columns.items() if n not in same})

    def record_array(self, common: dict, task_ids: list[str], sessions: list, indices: list[int]) -> None:
        """``record`` for the elements of one array: ``common`` holds what every row shares (run,
        job id, task name, state...), the three lists what differs, so nothing is built per row."""
        self.record_arrays([(common, task_ids, sessions, indices)])

    def record_arrays(self, arrays: Iterable[tuple[dict, list[str], list, list[int]]]) -> None:
        """``record_array`` for several arrays (a backfill's intents, every call of its run) in
        one transaction: one commit, and the intents are there all or not at all."""
        statements = []
        for common, task_ids, sessions, indices in arrays:
            varying = {"task_id": task_ids, "session": sessions, "array_index": indices}
            same = {n: common.get(n) for n in _RECORD_COLUMNS if n not in varying}
            same["job_id"], same["state"] = str(same["job_id"] or ""), same["state"] or SUBMITTING
            statements.append(self._insert_sql(same, varying))
        self._in_transaction(statements)

    def _insert(self, same: dict, varying: dict) -> None:
        self._in_transaction([self._insert_sql(same, varying)])

    @staticmethod
    def _insert_sql(same: dict, varying: dict) -> tuple[str, dict]:
        """One statement for all the rows (a backfill's 60,000 array elements): a column with one
        value in every row (the run, the array, the state...) is bound once, the others are read
        by SQLite from one JSON parameter, instead of Python binding 15 values per row."""
        names = [*same, *varying]
        values = [f":{n}" for n in same] + [f"json_extract(value, '$[{k}]')" for k in range(len(varying))]
        params = {"now": _now(), "rows": json.dumps(list(zip(*varying.values()))), **same}
        return (f"INSERT OR REPLACE INTO jobs ({', '.join(names)}, submitted, updated, folded_ops, "
                f"folded) SELECT {', '.join(values)}, :now, :now, 0, 0 FROM json_each(:rows)", params)

    def _in_transaction(self, statements: list[tuple[str, dict]]) -> None:
        if not statements:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                self._db.execute(sql, params)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def set_state(self, updates: Iterable[tuple[str, str, str, str | None]]) -> None:
        """Update ``(task_id, run_id, state, reason)`` rows."""
        now = _now()
        self._write("UPDATE jobs SET state=?, reason=?, updated=? WHERE task_id=? AND run_id=?",
                    [(s, r, now, t, run) for t, run, s, r in updates])

    def set_array_state(self, backend: str, remote: str | None, job_id: str, was: tuple[str, str | None],
                        now: tuple[str, str | None]) -> None:
        """Every live element of array ``job_id`` in state and reason ``was`` moves to ``now``, in
        one statement (SLURM showed the whole array in one new state: a backfill's first poll)."""
        self._write(f"UPDATE jobs SET state=?, reason=?, updated=? WHERE backend=? AND remote IS ? AND job_id=? "
                    f"AND array_index IS NOT NULL AND state=? AND reason IS ? AND {_LIVE}",
                    [(*now, _now(), backend, remote, job_id, *was)])

    def submitted(self, run_id: str, script: str, job_id: str, state: str = "PENDING") -> None:
        """sbatch answered (or SLURM was found to have the job): fill in the intent's job id."""
        self._write("UPDATE jobs SET job_id=?, state=?, updated=? WHERE run_id=? AND script=?",
                    [(str(job_id), state, _now(), run_id, script)], durable=False)

    def forget(self, rows: Iterable[tuple[str, str]]) -> None:
        """Delete ``(task_id, run_id)`` intents that never became a job (nothing ran, nothing to keep)."""
        self._write("DELETE FROM jobs WHERE task_id=? AND run_id=? AND job_id=''", list(rows))

    def set_doubt(self, updates: Iterable[tuple[str, str, str | None]]) -> None:
        """Record ``(task_id, run_id, since)``: when a job was first seen doubtful (None: not any more)."""
        self._write("UPDATE jobs SET doubt_since=? WHERE task_id=? AND run_id=?",
                    [(since, t, run) for t, run, since in updates])

    def _write(self, sql: str, rows: list[tuple], durable: bool = True) -> None:
        """``durable=False``: committed without waiting for the disk (``synchronous=NORMAL``), for
        what the next refresh finds again if a power cut loses it: a job id sbatch gave (the
        intent, committed durably before sbatch, is adopted by its run name and comment). A killed
        process loses nothing committed either way."""
        if not rows:
            return
        if not durable:
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            if not durable:
                self._db.execute("PRAGMA synchronous=FULL")

    def set_folded(self, updates: Iterable[tuple[str, str, int, bool]]) -> None:
        """Record ``(task_id, run_id, ops folded, final)`` after folding result files."""
        self._write("UPDATE jobs SET folded_ops=?, folded=? WHERE task_id=? AND run_id=?",
                    [(n, int(final), t, run) for t, run, n, final in updates])

    def adopt(self, run_id: str, placeholder: str, job_id: str) -> None:
        """Give the jobs recorded under ``placeholder`` (an emitted script nobody had submitted
        yet) the SLURM job id that now runs them."""
        # rows ``hpcpipe cancel`` withdrew from the script stay cancelled
        self._db.execute("UPDATE jobs SET job_id=?, state='PENDING', updated=? WHERE run_id=? AND job_id=? "
                         "AND state='EMITTED'", (str(job_id), _now(), run_id, placeholder))

    def rename_tasks(self, renames: Iterable[tuple[str, str, str]]) -> None:
        """``(provisional id, run_id, store id)``: a backfill's task got its store record
        (``hpcpipe.recorder``); its job rows take the store's id."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("UPDATE jobs SET task_id=? WHERE task_id=? AND run_id=?",
                                 [(new, old, run) for old, run, new in renames])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def run_dirs(self) -> list[str]:
        """Every run folder the ledger knows (``hpcpipe sync`` resumes their recorders)."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT run_dir FROM jobs WHERE run_dir IS NOT NULL")]

    def unfolded(self) -> list[JobRecord]:
        """Jobs with a run folder whose result may still bring news."""
        return self._select(_UNFOLDED)

    # -- a refresh's reads: what it needs of 60,000 rows is a few columns, and whole records
    # -- only of the jobs with news (docs/ARCHITECTURE.md, "status at scale")
    def jobs_of(self, backend: str, remote: str | None, where: str, args: tuple = ()) -> list[JobRecord]:
        """Records of one backend and ``--remote`` target (None: this machine) matching ``where``."""
        return self._select(f"backend = ? AND remote IS ? AND ({where})", (backend, remote, *args))

    def unfolded_runs(self, backend: str, remote: str | None) -> set[str]:
        """The run folders holding jobs whose result may still bring news."""
        sql = f"SELECT DISTINCT run_dir FROM jobs WHERE backend = ? AND remote IS ? AND {_UNFOLDED}"
        return {r[0] for r in self._db.execute(sql, (backend, remote))}

    def unfolded_in(self, backend: str, remote: str | None, run_dir: str, task_ids: Iterable[str]) -> list[JobRecord]:
        """The unfolded jobs of one run folder among ``task_ids`` (those with a result file)."""
        return self.jobs_of(backend, remote, f"run_dir = ? AND {_UNFOLDED} AND task_id IN (SELECT value FROM "
                            "json_each(?))", (run_dir, json.dumps(list(task_ids))))

    def watched(self, backend: str, remote: str | None) -> tuple[list[tuple], list[tuple]]:
        """What a refresh asks SLURM about and what it compares the answer with, from one grouped
        scan (a backfill's 60,000 rows are sorted once, not once per list):

        * ``(job id, run id, array indices or None)`` of every submitted live job: an array once,
          with the elements it really has;
        * ``(job id, state, reason, quiet)`` per live array and distinct state: an array all of
          whose rows show one state, none doubtful or folded (``quiet``), needs no look per
          element when SLURM too shows one state for all of it.
        """
        sql = (f"SELECT job_id, run_id, state, reason, max(doubt_since IS NOT NULL OR folded) = 0, "
               f"group_concat(array_index) FROM jobs WHERE backend = ? AND remote IS ? AND {_LIVE} "
               f"AND job_id != '' AND state != '{EMITTED}' GROUP BY job_id, run_id, state, reason")
        jobs: dict[tuple[str, str], list[int] | None] = {}
        groups = []
        for job_id, run_id, state, reason, quiet, indices in self._db.execute(sql, (backend, remote)):
            have = jobs.setdefault((job_id, run_id), None)
            if indices:
                jobs[job_id, run_id] = (have or []) + list(map(int, indices.split(",")))
                groups.append((job_id, state, reason, bool(quiet)))
        return [(job_id, run_id, indices) for (job_id, run_id), indices in jobs.items()], groups

    def live_states(self, backend: str, remote: str | None, skip: Iterable[str] = ()) -> list[tuple]:
        """``(rowid, task_id, run_id, backend id, state, reason, doubt_since, folded)`` of every
        submitted live job but those of the ``skip`` job ids, as plain tuples: a refresh compares
        them with SLURM's answer and loads whole records (``by_rowid``) only of the jobs whose
        news needs handling."""
        sql = (f"SELECT rowid, task_id, run_id, CASE WHEN array_index IS NULL THEN job_id ELSE job_id || '_' || "
               f"array_index END, state, reason, doubt_since, folded FROM jobs WHERE backend = ? AND remote IS ? AND "
               f"{_LIVE} AND job_id != '' AND state != '{EMITTED}' AND job_id NOT IN (SELECT value FROM json_each(?))")
        cursor = self._db.cursor()
        cursor.row_factory = None
        return cursor.execute(sql, (backend, remote, json.dumps(sorted(skip)))).fetchall()

    def by_rowid(self, rowids: Iterable[int]) -> list[JobRecord]:
        """The records of these rows (``live_states``' first column)."""
        rowids = list(rowids)
        return self._select("rowid IN (SELECT value FROM json_each(?))", (json.dumps(rowids),)) if rowids else []

    def remotes(self, backend: str) -> set[str | None]:
        """The ``--remote`` targets (None: this machine) that have open jobs of ``backend``."""
        sql = f"SELECT DISTINCT remote FROM jobs WHERE backend = ? AND ({_LIVE} OR {_UNFOLDED})"
        return {r[0] for r in self._db.execute(sql, (backend,))}

    def _select(self, where: str = "", args: tuple = ()) -> list[JobRecord]:
        sql = f"SELECT {_COLUMNS} FROM jobs" + (f" WHERE {where}" if where else "") + " ORDER BY submitted, rowid"
        cursor = self._db.cursor()
        cursor.row_factory = None  # plain tuples, in JobRecord's field order
        return [JobRecord(*row) for row in cursor.execute(sql, args)]

    def history(self, task_ids: Iterable[str] | None = None) -> list[JobRecord]:
        """Every job of these tasks (all tasks when None), oldest first: each attempt."""
        if task_ids is None:
            return self._select()
        rows = [r for chunk in _chunks(list(task_ids), 500)
                for r in self._select(f"task_id IN ({','.join('?' * len(chunk))})", tuple(chunk))]
        return sorted(rows, key=lambda r: r.submitted or "")

    def latest(self, task_ids: Iterable[str] | None = None) -> dict[str, JobRecord]:
        """The most recent job of each task (all tasks when ``task_ids`` is None). Many ids (a
        status of a whole backfill) are one scan of the table, not a query per 500 ids."""
        wanted = None if task_ids is None else set(task_ids)
        rows = self.history(wanted) if wanted is not None and len(wanted) <= _ID_QUERY_MAX else self._select()
        out: dict[str, JobRecord] = {}
        for rec in rows:  # ordered by submission time: the last one wins
            if wanted is None or rec.task_id in wanted:
                out[rec.task_id] = rec
        return out

    def shown(self, task_ids: Iterable[str] | None = None) -> dict[str, tuple[str, str, str, str | None]]:
        """What a status row shows of each task's most recent job: ``(backend, backend id,
        state, reason)``, as plain tuples (a whole backfill's 60,000 rows: no records built)."""
        wanted = None if task_ids is None else set(task_ids)
        sql = "SELECT task_id, backend, job_id, array_index, state, reason FROM jobs"
        args: tuple = ()
        if wanted is not None and len(wanted) <= _ID_QUERY_MAX:
            sql, args = sql + " WHERE task_id IN (SELECT value FROM json_each(?))", (json.dumps(sorted(wanted)),)
        cursor = self._db.cursor()
        cursor.row_factory = None
        out = {}
        for task_id, backend, job_id, index, state, reason in cursor.execute(sql + " ORDER BY submitted, rowid", args):
            if wanted is None or task_id in wanted:  # ordered by submission time: the last one wins
                out[task_id] = (backend, job_id if index is None else f"{job_id}_{index}", state, reason)
        return out

    def live(self, backend: str | None = None) -> list[JobRecord]:
        """Jobs not yet seen in a final state."""
        if backend:
            return self._select(f"{_LIVE} AND backend = ?", (backend,))
        return self._select(_LIVE)

    def run(self, run_id: str) -> list[JobRecord]:
        """Every job of one run."""
        return self._select("run_id = ?", (run_id,))

    @property
    def locked_here(self) -> bool:
        """Does this process hold the lock (so no submission on this machine is under way)?"""
        return str(self.path) in _HELD

    @contextlib.contextmanager
    def lock(self, purpose: str, wait: float | None = None,
             on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Exclusive use of this ledger by one submission (read, plan, record, sbatch).

        ``flock`` on ``<ledger>.lock``: released by the kernel when the holder dies, even by
        SIGKILL, so a crash never leaves it stuck. Waits at most ``wait`` seconds (default
        ``[submit] lock_wait_secs``, 120), telling ``on_wait`` once who holds it, then raises
        ``Busy`` naming the holder. Re-entrant within one process.
        """
        key = str(self.path)
        if key in _HELD:
            yield
            return
        wait = self.lock_wait if wait is None else wait
        path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = path.read_text().strip() or "another process"
                    if time.monotonic() >= deadline:
                        raise Busy(f"another hpcpipe submission holds {path} ({holder}); waited {wait:.0f} s: "
                                   "try again when it has finished") from None
                    if on_wait is not None and not told:
                        on_wait(f"waiting for another hpcpipe submission ({holder}) to finish...")
                        told = True
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, {purpose}, since {_now()}\n".encode(), 0)
            _HELD.add(key)
            try:
                yield
            finally:
                _HELD.discard(key)
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


#: JobRecord's fields, as the columns a select reads (in that order)
_COLUMNS = ", ".join(f.name for f in fields(JobRecord))
_LIVE = "state NOT IN ({})".format(",".join(f"'{s}'" for s in sorted(FINAL)))
_UNFOLDED = "(run_dir IS NOT NULL AND folded = 0)"
#: rows recorded before sbatch whose job id is not known yet (``JobRecord.intent``)
INTENT = f"state = '{SUBMITTING}' AND job_id = ''"
#: above this many task ids, ``latest`` scans the table once instead of querying per 500 ids
_ID_QUERY_MAX = 2000


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
