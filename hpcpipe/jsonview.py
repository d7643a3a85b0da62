"""``hpcpipe status --json`` rendered by SQLite, when the task store is the embedded file.

A status row joins two owners' facts: the task store's record (status, resources, elapsed time)
and the ledger's most recent job of that task (backend, job id). The CLI's ``_rows`` does the
join in Python, for every store. With the embedded store, a whole backfill's 60,000 records cost
more to bring into Python (a third of a microsecond per value), build and encode than the rest
of ``status``; here SQLite writes each record's JSON object and Python only appends the job's
two values, from ``Ledger.shown`` (which reads a job array's elements from one row), and joins
60,000 strings. The rows are the same, key for key and value for value, as ``json.dumps`` of
``_rows`` (pinned in tests/test_status_scale.py); the one difference is that SQLite writes a
float with 15 significant digits where Python writes the shortest repr.
"""
from __future__ import annotations

import sqlite3
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Iterable, Sequence

from .ledger import Ledger
from .status import check_statuses
from .store.base import TASK_FIELDS
from .store.sqlite import TASK_ORDER, SQLiteStore

#: the end of a row whose task has no job
_NO_JOB = ',"backend":null,"job_id":null,"local":false}'


def can_render(store) -> bool:
    """True when the store is the embedded one, whose rows this module renders."""
    return isinstance(store, SQLiteStore)


def status_json(store: SQLiteStore, ledger: Ledger, fields: Sequence[str], session: str | None = None,
                statuses: Iterable[str] | None = None) -> str:
    """The status rows as one JSON list (``status --json`` without ``--reason``): each task's
    ``fields`` (but ``id``) in the store's field order, then ``backend``, ``job_id`` (``123_4`` for
    an array element) and ``local`` (false: these are the store's statuses), in the store's order."""
    wanted = set(fields)
    pairs = [f"'{k}', {k}" for k in TASK_FIELDS if k in wanted and k != "id"]
    where, args = [], []
    if session is not None:
        where.append("session = ?")
        args.append(session)
    wanted_statuses = check_statuses(statuses)
    if wanted_statuses:
        where.append(f"status IN ({','.join('?' * len(wanted_statuses))})")
        args.extend(wanted_statuses)
    # one ordered read: sorting the JSON text with its keys costs SQLite less than a second
    # read for the order and Python putting 60,000 rows in place
    filters = " WHERE " + " AND ".join(where) if where else ""
    db = sqlite3.connect(f"{Path(store.path).resolve().as_uri()}?mode=ro", uri=True, timeout=60,
                         isolation_level=None)
    try:
        rows = db.execute(f"SELECT id, json_object({', '.join(pairs)}) FROM tasks{filters} ORDER BY {TASK_ORDER}",
                          args).fetchall()
    finally:
        db.close()
    jobs = ledger.shown([tid for tid, _ in rows] if where else None)
    # each row's end, its strings in json.dumps' own encoding (C)
    ends = {tid: f',"backend":{encode_basestring_ascii(b)},"job_id":{"null" if j is None else encode_basestring_ascii(j)},'
                 '"local":false}' for tid, (b, j, _, _) in jobs.items()}
    end = ends.get
    return "[" + ",".join([obj[:-1] + end(tid, _NO_JOB) for tid, obj in rows]) + "]"
