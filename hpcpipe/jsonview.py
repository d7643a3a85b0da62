"""``hpcpipe status --json`` rendered by SQLite, when both sides of a status row are embedded files.

A status row joins two owners' facts: the task store's record (status, resources, elapsed time)
and the ledger's most recent job of that task (backend, job id). The CLI's ``_rows`` does the
join in Python, for every store. With the embedded store the two are SQLite files on this
machine, and a whole backfill's 60,000 rows cost more to bring into Python (a third of a
microsecond per value), build and encode than the rest of ``status``; here one query joins them
(the ledger attached read-only) and lets SQLite write each row's JSON object, so Python only
joins 60,000 strings. The rows are the same, key for key and value for value, as
``json.dumps`` of ``_rows`` (pinned in tests/test_status_scale.py); the one difference is that
SQLite writes a float with 15 significant digits where Python writes the shortest repr.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

from .status import check_statuses
from .store.base import TASK_FIELDS
from .store.sqlite import TASK_ORDER, SQLiteStore

#: the ledger's most recent job of a task, the one a status row shows (``Ledger.shown``'s rule:
#: ordered by submission time, then row, the last one wins; no time comes first): the job with
#: no later one (an index probe per task, where ``ORDER BY ... LIMIT 1`` sorts per task)
_LATEST = ("j.task_id = t.id AND NOT EXISTS (SELECT 1 FROM led.jobs k WHERE k.task_id = t.id AND (CASE WHEN "
           "k.submitted IS j.submitted THEN k.rowid > j.rowid ELSE k.submitted > j.submitted OR j.submitted IS NULL "
           "END))")


def can_render(store) -> bool:
    """True when the store is the embedded one, whose rows this module renders."""
    return isinstance(store, SQLiteStore)


def status_json(store: SQLiteStore, ledger_path: Path, fields: Sequence[str], session: str | None = None,
                statuses: Iterable[str] | None = None) -> str:
    """The status rows as one JSON list (``status --json`` without ``--reason``): each task's
    ``fields`` (but ``id``) in the store's field order, then ``backend``, ``job_id`` (``123_4`` for
    an array element) and ``local`` (false: these are the store's statuses), in the store's order."""
    wanted = set(fields)
    pairs = [f"'{k}', t.{k}" for k in TASK_FIELDS if k in wanted and k != "id"]
    pairs += ["'backend', j.backend",
              "'job_id', CASE WHEN j.array_index IS NULL THEN j.job_id ELSE j.job_id || '_' || j.array_index END",
              "'local', json('false')"]
    where, args = [], []  # conditions on the tasks table, named ``t`` in the join
    if session is not None:
        where.append("t.session = ?")
        args.append(session)
    wanted_statuses = check_statuses(statuses)
    if wanted_statuses:
        where.append(f"t.status IN ({','.join('?' * len(wanted_statuses))})")
        args.extend(wanted_statuses)
    # the order is found on row ids alone (SQLite sorting the rows themselves would move
    # megabytes of JSON); the rows are read in any order and put in place by their ids, both
    # reads in one transaction (one snapshot of both files)
    filters = " WHERE " + " AND ".join(where) if where else ""
    sql = f"SELECT t.rowid, json_object({', '.join(pairs)}) FROM tasks t LEFT JOIN led.jobs j ON {_LATEST}{filters}"
    db = sqlite3.connect(f"{Path(store.path).resolve().as_uri()}?mode=ro", uri=True, timeout=60,
                         isolation_level=None)
    try:
        db.execute("ATTACH DATABASE ? AS led", (f"{Path(ledger_path).resolve().as_uri()}?mode=ro",))
        db.execute("BEGIN")
        order = db.execute(f"SELECT rowid FROM tasks t{filters} ORDER BY {TASK_ORDER}", args).fetchall()
        text = dict(db.execute(sql, args).fetchall())
        db.execute("COMMIT")
    finally:
        db.close()
    return "[" + ",".join([text[r] for r, in order]) + "]"
