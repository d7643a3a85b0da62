"""The task-store interface: the task records Alyx holds, whoever holds them.

Designed from Alyx's REST API (``shared/alyx/ALYX-API.md``), not from SQLite, so that the
Alyx-backed store drops in beneath everything else unchanged:

* a task record is a dict with Alyx's field names (``TASK_FIELDS``) and status strings;
* ``(name, session, arguments)`` is unique: creating a duplicate raises ``Conflict``;
* updates are partial (PATCH semantics): fields not given are untouched;
* sessions are referred to by id (an Alyx eid); ``session_id(path)`` resolves a session folder.

Job ids (SLURM or local pids) are *not* task fields in Alyx; they live in the local job ledger
(``hpcpipe.ledger``), which every store shares.
"""
from __future__ import annotations

import abc
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Iterable, Sequence

from ..errors import NotFound
from ..status import check_status

if TYPE_CHECKING:
    from ..session import SessionRef

#: Alyx task fields, in Alyx's response order.
TASK_FIELDS = ("id", "parents", "session", "data_repository", "status", "name", "priority",
               "io_charge", "level", "gpu", "cpu", "ram", "time_out_secs", "time_elapsed_secs",
               "executable", "graph", "log", "version", "datetime", "arguments")
#: Fields a caller may write (``id`` and ``datetime`` are the store's).
WRITABLE_FIELDS = frozenset(TASK_FIELDS) - {"id", "datetime"}
#: Alyx stores these as SmallInteger (-32768..32767).
SMALLINT_MAX = 32767
SMALLINT_FIELDS = frozenset({"priority", "io_charge", "level", "gpu", "cpu", "ram", "time_out_secs"})


def check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate a create/update body the way Alyx would, before it is sent anywhere.

    Unknown keys are an error here (Alyx would silently drop them, losing data); a status
    must be one of the exact strings; ``parents`` must be a list.
    """
    from ..errors import BadInput

    unknown = fields.keys() - WRITABLE_FIELDS
    if unknown:
        raise BadInput(f"unknown task field(s) {sorted(unknown)}; valid: {sorted(WRITABLE_FIELDS)}")
    if "status" in fields:
        if fields["status"] is None:
            raise BadInput("task status may not be null")
        check_status(fields["status"])
    if "parents" in fields and not isinstance(fields["parents"], (list, tuple)):
        raise BadInput(f"task parents must be a list of task ids, not {type(fields['parents']).__name__}")
    if fields.get("name") is not None and len(fields["name"]) > 64:
        raise BadInput(f"task name {fields['name']!r} is longer than 64 characters")
    for key in SMALLINT_FIELDS.intersection(fields):
        value = fields[key]
        if value is not None and not -32768 <= value <= 32767:
            raise BadInput(f"task {key}={value!r} is out of range: Alyx stores it as a SmallInteger "
                           "(-32768..32767)")
    return fields



class StampedRecords(Sequence):
    """``stamp_tasks``' answer from a store that numbers the ids of a bulk write (the embedded
    one: ``<block><12 hex digits>``, task type ``j`` of session ``k`` numbered ``j * sessions + k``).

    It is the list of each session's records, in template order, but a session's dicts are made
    only when asked for: a backfill of 10,000 sessions asks for none of its 60,000, and takes
    the ids of one task type for every session at once (``ids``).
    """

    def __init__(self, records: list[dict], sessions: list[str], block: str) -> None:
        #: the template's records (no id, session or parents), in template order
        self.records = records
        self.sessions = sessions
        self.block = block
        index = {r["name"]: j for j, r in enumerate(records)}
        #: each record's parents, by template position
        self.parents = [[index[p] for p in r.get("parents") or []] for r in records]
        self._ids: dict[int, list[str]] = {}

    @staticmethod
    def id_of(block: str, sessions: int, j: int, k: int) -> str:
        """The id of task type ``j`` of session ``k`` in an answer of ``sessions`` sessions
        numbered from ``block`` (what a job works out from its chunk file)."""
        return f"{block}{j * sessions + k:012x}"

    def ids(self, j: int) -> list[str]:
        """The id of task type ``j`` in every session, in session order (``id_of`` for each)."""
        found = self._ids.get(j)
        if found is None:  # ``id_of`` inlined: 60,000 ids for a 10,000-session backfill
            base, block = j * len(self.sessions), self.block
            found = self._ids[j] = [f"{block}{base + k:012x}" for k in range(len(self.sessions))]
        return found

    def __len__(self) -> int:
        return len(self.sessions)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        ids = [self.ids(j)[k] for j in range(len(self.records))]
        return [dict(rec, id=ids[j], session=self.sessions[k], parents=[ids[p] for p in self.parents[j]])
                for j, rec in enumerate(self.records)]

class TaskStore(abc.ABC):
    """Where task records live. Implementations: ``SQLiteStore`` (embedded) and ``AlyxStore``."""

    #: short name shown in tables and used in config (``[store] backend = ...``)
    kind: str = ""

    # ------------------------------------------------------------------ sessions
    @abc.abstractmethod
    def session_id(self, session_path: Path | str, create: bool = False) -> str:
        """The id (eid) of the session stored at ``session_path``.

        ``create=True`` lets the embedded store register a new session; Alyx never creates
        sessions from here (they come from the rig), so it raises ``NotFound`` instead.
        """

    @abc.abstractmethod
    def session_path(self, session_id: str) -> Path | None:
        """The local folder of a session id, when this store knows it."""

    def session_paths(self, session_ids: Iterable[str]) -> dict[str, str | None]:
        """``session_path`` of many ids, as text (the embedded store: one query; a status table
        names 10,000 sessions, and needs their text, not 10,000 ``Path`` objects)."""
        return {s: (None if (p := self.session_path(s)) is None else str(p)) for s in session_ids}

    def session_ids(self, refs: "Sequence[SessionRef]", create: bool = False) -> list[str | None]:
        """``session_id`` of many checked session folders, in order; ``None`` for a session the
        store does not know when ``create`` is False. The embedded store answers in two
        statements whatever the number of sessions; the default asks one by one."""
        out: list[str | None] = []
        for ref in refs:
            try:
                out.append(self.session_id(ref.path, create=create))
            except NotFound:
                if create:
                    raise
                out.append(None)
        return out

    # ------------------------------------------------------------------ tasks
    @abc.abstractmethod
    def list_tasks(self, session: str | None = None, status: Iterable[str] | str | None = None,
                   name: str | None = None, graph: str | None = None,
                   fields: Sequence[str] | None = None) -> list[dict]:
        """Task records matching every filter given, ordered by level then priority (desc).

        One round trip for the lot (Alyx: one paginated query), never one per task.
        ``fields``: the fields the caller reads (``id`` among them); a store may return more
        (Alyx's listing has no field selection), the embedded store reads only those.
        """

    def tasks_by_session(self, sessions: Sequence[str], graph: str | None = None) -> dict[str, list[dict]]:
        """``list_tasks(session=s, graph=graph)`` for many sessions (the embedded store: one query)."""
        return {s: self.list_tasks(session=s, graph=graph) for s in sessions}

    @abc.abstractmethod
    def get_task(self, task_id: str) -> dict:
        """One task record; ``NotFound`` if there is none."""

    def get_tasks(self, task_ids: Sequence[str], fields: Sequence[str] | None = None) -> dict[str, dict]:
        """``{id: record}`` of many tasks (the embedded store: one query, where a sweep of a
        cancelled backfill would read 60,000 one by one); ``NotFound`` if one is missing.
        ``fields``: those the caller reads, as for ``list_tasks``."""
        return {tid: self.get_task(tid) for tid in task_ids}

    @abc.abstractmethod
    def create_task(self, record: dict) -> dict:
        """Create a task (``session`` key and ``status`` required); returns the stored record."""

    def create_tasks(self, records: list[dict]) -> list[dict]:
        """Create many tasks (their parents already stored); returns the records in order.

        The embedded store writes them in one statement; a REST store creates them one by one
        (the default here).
        """
        return [self.create_task(r) for r in records]

    def stamp_tasks(self, template: Sequence[dict], sessions: Sequence[str]) -> Sequence[list[dict]]:
        """Create one pipeline's graph for many sessions that have none of its tasks yet.

        ``template``: the task records without ``session``, parents *by name*, parents listed
        first (``pipeline.graph_template``); it has been checked once, for every session. Returns
        each session's records in template order, parents as ids. The embedded store writes
        each task type for all sessions in one statement; the default creates them round by
        round with ``create_tasks`` (Alyx: one request per task).
        """
        made: list[dict[str, dict]] = [{} for _ in sessions]
        for item in template:
            created = self.create_tasks([dict(item, session=eid, parents=[made[k][p]["id"] for p in item["parents"]])
                                         for k, eid in enumerate(sessions)])
            for k, rec in enumerate(created):
                made[k][item["name"]] = rec
        return [[m[item["name"]] for item in template] for m in made]

    @abc.abstractmethod
    def update_task(self, task_id: str, **fields: Any) -> dict:
        """Partial update (PATCH): only the given fields change. Returns the stored record."""

    def append_log(self, task_id: str, text: str, **fields: Any) -> dict:
        """Append ``text`` as a line to the task's log, and set ``fields`` (e.g. ``status``), as one
        operation: every writer of a log line (sweep, cancel, engines) goes through here, and a
        store that can (the embedded one) makes it atomic, so a concurrent append is never lost.
        Alyx's REST API has no append: read-then-PATCH is the best a REST store can do.
        """
        check_fields(dict(fields, log=""))
        task = self.get_task(task_id)
        return self.update_task(task_id, log=(task.get("log") or "") + f"\n{text}\n", **fields)

    def append_logs(self, entries: Sequence[tuple[str, str, dict]]) -> None:
        """``append_log(task_id, text, **fields)`` for each ``(task_id, text, fields)``, all or
        nothing where the store can (the embedded one: one transaction, one statement per set
        of fields); a REST store sends them one by one (the default), once every entry's fields
        have passed the checks, so bad input changes nothing there either."""
        for _, _, fields in entries:
            check_fields(dict(fields, log=""))
        for task_id, text, fields in entries:
            self.append_log(task_id, text, **fields)

    @abc.abstractmethod
    def delete_task(self, task_id: str) -> None:
        """Delete a task; it is also removed from its children's ``parents``."""

    # ------------------------------------------------------------------ datasets
    @abc.abstractmethod
    def register_files(self, session_path: Path | str, filenames: list[str],
                       hashes: list[str | None] | None = None,
                       filesizes: list[int] | None = None,
                       versions: list[str | None] | str | None = None,
                       repository: str | None = None, server_only: bool = False) -> list[dict]:
        """Register output files of a session (names relative to the session folder).

        Returns one dataset record per file, in order. Lists must have equal lengths (Alyx
        would silently truncate; stores refuse instead).
        """

    @abc.abstractmethod
    def list_datasets(self, session: str) -> list[dict]:
        """Dataset records of a session (``name``, ``collection``, ``file_size``, ``hash``...)."""

    # ------------------------------------------------------------------ lifecycle
    def batch(self) -> ContextManager[None]:
        """A unit of many writes. The embedded store makes it one transaction; a REST store
        has nothing to group and sends each write as it comes (the default)."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Release connections; the store may not be used afterwards."""

    def __enter__(self) -> "TaskStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
