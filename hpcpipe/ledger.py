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

A job array is one row until its elements part ways, as SLURM itself keeps a pending array as
one job record and splits off the elements it starts: a backfill's array of 10,000 sessions is
one row of table ``arrays`` (its elements' task ids, sessions and indices as one JSON text in
``array_members``), so
recording it, filling in its job id and moving all of it to a new state are one row's work, and
a refresh asks about it from that row. The first write about one element (a new state, a fold, a
doubt, a rename) *splits* the array: its elements become rows of ``jobs`` and its row goes, in the
same transaction. So an array row's elements share its state and reason, none is folded or
doubtful, and they are live (a final state is written per element), which makes each the most
recent job of its task (a task with a live job is not submitted again: plan.py). Reads see both
tables as one (``_select``): a ``JobRecord`` per element either way.
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

from . import sqlitedb
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
CREATE TABLE IF NOT EXISTS arrays (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, script TEXT NOT NULL, backend TEXT NOT NULL, remote TEXT,
    job_id TEXT NOT NULL, task_name TEXT, state TEXT NOT NULL, reason TEXT, submitted TEXT, updated TEXT,
    run_dir TEXT, chunk TEXT, UNIQUE (run_id, script));
CREATE TABLE IF NOT EXISTS array_members (id INTEGER PRIMARY KEY, elements TEXT NOT NULL, indices TEXT NOT NULL);
"""
#: an array's members live apart from its row (``array_members``, same id): SQLite rewrites a
#: whole row to update one column, and a state or a job id is a few bytes beside 400 kB of members
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
#: what an ``arrays`` row holds beside its elements (``record_arrays``)
_ARRAY_COLUMNS = ("run_id", "script", "backend", "remote", "job_id", "task_name", "state", "reason", "run_dir",
                  "chunk")
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
        """The id the backend knows: ``123`` or ``123_4`` for an array element; empty for an
        intent (no job yet, whatever its index)."""
        return self.job_id if self.array_index is None or not self.job_id else f"{self.job_id}_{self.array_index}"


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
            # each commit on the disk before the next step (an intent before its sbatch);
            # ``_write(durable=False)`` relaxes it for one write
            db = sqlitedb.connect(self.path, synchronous="FULL")
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

    def record_arrays(self, calls: Iterable[tuple[dict, list[str], list, list[int | None]]]) -> None:
        """Record sbatch calls (a backfill's intents, every call of its run) in one transaction:
        one commit, and the intents are there all or not at all. Each call is ``(common, task
        ids, sessions, array indices)``: ``common`` holds what its jobs share (run, script, job
        id, task name, state...). A job array (indices, a script) is one ``arrays`` row; a call
        without indices (one job per task) a ``jobs`` row per task, in one statement."""
        statements = []
        for common, task_ids, sessions, indices in calls:
            same = {n: common.get(n) for n in _RECORD_COLUMNS if n not in ("task_id", "session", "array_index")}
            same["job_id"], same["state"] = str(same["job_id"] or ""), same["state"] or SUBMITTING
            if indices and indices[0] is not None and same["script"]:
                statements += self._array_sql(same, task_ids, sessions, indices)
            else:
                statements.append(self._insert_sql(same, {"task_id": task_ids, "session": sessions,
                                                          "array_index": indices}))
        self._in_transaction(statements)

    @staticmethod
    def _array_sql(same: dict, task_ids: list[str], sessions: list, indices: list[int]) -> list[tuple[str, dict]]:
        """One ``arrays`` row and its members: the elements as one JSON text, the indices again on
        their own (what a refresh asks SLURM about, read without the rest)."""
        row = {"now": _now(), **{n: same[n] for n in _ARRAY_COLUMNS}}
        members = {"elements": json.dumps(list(zip(task_ids, sessions, indices))), "indices": json.dumps(indices)}
        return [(f"INSERT INTO arrays ({', '.join(_ARRAY_COLUMNS)}, submitted, updated) VALUES "
                 f"({', '.join(':' + n for n in _ARRAY_COLUMNS)}, :now, :now)", row),
                ("INSERT INTO array_members (id, elements, indices) VALUES (last_insert_rowid(), :elements, "
                 ":indices)", members)]

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

    def _in_transaction(self, statements: list[tuple[str, dict | tuple]], durable: bool = True) -> None:
        if statements:
            self._write_all(statements, [], durable)

    def _write_all(self, statements: list[tuple[str, dict | tuple]], rows: list[tuple[str, list[tuple]]],
                   durable: bool = True, split: Iterable[tuple[str, str]] = (), arrays: Iterable[int] = ()) -> None:
        """One transaction: the arrays holding any ``split`` ``(task_id, run_id)`` and the
        ``arrays`` rows split first, then each statement once and each ``(sql, rows)`` for its rows.

        ``durable=False``: committed without waiting for the disk (``synchronous=NORMAL``), for
        what the next refresh finds again if a power cut loses it: a job id sbatch gave (the
        intent, committed durably before sbatch, is adopted by its run name and comment). A killed
        process loses nothing committed either way."""
        if not durable:
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._split(split)
            self._split_arrays(arrays)
            for sql, params in statements:
                self._db.execute(sql, params)
            for sql, many in rows:
                self._db.executemany(sql, many)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            if not durable:
                self._db.execute("PRAGMA synchronous=FULL")

    def _split(self, jobs: Iterable[tuple[str, str]]) -> None:
        """Split the arrays holding any of these ``(task_id, run_id)`` elements (inside a write's
        transaction). Jobs that have their row already (the usual case once an array runs: its
        news split it) cost one indexed lookup per run; only the others are looked for among the
        run's arrays, whose members Python's JSON parser reads (a run's other arrays, pending on
        their parents, stay one row each)."""
        by_run: dict[str, set[str]] = {}
        for task_id, run_id in jobs:
            by_run.setdefault(run_id, set()).add(task_id)
        for run_id, task_ids in by_run.items():
            rest = task_ids - {r[0] for r in self._db.execute(
                "SELECT task_id FROM jobs WHERE run_id = ? AND task_id IN (SELECT value FROM json_each(?))",
                (run_id, json.dumps(sorted(task_ids))))}
            if rest:
                self._split_arrays([k for k, elements in self._db.execute(
                    "SELECT id, elements FROM arrays JOIN array_members USING (id) WHERE run_id = ?", (run_id,))
                    if not rest.isdisjoint(t for t, _, _ in json.loads(elements))])

    def _split_arrays(self, ids: Iterable[int]) -> None:
        """These arrays rows become a ``jobs`` row per element (module docstring)."""
        keys = json.dumps(list(ids))
        if keys != "[]":
            self._db.execute(f"INSERT OR REPLACE INTO jobs ({_COLUMNS}) {_ELEMENTS} WHERE a.id IN "
                             "(SELECT value FROM json_each(?)) ORDER BY a.id, e.key", (keys,))
            for table in ("arrays", "array_members"):
                self._db.execute(f"DELETE FROM {table} WHERE id IN (SELECT value FROM json_each(?))", (keys,))

    def update(self, states: Iterable[tuple[str, str, str, str | None]] = (),
               doubts: Iterable[tuple[str, str, str | None]] = (),
               folded: Iterable[tuple[str, str, int, bool]] = ()) -> None:
        """A refresh's news in one transaction, the arrays it touches split once: ``states``
        ``(task_id, run_id, state, reason)``, ``doubts`` ``(task_id, run_id, since)`` (when a
        job was first seen doubtful; None: not any more), ``folded`` ``(task_id, run_id, ops
        folded, final)`` after folding result files. A cancelled backfill's 60,000 jobs cost
        one split and one statement each, not one per kind of news."""
        now = _now()
        rows = [(sql, many) for sql, many in (
            ("UPDATE jobs SET state=?, reason=?, updated=? WHERE task_id=? AND run_id=?",
             [(s, r, now, t, run) for t, run, s, r in states]),
            ("UPDATE jobs SET doubt_since=? WHERE task_id=? AND run_id=?", [(since, t, run) for t, run, since in doubts]),
            ("UPDATE jobs SET folded_ops=?, folded=? WHERE task_id=? AND run_id=?",
             [(n, int(final), t, run) for t, run, n, final in folded])) if many]
        if rows:
            self._write_all([], rows, split={r[-2:] for _, many in rows for r in many})

    def set_state(self, updates: Iterable[tuple[str, str, str, str | None]]) -> None:
        """Update ``(task_id, run_id, state, reason)`` rows."""
        self.update(states=updates)

    def set_array_state(self, backend: str, remote: str | None, job_id: str, was: tuple[str, str | None],
                        now: tuple[str, str | None]) -> None:
        """Every live element of array ``job_id`` in state and reason ``was`` moves to the live
        state ``now``, in one statement (SLURM showed the whole array in one new state: a
        backfill's first poll): the array's row, or its elements' rows once it is split."""
        if now[0] in FINAL:
            raise ValueError(f"set_array_state: {now[0]} is final; final states are written per element")
        args = (*now, _now(), backend, remote, job_id, *was)
        where = "backend=? AND remote IS ? AND job_id=? AND state=? AND reason IS ?"
        self._in_transaction([(f"UPDATE arrays SET state=?, reason=?, updated=? WHERE {where}", args),
                              (f"UPDATE jobs SET state=?, reason=?, updated=? WHERE {where} AND array_index IS NOT "
                               f"NULL AND {_LIVE}", args)])

    def submitted(self, run_id: str, script: str, job_id: str, state: str = "PENDING") -> None:
        """sbatch answered (or SLURM was found to have the job): fill in the intent's job id."""
        args = (str(job_id), state, _now(), run_id, script)
        self._in_transaction([(f"UPDATE {table} SET job_id=?, state=?, updated=? WHERE run_id=? AND script=?", args)
                              for table in ("arrays", "jobs")], durable=False)

    def forget(self, rows: Iterable[tuple[str, str]]) -> None:
        """Delete ``(task_id, run_id)`` intents that never became a job (nothing ran, nothing to keep)."""
        self._write("DELETE FROM jobs WHERE task_id=? AND run_id=? AND job_id=''", list(rows), split=True)


    def _write(self, sql: str, rows: list[tuple], durable: bool = True, split: bool = False) -> None:
        """``sql`` for each row, in one transaction (``_write_all``). ``split``: the rows name a
        job by their last two values, ``(task_id, run_id)``, and an array holding it splits first."""
        if rows:
            self._write_all([], [(sql, rows)], durable, [r[-2:] for r in rows] if split else ())

    def set_folded(self, updates: Iterable[tuple[str, str, int, bool]]) -> None:
        """Record ``(task_id, run_id, ops folded, final)`` after folding result files."""
        self.update(folded=updates)

    def adopt(self, run_id: str, placeholder: str, job_id: str) -> None:
        """Give the jobs recorded under ``placeholder`` (an emitted script nobody had submitted
        yet) the SLURM job id that now runs them."""
        # rows ``hpcpipe cancel`` withdrew from the script stay cancelled
        self._db.execute("UPDATE jobs SET job_id=?, state='PENDING', updated=? WHERE run_id=? AND job_id=? "
                         "AND state='EMITTED'", (str(job_id), _now(), run_id, placeholder))

    def rename_tasks(self, renames: Iterable[tuple[str, str, str]]) -> None:
        """``(provisional id, run_id, store id)``: a backfill's task got its store record
        (``hpcpipe.recorder``); its job rows take the store's id."""
        self._write("UPDATE jobs SET task_id=? WHERE task_id=? AND run_id=?",
                    [(new, old, run) for old, run, new in renames], split=True)

    def run_dirs(self) -> list[str]:
        """Every run folder the ledger knows (``hpcpipe sync`` resumes their recorders)."""
        return [r[0] for r in self._db.execute("SELECT run_dir FROM jobs WHERE run_dir IS NOT NULL UNION "
                                               "SELECT run_dir FROM arrays WHERE run_dir IS NOT NULL")]

    # -- a refresh's reads: what it needs of 60,000 rows is a few columns, and whole records
    # -- only of the jobs with news (docs/ARCHITECTURE.md, "status at scale")
    def emitted(self, backend: str, remote: str | None) -> list[JobRecord]:
        """Jobs of one backend and ``--remote`` target (None: this machine) in an emitted script
        nobody has submitted yet (``adopt``)."""
        where = f"backend = ? AND remote IS ? AND state = '{EMITTED}'"
        return self._select(where, (backend, remote), (where, (backend, remote)))

    def intents(self, backend: str, remote: str | None) -> list[JobRecord]:
        """Jobs recorded before sbatch whose job id is not known yet (``JobRecord.intent``)."""
        where = f"backend = ? AND remote IS ? AND state = '{SUBMITTING}' AND job_id = ''"
        return self._select(where, (backend, remote), (where, (backend, remote)))

    def provisional(self, backend: str, remote: str | None, prefix: str) -> list[JobRecord]:
        """Unfolded jobs with a run folder whose task id starts with ``prefix`` (a backfill's
        provisional ids, ``hpcpipe.recorder``)."""
        where = "backend = ? AND remote IS ? AND run_dir IS NOT NULL"
        # only the arrays whose elements' text holds such an id are parsed (SQLite's instr is a
        # byte search): every status asks, and a backfill on the embedded store has none, but
        # 60,000 elements to parse
        return self._select(f"{where} AND folded = 0 AND substr(task_id, 1, ?) = ?",
                            (backend, remote, len(prefix), prefix),
                            (f"{where} AND instr(elements, ?) > 0", (backend, remote, f'"{prefix}')),
                            keep=lambda t: t.startswith(prefix))

    def unfolded_runs(self, backend: str, remote: str | None) -> set[str]:
        """The run folders holding jobs whose result may still bring news (an array row's
        elements have none folded)."""
        sql = (f"SELECT run_dir FROM jobs WHERE backend = ? AND remote IS ? AND {_UNFOLDED} UNION "
               "SELECT run_dir FROM arrays WHERE backend = ? AND remote IS ? AND run_dir IS NOT NULL")
        return {r[0] for r in self._db.execute(sql, (backend, remote) * 2)}

    def unfolded_in(self, backend: str, remote: str | None, run_dir: str, task_ids: Iterable[str]) -> list[JobRecord]:
        """The unfolded jobs of one run folder among ``task_ids`` (those with a result file)."""
        wanted = set(task_ids)
        return self._select(f"backend = ? AND remote IS ? AND run_dir = ? AND {_UNFOLDED} AND task_id IN "
                            "(SELECT value FROM json_each(?))", (backend, remote, run_dir, json.dumps(sorted(wanted))),
                            ("backend = ? AND remote IS ? AND run_dir = ?", (backend, remote, run_dir)),
                            keep=wanted.__contains__)

    def watched(self, backend: str, remote: str | None) -> tuple[list[tuple], list[tuple]]:
        """What a refresh asks SLURM about and what it compares the answer with, from one grouped
        scan (a backfill's 60,000 rows are sorted once, not once per list):

        * ``(job id, run id, array indices or None)`` of every submitted live job: an array once,
          with the elements it really has;
        * ``(job id, state, reason, quiet)`` per live array and distinct state: an array all of
          whose rows show one state, none doubtful or folded (``quiet``), needs no look per
          element when SLURM too shows one state for all of it. An array row is one such group.
        """
        where = f"backend = ? AND remote IS ? AND {_LIVE} AND job_id != '' AND state != '{EMITTED}'"
        sql = (f"SELECT job_id, run_id, state, reason, max(doubt_since IS NOT NULL OR folded) = 0, "
               f"group_concat(array_index) FROM jobs WHERE {where} GROUP BY job_id, run_id, state, reason")
        jobs: dict[tuple[str, str], list[int] | None] = {}
        groups = []
        for job_id, run_id, state, reason, quiet, indices in self._db.execute(sql, (backend, remote)):
            have = jobs.setdefault((job_id, run_id), None)
            if indices:
                jobs[job_id, run_id] = (have or []) + list(map(int, indices.split(",")))
                groups.append((job_id, state, reason, bool(quiet)))
        for job_id, run_id, state, reason, indices in self._db.execute(
                f"SELECT job_id, run_id, state, reason, indices FROM arrays JOIN array_members USING (id) WHERE "
                f"{where}", (backend, remote)):
            jobs[job_id, run_id] = (jobs.get((job_id, run_id)) or []) + json.loads(indices)
            groups.append((job_id, state, reason, True))
        return [(job_id, run_id, indices) for (job_id, run_id), indices in jobs.items()], groups

    def live_states(self, backend: str, remote: str | None, skip: Iterable[str] = ()) -> list[tuple]:
        """``(rowid, task_id, run_id, backend id, state, reason, doubt_since, folded)`` of every
        submitted live job but those of the ``skip`` job ids, as plain tuples: a refresh compares
        them with SLURM's answer and loads whole records (``by_rowid``) only of the jobs whose
        news needs handling. The arrays among them split first: SLURM shows them otherwise than
        the ledger has them, so their elements' news is coming."""
        where = (f"backend = ? AND remote IS ? AND {_LIVE} AND job_id != '' AND state != '{EMITTED}' AND job_id NOT "
                 "IN (SELECT value FROM json_each(?))")
        args = (backend, remote, json.dumps(sorted(skip)))
        split = [r[0] for r in self._db.execute(f"SELECT id FROM arrays WHERE {where}", args)]
        if split:
            self._write_all([], [], arrays=split)
        sql = (f"SELECT rowid, task_id, run_id, CASE WHEN array_index IS NULL THEN job_id ELSE job_id || '_' || "
               f"array_index END, state, reason, doubt_since, folded FROM jobs WHERE {where}")
        cursor = self._db.cursor()
        cursor.row_factory = None
        return cursor.execute(sql, args).fetchall()

    def by_rowid(self, rowids: Iterable[int]) -> list[JobRecord]:
        """The records of these ``jobs`` rows (``live_states``' first column)."""
        rowids = list(rowids)
        return self._select("rowid IN (SELECT value FROM json_each(?))", (json.dumps(rowids),),
                            arrays=None) if rowids else []

    def remotes(self, backend: str) -> set[str | None]:
        """The ``--remote`` targets (None: this machine) that have open jobs of ``backend``."""
        sql = (f"SELECT remote FROM jobs WHERE backend = ? AND ({_LIVE} OR {_UNFOLDED}) UNION "
               "SELECT remote FROM arrays WHERE backend = ?")  # an array row is live
        return {r[0] for r in self._db.execute(sql, (backend, backend))}

    def _select(self, where: str = "", args: tuple = (), arrays: tuple[str, tuple] | None = ("", ()),
                keep: Callable[[str], bool] | None = None) -> list[JobRecord]:
        """Records of the ``jobs`` rows matching ``where``, then of the elements of the arrays rows
        matching ``arrays`` (a condition on an array's own columns and its arguments; None: no
        arrays) whose task id ``keep`` keeps: in the order ``shown`` takes as time's, the rows by
        submission, then the elements (live, so each its task's most recent job).

        The elements are read by Python's JSON parser: SQLite's (3.40) takes a few microseconds an
        element, ten times as long."""
        sql = f"SELECT {_COLUMNS} FROM jobs" + (f" WHERE {where}" if where else "") + " ORDER BY submitted, rowid"
        cursor = self._db.cursor()
        cursor.row_factory = None  # plain tuples, in JobRecord's field order
        out = [JobRecord(*row) for row in cursor.execute(sql, args)]
        if arrays is not None:
            for row in self._arrays(*arrays):
                common = row[:-1]
                out += [JobRecord(task_id, session, *common[:4], index, *common[4:])
                        for task_id, session, index in json.loads(row[-1]) if keep is None or keep(task_id)]
        return out

    def _arrays(self, where: str, args: tuple) -> list[tuple]:
        """The arrays rows matching ``where``: ``JobRecord``'s values but the task, session and index
        (in its order), then the elements' JSON text."""
        sql = ("SELECT task_name, run_id, backend, job_id, state, reason, submitted, updated, run_dir, 0, 0, remote, "
               "NULL, chunk, script, elements FROM arrays JOIN array_members USING (id)"
               + (f" WHERE {where}" if where else "") + " ORDER BY submitted, id")
        cursor = self._db.cursor()
        cursor.row_factory = None
        return cursor.execute(sql, args).fetchall()

    def history(self, task_ids: Iterable[str] | None = None) -> list[JobRecord]:
        """Every job of these tasks (all tasks when None), oldest first: each attempt."""
        if task_ids is None:
            return self._select()
        wanted = set(task_ids)
        return self._select("task_id IN (SELECT value FROM json_each(?))", (json.dumps(sorted(wanted)),),
                            keep=wanted.__contains__)

    def latest(self, task_ids: Iterable[str] | None = None) -> dict[str, JobRecord]:
        """The most recent job of each task (all tasks when ``task_ids`` is None)."""
        out: dict[str, JobRecord] = {}
        for rec in self._select() if task_ids is None else self.history(task_ids):
            out[rec.task_id] = rec  # oldest first: the last one wins
        return out

    def shown(self, task_ids: Iterable[str] | None = None) -> dict[str, tuple[str, str, str, str | None]]:
        """What a status row shows of each task's most recent job: ``(backend, backend id or None
        before sbatch answered, state, reason)``, as plain tuples (a whole backfill's 60,000 rows: no records built)."""
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
                out[task_id] = (backend, _shown_id(job_id, index), state, reason)
        for backend, job_id, state, reason, elements in cursor.execute(
                "SELECT backend, job_id, state, reason, elements FROM arrays JOIN array_members USING (id) "
                "ORDER BY submitted, id"):
            # an element is live, so its task's most recent job (module docstring); ``_shown_id``
            # inlined, one comprehension per array: 60,000 elements for a whole backfill
            members = json.loads(elements)
            if wanted is not None:
                members = [m for m in members if m[0] in wanted]
            if job_id:
                out.update({task_id: (backend, f"{job_id}_{index}", state, reason) for task_id, _, index in members})
            else:
                out.update({task_id: (backend, None, state, reason) for task_id, _, _ in members})
        return out

    def live(self, backend: str | None = None) -> list[JobRecord]:
        """Jobs not yet seen in a final state."""
        if backend:  # an array row is live
            return self._select(f"{_LIVE} AND backend = ?", (backend,), ("backend = ?", (backend,)))
        return self._select(_LIVE)

    def run(self, run_id: str) -> list[JobRecord]:
        """Every job of one run."""
        return self._select("run_id = ?", (run_id,), ("run_id = ?", (run_id,)))

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


def _shown_id(job_id: str, index: int | None) -> str | None:
    """A status row's job id: ``123``, ``123_4``, or None before sbatch answered (an intent)."""
    if not job_id:
        return None
    return job_id if index is None else f"{job_id}_{index}"


#: JobRecord's fields, as the columns a select reads (in that order)
_COLUMNS = ", ".join(f.name for f in fields(JobRecord))
#: an array row's elements as ``jobs`` rows (``_COLUMNS``), for the split
_ELEMENTS = ("SELECT json_extract(e.value, '$[0]'), json_extract(e.value, '$[1]'), a.task_name, a.run_id, a.backend, "
             "a.job_id, json_extract(e.value, '$[2]'), a.state, a.reason, a.submitted, a.updated, a.run_dir, 0, 0, "
             "a.remote, NULL, a.chunk, a.script FROM arrays a JOIN array_members m USING (id), json_each(m.elements) e")
_LIVE = "state NOT IN ({})".format(",".join(f"'{s}'" for s in sorted(FINAL)))
_UNFOLDED = "(run_dir IS NOT NULL AND folded = 0)"
#: above this many task ids, ``latest`` reads every job once instead of looking each id up
_ID_QUERY_MAX = 2000
