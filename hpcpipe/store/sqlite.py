"""The embedded task store: one SQLite file on this machine, Alyx's rules without a server.

Safe under concurrent writers on one machine (WAL journal, a busy timeout, every write in one
transaction). Not meant for compute nodes over a network file system: jobs there report through
result records in the run folder instead (see ``hpcpipe.jobside``).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
import threading
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .. import sqlitedb
from ..errors import BadInput, Conflict, NotFound
from ..session import parse_session_path
from ..status import check_statuses
from .base import TASK_FIELDS, StampedRecords, TaskStore, check_fields

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, path TEXT UNIQUE NOT NULL,
    subject TEXT, date TEXT, number INTEGER, lab TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, parents TEXT NOT NULL DEFAULT '[]',
    session TEXT REFERENCES sessions(id) ON DELETE CASCADE,
    data_repository TEXT, status TEXT NOT NULL, name TEXT, priority INTEGER, io_charge INTEGER,
    level INTEGER, gpu INTEGER, cpu INTEGER, ram INTEGER, time_out_secs INTEGER,
    time_elapsed_secs REAL, executable TEXT, graph TEXT, log TEXT, version TEXT,
    datetime TEXT, arguments TEXT,
    UNIQUE (session, name, arguments));
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, session TEXT REFERENCES sessions(id) ON DELETE CASCADE,
    name TEXT NOT NULL, collection TEXT NOT NULL, revision TEXT NOT NULL,
    file_size INTEGER, hash TEXT, version TEXT, repository TEXT, created_datetime TEXT,
    UNIQUE (session, collection, revision, name));
"""
_JSON_FIELDS = ("parents", "arguments")
#: the page cache of a ``batch()``, in KiB (SQLite's default is 2,000)
BATCH_CACHE_KIB = 64 * 1024
#: the order of task listings (level, then priority, then creation): also jsonview's
TASK_ORDER = "level IS NULL, level ASC, priority IS NOT NULL, priority DESC, rowid"


def _json_value(text: str | None):
    """A JSON column's value; the empty list and object most tasks hold are not parsed."""
    if text is None:
        return None
    if text == "[]":
        return []
    if text == "{}":
        return {}
    return json.loads(text)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat()


def _id_block() -> str:
    """The first 24 characters of a block of task or session ids, random per bulk write.

    A bulk write numbers its rows ``<block><12 hex digits>``: ids keep the UUID shape Alyx uses
    and stay unique (the block is 74 random bits), and consecutive ids land next to each other
    in the primary-key index, so inserting 60,000 of them appends instead of scattering.
    """
    return str(uuid.uuid4())[:24]


def _canonical(value: Any) -> str | None:
    """JSON with sorted keys, so equal argument dicts compare equal in the UNIQUE index."""
    return None if value is None else json.dumps(value, sort_keys=True)


def split_dataset_path(relative: str) -> tuple[str, str, str]:
    """``alf/#rev#/x.npy`` -> (collection ``alf``, revision ``rev``, name ``x.npy``), as Alyx does."""
    parts = Path(relative).parts
    if not parts:
        raise BadInput("empty dataset file name")
    *folders, name = parts
    revision = ""
    if folders and folders[-1].startswith("#") and folders[-1].endswith("#"):
        revision = folders.pop()[1:-1]
    return "/".join(folders), revision, name


class SQLiteStore(TaskStore):
    """Task records in a SQLite file (default ``<hpcpipe home>/tasks.sqlite``)."""

    kind = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db.executescript(_SCHEMA)

    # ------------------------------------------------------------------ plumbing
    def __getstate__(self) -> dict:
        # connections are per process and per thread: a copy sent to another process reconnects
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._local = threading.local()

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is not None and getattr(self._local, "pid", None) != os.getpid():
            # inherited through fork(): SQLite forbids using a parent's connection in the child
            # (its POSIX locks belong to the parent), so leave it alone and open a new one
            db = None
        if db is None:
            # WAL + NORMAL: no fsync per commit, still safe from corruption (a power cut may lose
            # the last commits); task records are re-derivable, and backfills write thousands
            db = sqlitedb.connect(self.path, synchronous="NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            self._local.pid = os.getpid()
        return db

    class _Tx:
        """One write: its own transaction, or a savepoint inside a ``batch()``."""

        def __init__(self, db: sqlite3.Connection, nested: bool) -> None:
            self.db, self.nested = db, nested

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("SAVEPOINT w" if self.nested else "BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, *rest) -> None:
            if self.nested:
                if exc_type:
                    self.db.execute("ROLLBACK TO w")
                self.db.execute("RELEASE w")
            else:
                self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> "_Tx":
        return self._Tx(self._db, getattr(self._local, "batch", 0) > 0)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many writes in one transaction (a backfill records thousands of tasks).

        Each write inside keeps its own all-or-nothing (a savepoint); the batch is committed at
        the end, or rolled back whole if the block raises.
        """
        depth = getattr(self._local, "batch", 0)
        if depth > 0:
            self._local.batch = depth + 1
            try:
                yield
            finally:
                self._local.batch = depth
            return
        # a 10,000-session backfill writes 21 MB of pages in one transaction, its unique index
        # touched all over once per task type: with SQLite's default 2 MB page cache, pages are
        # spilled into the WAL mid-transaction and written again at each later touch (a third of
        # the stamp's time). The cache only grows as pages are used, and shrinks back after.
        cache = self._db.execute("PRAGMA cache_size").fetchone()[0]
        self._db.execute(f"PRAGMA cache_size={-BATCH_CACHE_KIB}")
        self._db.execute("BEGIN IMMEDIATE")
        # the commit does not copy the WAL into the file itself: that goes on a thread after it,
        # when large (``sqlitedb.checkpoint_behind``), while the caller goes on
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._local.batch = 1
        try:
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        finally:
            self._local.batch = 0
            self._db.execute("PRAGMA wal_autocheckpoint=1000")
            self._db.execute(f"PRAGMA cache_size={cache}")
        sqlitedb.checkpoint_behind(self.path)

    def _tasks(self, where: str = "", args: Iterable = (), fields: Sequence[str] | None = None) -> Iterator[dict]:
        """Task records (only ``fields`` when given), read as plain tuples (``status`` reads
        60,000 of them per poll: no ``sqlite3.Row`` lookups by name, no JSON parse of empty values)."""
        names = TASK_FIELDS if fields is None else tuple(f for f in TASK_FIELDS if f in set(fields) | {"id"})
        decode = [k for k in _JSON_FIELDS if k in names]
        cursor = self._db.cursor()
        cursor.row_factory = None
        for row in cursor.execute(f"SELECT {', '.join(names)} FROM tasks {where}", tuple(args)):
            rec = dict(zip(names, row))
            for key in decode:
                rec[key] = _json_value(rec[key])
            yield rec

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            if getattr(self._local, "pid", None) == os.getpid():
                db.close()
            self._local.db = None

    # ------------------------------------------------------------------ sessions
    def session_id(self, session_path: Path | str, create: bool = False) -> str:
        ref = parse_session_path(session_path, must_exist=create)
        row = self._db.execute("SELECT id FROM sessions WHERE path = ?", (str(ref.path),)).fetchone()
        if row:
            return row["id"]
        if not create:
            raise NotFound(f"session {ref.path} is not in the task store (submit it first)")
        with self._tx() as db:
            row = db.execute("SELECT id FROM sessions WHERE path = ?", (str(ref.path),)).fetchone()
            if row:
                return row["id"]
            eid = str(uuid.uuid4())
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                       (eid, str(ref.path), ref.subject, ref.date, ref.number, ref.lab))
            return eid

    def session_path(self, session_id: str) -> Path | None:
        row = self._db.execute("SELECT path FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return Path(row["path"]) if row else None

    def session_paths(self, session_ids: Iterable[str]) -> dict[str, str | None]:
        wanted = set(session_ids)
        cursor = self._db.cursor()
        cursor.row_factory = None
        found = {eid: path for eid, path in cursor.execute(
            "SELECT id, path FROM sessions WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(sorted(wanted)),))}
        return {s: found.get(s) for s in wanted}

    def session_ids(self, refs, create: bool = False) -> list[str | None]:
        """One query for the known sessions and one insert for the new ones, whatever their number.

        With ``create``, both run in one write transaction: no other writer can register one of
        the new sessions in between, so their ids are the ones the insert numbered."""
        paths = [str(r.path) for r in refs]
        known_sql = "SELECT path, id FROM sessions WHERE path IN (SELECT value FROM json_each(?))"
        if not create:
            known = dict(self._db.execute(known_sql, (json.dumps(paths),)).fetchall())
            return [known.get(p) for p in paths]
        with self._tx() as db:
            known = dict(db.execute(known_sql, (json.dumps(paths),)).fetchall())
            new: dict[str, int] = {}  # each new path once, at its first place
            for k, p in enumerate(paths):
                if p not in known:
                    new.setdefault(p, k)
            if new:
                block = _id_block()
                db.execute("INSERT INTO sessions SELECT printf('%s%012x', ?, key), json_extract(value, '$[0]'), "
                           "json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
                           "json_extract(value, '$[3]'), json_extract(value, '$[4]') FROM json_each(?)",
                           (block, json.dumps([[p, refs[k].subject, refs[k].date, refs[k].number, refs[k].lab]
                                               for p, k in new.items()])))
                known.update((p, f"{block}{n:012x}") for n, p in enumerate(new))
        return [known[p] for p in paths]

    # ------------------------------------------------------------------ tasks
    def list_tasks(self, session: str | None = None, status: Iterable[str] | str | None = None,
                   name: str | None = None, graph: str | None = None,
                   fields: Sequence[str] | None = None) -> list[dict]:
        where, args = [], []
        for col, val in (("session", session), ("name", name), ("graph", graph)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        statuses = check_statuses(status)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        sql = ("WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {TASK_ORDER}"
        return list(self._tasks(sql, args, fields))

    def tasks_by_session(self, sessions, graph: str | None = None) -> dict[str, list[dict]]:
        """One query for all the sessions (a backfill's thousands), through the session index."""
        sql = "WHERE session IN (SELECT value FROM json_each(?))"
        args: list = [json.dumps(list(sessions))]
        if graph is not None:
            sql += " AND graph = ?"
            args.append(graph)
        out: dict[str, list[dict]] = {s: [] for s in sessions}
        for rec in self._tasks(sql + f" ORDER BY {TASK_ORDER}", args):
            out[rec["session"]].append(rec)
        return out

    def get_task(self, task_id: str) -> dict:
        for rec in self._tasks("WHERE id = ?", (task_id,)):
            return rec
        raise NotFound(f"no task with id {task_id}")

    def get_tasks(self, task_ids: Sequence[str], fields: Sequence[str] | None = None) -> dict[str, dict]:
        ids = list(dict.fromkeys(task_ids))
        out = {rec["id"]: rec for rec in self._tasks("WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),),
                                                     fields)}
        missing = [tid for tid in ids if tid not in out]
        if missing:
            raise NotFound(f"no task with id {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return out

    def create_task(self, record: dict) -> dict:
        return self.create_tasks([record])[0]

    def create_tasks(self, records: list[dict]) -> list[dict]:
        """One INSERT for all (a backfill's thousands of tasks), all or nothing."""
        prepared = []
        for record in records:
            fields = check_fields(dict(record))
            if "session" not in fields:
                raise BadInput("a task needs a 'session' key (an id, or None)")
            if "status" not in fields:
                raise BadInput("a task needs a 'status' when it is created")
            fields.setdefault("parents", [])
            rec = {k: fields.get(k) for k in TASK_FIELDS}
            rec["id"] = str(uuid.uuid4())
            rec["datetime"] = _now()
            prepared.append(rec)
        if not prepared:
            return []
        with self._tx() as db:
            self._check_refs(db, prepared)
            try:
                db.executemany(f"INSERT INTO tasks ({','.join(TASK_FIELDS)}) VALUES "
                               f"({','.join('?' * len(TASK_FIELDS))})",
                               [[self._encode(k, rec[k]) for k in TASK_FIELDS] for rec in prepared])
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" in str(exc):
                    names = ", ".join(repr(r["name"]) for r in prepared[:5])
                    raise Conflict(f"a task named {names if len(prepared) == 1 else 'among ' + names} "
                                   f"with these arguments already exists for its session") from None
                raise
        return prepared

    def stamp_tasks(self, template, sessions) -> StampedRecords:
        """One ``INSERT ... SELECT`` per task type for every session at once.

        The template's fields are checked and encoded once; ids, parents and the session of each
        row are made by SQLite from the session list (one JSON parameter), so the cost per
        session is a few rows written in C, not Python work per task. Task type ``j`` of session
        ``k`` is numbered ``j * sessions + k``: each statement appends to the id index instead of
        threading its rows between the previous type's. The records are made only when asked
        for (``StampedRecords``).
        """
        template = [dict(item) for item in template]
        for item in template:
            check_fields({k: v for k, v in item.items() if k not in ("id", "datetime")})
            if "status" not in item:
                raise BadInput("a task needs a 'status' when it is created")
        index = {item["name"]: j for j, item in enumerate(template)}
        block, now = _id_block(), _now()
        sessions = list(sessions)
        # parents by name until a session's records are asked for (``StampedRecords``)
        records = [{k: item.get(k) for k in TASK_FIELDS} | {"datetime": now, "parents": list(item.get("parents") or [])}
                   for item in template]
        if not sessions or not template:
            return StampedRecords(records if sessions else [], sessions, block)
        cols = [k for k in TASK_FIELDS if k not in ("id", "parents", "session", "datetime")]
        listing = json.dumps(sessions)
        with self._tx() as db:
            missing = db.execute("SELECT value FROM json_each(?) WHERE value NOT IN (SELECT id FROM sessions) "
                                 "LIMIT 1", (listing,)).fetchone()
            if missing:
                raise BadInput(f"session {missing[0]} does not exist")
            for j, item in enumerate(template):
                self._stamp_one(db, j, item, index, len(sessions), block, now, listing, cols)
        return StampedRecords(records, sessions, block)

    def _stamp_one(self, db: sqlite3.Connection, j: int, item: dict, index: dict[str, int], n_sessions: int,
                   block: str, now: str, listing: str, cols: list[str]) -> None:
        """Task type ``j`` of a template, for every session, in one statement."""
        parents = [index[p] for p in item.get("parents") or []]
        parents_sql = (f"printf('[{','.join(chr(34) + '%s%012x' + chr(34) for _ in parents)}]'"
                       + "".join(f", :block, {p * n_sessions} + key" for p in parents) + ")")
        try:
            db.execute(f"INSERT INTO tasks (id, parents, session, datetime, {','.join(cols)}) "
                       f"SELECT printf('%s%012x', :block, {j * n_sessions} + key), {parents_sql}, value, :now, "
                       f"{','.join(':' + c for c in cols)} FROM json_each(:sessions)",
                       {"block": block, "now": now, "sessions": listing,
                        **{c: self._encode(c, item.get(c)) for c in cols}})
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise Conflict(f"a task named {item['name']!r} with these arguments already exists "
                               "in one of the sessions") from None
            raise

    def update_task(self, task_id: str, **fields: Any) -> dict:
        check_fields(fields)
        if not fields:
            return self.get_task(task_id)
        fields["datetime"] = _now()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
                raise NotFound(f"no task with id {task_id}")
            self._check_refs(db, [fields])
            sets = ", ".join(f"{k} = ?" for k in fields)
            try:
                db.execute(f"UPDATE tasks SET {sets} WHERE id = ?",
                           [self._encode(k, v) for k, v in fields.items()] + [task_id])
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"update of task {task_id} breaks uniqueness: {exc}") from None
        return self.get_task(task_id)

    def append_log(self, task_id: str, text: str, **fields: Any) -> dict:
        """One UPDATE (``log = log || line``): atomic, a concurrent append is never lost."""
        check_fields(dict(fields, log=""))
        fields["datetime"] = _now()
        sets = "".join(f", {k} = ?" for k in fields)
        with self._tx() as db:
            cur = db.execute(f"UPDATE tasks SET log = COALESCE(log, '') || ?{sets} WHERE id = ?",
                             [f"\n{text}\n"] + [self._encode(k, v) for k, v in fields.items()] + [task_id])
            if cur.rowcount == 0:
                raise NotFound(f"no task with id {task_id}")
        return self.get_task(task_id)

    def append_logs(self, entries: Sequence[tuple[str, str, dict]]) -> None:
        """One transaction; one ``executemany`` per set of field names (a sweep's 60,000 lines
        are one or two)."""
        groups: dict[tuple[str, ...], list[list]] = defaultdict(list)
        now = _now()  # one moment for the lot, as one transaction
        checked: set[tuple] = set()
        for task_id, text, fields in entries:
            given = tuple(fields.items())
            try:
                seen = given in checked  # a sweep's 60,000 lines set one or two statuses
            except TypeError:  # a list value: checked each time
                seen = False
            if not seen:
                check_fields(dict(fields, log=""))
                with contextlib.suppress(TypeError):
                    checked.add(given)
            keys = tuple(fields) + ("datetime",)
            groups[keys].append([f"\n{text}\n", *(self._encode(k, v) for k, v in given), now, task_id])
        if not groups:
            return
        with self._tx() as db:
            for keys, rows in groups.items():
                sets = "".join(f", {k} = ?" for k in keys)
                cur = db.executemany(f"UPDATE tasks SET log = COALESCE(log, '') || ?{sets} WHERE id = ?", rows)
                if cur.rowcount != len(rows):  # NotFound names a missing one; the transaction is undone
                    self.get_tasks([r[-1] for r in rows])

    def delete_task(self, task_id: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount == 0:
                raise NotFound(f"no task with id {task_id}")
            for row in db.execute("SELECT id, parents FROM tasks WHERE parents LIKE ?", (f'%{task_id}%',)).fetchall():
                parents = [p for p in json.loads(row["parents"]) if p != task_id]
                db.execute("UPDATE tasks SET parents = ? WHERE id = ?", (json.dumps(parents), row["id"]))

    @staticmethod
    def _encode(key: str, value: Any) -> Any:
        if key == "parents":
            return json.dumps(list(value or []))
        if key == "arguments":
            return _canonical(value)
        return value

    @staticmethod
    def _check_refs(db: sqlite3.Connection, records: list[dict]) -> None:
        """Every session and parent named must exist (as Alyx checks), in a few IN queries."""
        for table, label, wanted in (
                ("sessions", "session", {r["session"] for r in records if r.get("session") is not None}),
                ("tasks", "parent task", {p for r in records for p in r.get("parents") or []})):
            wanted = list(wanted)
            found: set[str] = set()
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                found.update(r[0] for r in db.execute(
                    f"SELECT id FROM {table} WHERE id IN ({','.join('?' * len(chunk))})", chunk))
            for ident in wanted:
                if ident not in found:
                    raise BadInput(f"{label} {ident} does not exist")

    # ------------------------------------------------------------------ datasets
    def register_files(self, session_path: Path | str, filenames: list[str],
                       hashes: list[str | None] | None = None,
                       filesizes: list[int] | None = None,
                       versions: list[str | None] | str | None = None,
                       repository: str | None = None, server_only: bool = False) -> list[dict]:
        n = len(filenames)
        if isinstance(versions, str) or versions is None:
            versions = [versions] * n
        hashes = hashes if hashes is not None else [None] * n
        filesizes = filesizes if filesizes is not None else [None] * n
        for label, values in (("hashes", hashes), ("filesizes", filesizes), ("versions", versions)):
            if len(values) != n:
                raise BadInput(f"register_files: {n} filenames but {len(values)} {label}")
        eid = self.session_id(session_path)
        out = []
        with self._tx() as db:
            for fname, md5, size, version in zip(filenames, hashes, filesizes, versions):
                collection, revision, name = split_dataset_path(fname)
                row = db.execute("SELECT id FROM datasets WHERE session=? AND collection=? AND revision=? AND name=?",
                                 (eid, collection, revision, name)).fetchone()
                did = row["id"] if row else str(uuid.uuid4())
                db.execute("INSERT INTO datasets VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                           "file_size=excluded.file_size, hash=excluded.hash, "
                           "version=COALESCE(excluded.version, datasets.version), "
                           "repository=excluded.repository",
                           (did, eid, name, collection, revision, size, md5, version, repository, _now()))
                out.append(self._dataset(db.execute("SELECT * FROM datasets WHERE id=?", (did,)).fetchone()))
        return out

    def list_datasets(self, session: str) -> list[dict]:
        rows = self._db.execute("SELECT * FROM datasets WHERE session = ? ORDER BY collection, name", (session,))
        return [self._dataset(r) for r in rows]

    @staticmethod
    def _dataset(row: sqlite3.Row) -> dict:
        return {"id": row["id"], "name": row["name"], "collection": row["collection"],
                "revision": row["revision"], "file_size": row["file_size"], "hash": row["hash"],
                "version": row["version"], "session": row["session"],
                "data_repository": row["repository"], "created_datetime": row["created_datetime"]}
