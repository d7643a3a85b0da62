"""The run folder: how the submitting side and the job side talk without a database.

A run folder lives on a file system the login node and the compute nodes share::

    <run>/run.json                 run id, store kind, data location, the settings jobs use
    <run>/sessions/<chunk>.json    each session's eid, path and task records (``sessions_json``)
    <run>/scripts/<job>.sh         the exact scripts submitted
    <run>/logs/                    SLURM stdout/stderr
    <run>/results/<task id>.json   what the job did: the store operations it made, in order

The job side reads its session's entry (no database query before the task starts), and
records every store operation (Started, the final patch, the registration) in its result file,
written atomically. With the embedded SQLite store, compute nodes never open the database (SQLite
over a network file system is unsafe): the login node *folds* result files into the store when
``status``/``sync`` run. With Alyx, the job reports directly and the result file is the fallback
for reports Alyx did not take.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Any, Iterable

from ..errors import NotFound, StoreError, Unreachable
from ..files import atomic_write
from ..status import DONE
from ..store import health, outbox
from ..store.base import StampedRecords, TaskStore, check_fields
from . import reasons

_logger = logging.getLogger(__name__)


#: the fields of a record a job needs, besides id, status and parents: shared by every session's
#: task of one type, so a chunk file holds them once per type (``sessions_json``)
_TYPE_FIELDS = ("name", "executable", "level", "priority", "cpu", "gpu", "ram", "io_charge", "time_out_secs",
                "graph", "version", "arguments")
_SHARED = _TYPE_FIELDS[:-1]  # compared by value; arguments (a dict) by identity


def session_entry(eid: str, path: str, deck: list[dict], elsewhere: dict[str, str] | None = None) -> dict:
    """What a job needs to know of its session: id, path on the cluster, every task record, and
    ``elsewhere``: the run folder of each parent that runs in an earlier run (or was submitted
    by another process), whose result file tells the job that parent's real outcome."""
    entry = {"eid": eid, "path": path, "tasks": deck}
    if elsewhere:
        entry["elsewhere"] = dict(elsewhere)
    return entry


def stamped_entry(made: StampedRecords, k: int, path: str) -> dict:
    """``session_entry`` of session ``k`` of a ``stamp_tasks`` answer whose records were never
    made: ``sessions_json`` writes its place in the answer, with no record per task."""
    return {"eid": made.sessions[k], "path": path, "stamped": (made, k)}


def run_json(run_id: str, store_kind: str, location: str, upstream: bool | None = None,
             extra: dict | None = None, *, settings: dict) -> str:
    """The text of ``run.json``.

    ``settings`` (``Settings.for_job``: no secrets) are the only settings a job uses: it reads
    none of its machine's configuration (``Settings.from_run``).

    ``upstream``: jobs write the store directly (and record in their result file only what it
    could not take). Default: only for a store that is not the embedded SQLite file, which
    compute nodes must not open over a network file system; the local engine, on the store's
    own machine, says True.
    """
    if upstream is None:
        upstream = store_kind != "sqlite"
    return json.dumps({"run_id": run_id, "store": store_kind, "location": location, "upstream": upstream,
                       "settings": settings, **(extra or {})})


def sessions_json(entries: dict[int, dict]) -> str:
    """The text of one ``sessions/<chunk>.json`` file.

    A backfill's chunk holds thousands of sessions of one pipeline, whose records differ only in
    id, status and parents: each distinct task type is written once (``types``) and each task as
    ``[type, id, status, parents]``. Sessions stamped together by the embedded store (one
    ``stamp_tasks`` answer) differ only in their session and their place ``k`` in the answer,
    from which their ids follow (``StampedRecords.id_of``): the answer's task list is written
    once (``stamps``) and each such session as ``[stamp, k, eid, path]``, so writing a chunk of
    10,000 sessions, and each job's reading of it, costs about a tenth of a full listing.
    """
    types: dict[tuple, int] = {}
    fields: list[dict] = []
    shapes: dict[int, list[int]] = {}  # the type of each deck position, per template plan
    stamps: dict[int, int] = {}  # id() of a stamp_tasks answer -> its place in ``stamp_list``
    stamp_list: list[dict] = []
    sessions: dict[str, Any] = {}

    def type_of(task: dict) -> int:
        # records of one type share their arguments dict (stamped): its id() keys the type
        key = (*map(task.get, _SHARED), id(task.get("arguments")))
        index = types.get(key)
        if index is None:
            index = types[key] = len(fields)
            fields.append({k: task.get(k) for k in _TYPE_FIELDS})
        return index

    def stamp_of(made: StampedRecords) -> int:
        index = stamps.get(id(made))
        if index is None:
            index = stamps[id(made)] = len(stamp_list)
            stamp_list.append({"block": made.block, "sessions": len(made.sessions),
                               "tasks": [[type_of(task), task["status"], parents]
                                         for task, parents in zip(made.records, made.parents)]})
        return index

    for i, entry in entries.items():
        if "stamped" in entry:
            made, k = entry["stamped"]
            sessions[str(i)] = [stamp_of(made), k, entry["eid"], entry["path"]]
            continue
        tasks = entry["tasks"]
        # sessions stamped from one template plan (``origin``) have the same types, in order
        origin = entry.get("origin")
        kinds = shapes.get(id(origin)) if origin is not None else None
        if kinds is None or len(kinds) != len(tasks):
            kinds = [type_of(task) for task in tasks]
            if origin is not None:
                shapes[id(origin)] = kinds
        entry_out = {"eid": entry["eid"], "path": entry["path"],
                     "tasks": [(k, t["id"], t["status"], t["parents"]) for k, t in zip(kinds, tasks)]}
        if entry.get("elsewhere"):
            entry_out["elsewhere"] = entry["elsewhere"]
        sessions[str(i)] = entry_out
    return json.dumps({"types": fields, "stamps": stamp_list, "sessions": sessions})


def load_session_entry(run_dir: Path, chunk: str, index: int) -> dict:
    """The job side's view of its session (chunk file, element index): ``session_entry``'s
    dict, every task a full record again."""
    data = _read_chunk(run_dir, chunk)
    try:
        entry = data["sessions"][str(index)]
    except KeyError:
        raise NotFound(f"no session with index {index} in {run_dir}/sessions/{chunk}.json") from None
    return _expand(data, entry)


def load_session_entries(run_dir: Path, chunk: str) -> dict[str, dict]:
    """Every session entry of a chunk file, by index (what a pack's engine and the recorder
    read once)."""
    data = _read_chunk(run_dir, chunk)
    return {i: _expand(data, entry) for i, entry in data["sessions"].items()}


def _read_chunk(run_dir: Path | str, chunk: str) -> dict:
    return json.loads((Path(run_dir) / "sessions" / f"{chunk}.json").read_text())


def _expand(data: dict, entry: dict | list) -> dict:
    types = data["types"]
    if isinstance(entry, list):  # a stamped session: its ids follow from its place in the answer
        s, k, eid, path = entry
        stamp = data["stamps"][s]
        block, n = stamp["block"], stamp["sessions"]
        ids = [StampedRecords.id_of(block, n, j, k) for j in range(len(stamp["tasks"]))]
        tasks = [dict(types[t], id=ids[j], status=status, parents=[ids[p] for p in parents], session=eid)
                 for j, (t, status, parents) in enumerate(stamp["tasks"])]
        return session_entry(eid, path, tasks)
    tasks = [dict(types[t], id=tid, status=status, parents=parents, session=entry["eid"])
             for t, tid, status, parents in entry["tasks"]]
    return session_entry(entry["eid"], entry["path"], tasks, entry.get("elsewhere"))


def result_path(run_dir: Path | str, task_id: str) -> Path:
    return Path(run_dir) / "results" / f"{task_id}.json"


def read_result(text: str | None) -> dict | None:
    """A result file's content, or None when it is absent or half-written elsewhere."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


class RunFolderStore(TaskStore):
    """The job side's task store: the session entry, with every write recorded in a result file.

    ``upstream`` (an Alyx store) is written to directly when given; an operation it cannot take
    (``Unreachable``) is kept in the result file for the login node to replay. Without upstream
    (the embedded store) every operation is kept for folding.

    ``job`` (SLURM job id, node, pid, restart count, the job's output file) is saved with the
    result, so the sweep can read the output file of a job that was killed (a memory kill is
    told from a ``kill -9`` there). When SLURM restarts a requeued job, the existing result
    file is continued, never replaced: the login node counts the operations it folded.

    ``guard`` (a ``signals.SignalGuard``) makes every write a critical section.
    """

    kind = "runfolder"
    #: ``outbox.deliver`` calls it directly: what upstream does not take stays in the result file
    keeps_undelivered = True

    def __init__(self, run_dir: Path | str, entry: dict, task_id: str, upstream: TaskStore | None = None,
                 job: dict | None = None, guard=None) -> None:
        self.run_dir = Path(run_dir)
        self.entry = entry
        self.task_id = task_id
        self.upstream = upstream
        self.guard = guard
        self.tasks = {t["id"]: dict(t) for t in entry["tasks"]}
        self._inflight: tuple | None = None  # (thread, op index, outcome) of a report being sent
        self.result = {"task_id": task_id, "ops": [], "final": False, "upstream": upstream is not None}
        previous = read_result(_read(result_path(self.run_dir, task_id)))
        if previous is not None and previous.get("ops"):
            # a requeued job running again: carry on after the operations already recorded, even
            # after a final outcome (an attempt that judged its SIGTERM wrong): the login node
            # counts the operations it folded, so the file must never shrink
            self.result["ops"] = previous["ops"]
            self.result["attempts"] = previous.get("attempts", [])
            for op in previous["ops"]:
                if op["op"] == "update_task" and op["payload"].get("task_id") in self.tasks:
                    fields = {k: v for k, v in op["payload"].items() if k != "task_id"}
                    self.tasks[op["payload"]["task_id"]].update(fields)
        if job:
            self.result.setdefault("attempts", []).append(job)
            self.result["job"] = job

    def _critical(self):
        return self.guard.critical() if self.guard is not None else contextlib.nullcontext()

    def _save(self) -> None:
        atomic_write(result_path(self.run_dir, self.task_id), json.dumps(self.result))

    def _record(self, op: str, payload: dict, delivered: bool) -> None:
        self.result["ops"].append({"op": op, "payload": payload, "delivered": delivered})
        self._save()

    def finish(self, status: str, exit_code: int, final: bool = True) -> None:
        """Mark the result final (the job ended by itself and said so).

        ``final=False`` (a requeued job): the outcome is saved but more will come.
        """
        with self._critical():
            self._settle_inflight()
            self.result.update(final=final, status=status, exit_code=exit_code)
            self._save()

    # -- sessions
    def session_id(self, session_path, create: bool = False) -> str:
        return self.entry["eid"]

    def session_path(self, session_id: str) -> Path | None:
        return Path(self.entry["path"]) if session_id == self.entry["eid"] else None

    # -- tasks
    def _overlay(self) -> None:
        """The tasks' real outcome, not the copy taken at submission: a task that ran in this run
        (or in the earlier run ``elsewhere`` names) has it in its result file; with an upstream
        store (Alyx), a parent still not done there is read from the store itself."""
        elsewhere = self.entry.get("elsewhere") or {}
        for tid, task in self.tasks.items():
            if tid == self.task_id or task["status"] in DONE:
                continue
            for folder in (self.run_dir, elsewhere.get(tid)):
                if folder is None:
                    continue
                res = read_result(_read(result_path(folder, tid)))
                for op in (res or {}).get("ops", []):
                    if op["op"] == "update_task" and op["payload"]["task_id"] == tid and "status" in op["payload"]:
                        task["status"] = op["payload"]["status"]
        if self.upstream is None:
            return
        for pid in self.tasks.get(self.task_id, {}).get("parents") or []:
            parent = self.tasks.get(pid)
            if parent is not None and parent["status"] not in DONE:
                try:
                    parent["status"] = self.upstream.get_task(pid)["status"]
                except (Unreachable, NotFound):
                    pass

    def list_tasks(self, session=None, status=None, name=None, graph=None, fields=None) -> list[dict]:
        self._overlay()
        out = [dict(t) for t in self.tasks.values()
               if (name is None or t["name"] == name) and (graph is None or t["graph"] == graph)]
        if status is not None:
            wanted = {status} if isinstance(status, str) else set(status)
            out = [t for t in out if t["status"] in wanted]
        return out

    def get_task(self, task_id: str) -> dict:
        if task_id not in self.tasks:
            raise NotFound(f"task {task_id} is not in this run's session entry")
        return dict(self.tasks[task_id])

    def create_task(self, record: dict) -> dict:
        raise StoreError("a job cannot create tasks")

    def delete_task(self, task_id: str) -> None:
        raise StoreError("a job cannot delete tasks")

    def update_task(self, task_id: str, **fields: Any) -> dict:
        check_fields(fields)
        self.get_task(task_id)
        with self._critical():
            self.tasks[task_id].update(fields)
            payload = dict(fields, task_id=task_id)
            result = self._upstream("update_task", payload)
        return dict(self.tasks[task_id], **(result or {}))

    def register_files(self, session_path, filenames, hashes=None, filesizes=None, versions=None,
                       repository=None, server_only=False) -> list[dict]:
        payload = {"session_path": str(session_path), "filenames": list(filenames), "hashes": hashes,
                   "filesizes": filesizes, "versions": versions, "repository": repository,
                   "server_only": server_only, "session": self.entry["eid"]}
        with self._critical():
            result = self._upstream("register_files", payload)
        return result if isinstance(result, list) else [{"name": f} for f in filenames]

    def _upstream(self, op: str, payload: dict):
        """Send an operation upstream within the report budget, or keep it for the login node.

        Nothing is sent while the store is marked down (``health``); the first failure marks
        it. The Started report goes in the background, so the task's work never waits on it.
        """
        # a task whose record is not made yet (``hpcpipe.recorder``) has nothing upstream to update
        if self.upstream is not None and not str(payload.get("task_id", "")).startswith("new-"):
            self._settle_inflight()
            key = outbox.store_key(self.upstream)
            if not health.is_down(key):
                if op == "update_task" and set(payload) == {"task_id", "status"} and payload["status"] == "Started" \
                        and getattr(self.upstream, "kind", "") == "alyx":  # a REST store (SQLite: one thread)
                    self._send_in_background(op, payload, key)
                    return None
                try:
                    with health.reporting(self.upstream):
                        result = _apply(self.upstream, op, payload)
                except Unreachable as exc:
                    health.mark_down(key, str(exc))
                else:
                    self._record(op, payload, delivered=True)
                    return result
        self._record(op, payload, delivered=False)
        return None

    def _send_in_background(self, op: str, payload: dict, key: str) -> None:
        """Record the operation (kept if the job dies first), then send it from a thread; the
        next operation (or ``finish``) waits for it, so reports still reach the store in order."""
        index = len(self.result["ops"])
        self._record(op, payload, delivered=False)
        outcome: dict[str, bool] = {}

        def send() -> None:
            try:
                with health.reporting(self.upstream):
                    _apply(self.upstream, op, payload)
                outcome["delivered"] = True
            except Unreachable as exc:
                health.mark_down(key, str(exc))
            except Exception:  # noqa: BLE001 - kept undelivered: the login node's replay says why
                _logger.exception("%s report of task %s not delivered", payload.get("status"), self.task_id)

        thread = threading.Thread(target=send, name="hpcpipe-report", daemon=True)
        self._inflight = (thread, index, outcome)
        thread.start()

    def _settle_inflight(self) -> None:
        if self._inflight is None:
            return
        thread, index, outcome = self._inflight
        thread.join()
        self._inflight = None
        if outcome.get("delivered"):
            self.result["ops"][index]["delivered"] = True
            self._save()

    def list_datasets(self, session: str) -> list[dict]:
        if self.upstream is not None:
            return self.upstream.list_datasets(session)
        return []


def append_op(run_dir: Path | str, task_id: str, fields: dict, delivered: bool = False,
              final: bool = True) -> None:
    """Add one ``update_task`` to a task's result file (created if absent), for a task the job
    side could not report itself: Held inside a pack, or stopped with its allocation.

    The operations already there are kept (the login node counts what it folded)."""
    path = result_path(run_dir, task_id)
    result = read_result(_read(path)) or {"task_id": task_id, "ops": [], "final": False, "upstream": delivered}
    result["ops"].append({"op": "update_task", "payload": dict(fields, task_id=task_id), "delivered": delivered})
    if final:
        result.update(final=True, status=fields.get("status", result.get("status")))
    atomic_write(path, json.dumps(result))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def store_payload(store: TaskStore, op: str, payload: dict) -> dict:
    """A recorded operation's payload as ``store``'s method takes it.

    A registration names its session by id (``session``): the store's own path for that session
    replaces the path the job saw, which may be a cluster path or a scratch copy.
    """
    payload = dict(payload)
    if op == "register_files":
        eid = payload.pop("session", None)
        local = store.session_path(eid) if eid else None
        if local is not None:
            payload["session_path"] = str(local)
    return payload


def _apply(store: TaskStore, op: str, payload: dict):
    return outbox.apply(store, op, store_payload(store, op, payload))


def fold(store: TaskStore, results: Iterable[tuple[str, str | None, int]],
         replay: bool = True) -> dict[str, tuple[int, bool]]:
    """Apply result files to the store: ``(task_id, text, ops already applied)`` each.

    Only operations beyond those already applied are replayed, and those the job delivered
    upstream itself are skipped, so folding twice changes nothing. Returns, per task id with a
    readable result, ``(ops applied in total, final)``. An operation the store cannot take now
    (``Unreachable``) goes to the outbox, so the file counts as folded either way.
    ``replay=False``: queued reports are not replayed first (``outbox.deliver``).
    """
    out: dict[str, tuple[int, bool]] = {}
    for task_id, text, applied in results:
        res = read_result(text)
        if res is None:
            continue
        ops = res["ops"]
        for op in ops[applied:]:
            if not op.get("delivered"):  # kept in the outbox if the store cannot take it now
                outbox.deliver(store, op["op"], _replay=replay, **store_payload(store, op["op"], op["payload"]))
        note = requeue_note(res) if applied < len(ops) else None
        if note:
            outbox.deliver(store, "append_log", _replay=replay, task_id=task_id, text=note)
        out[task_id] = (len(ops), bool(res.get("final")))
    return out


def requeue_note(res: dict) -> str | None:
    """The line a final result of a requeued job adds to its task's log, or None.

    The last attempt's report replaces the log (ibllib's ``clobber``), so without it nothing
    would say that SLURM preempted or failed the job and ran it again. Tagged ``REQUEUED``
    only when the task ended done: after a failure the failure's tag must stay the last one,
    since ``rerun --escalate`` reads the last tag.
    """
    restarts = int((res.get("job") or {}).get("restart") or 0)
    if not res.get("final") or restarts < 1:
        return None
    text = (f"SLURM requeued job {(res.get('job') or {}).get('job_id')} {restarts} time(s) (preemption or node "
            f"failure); the log above is the last attempt's")
    return reasons.line(reasons.REQUEUED, text) if res.get("status") in DONE else f"hpcpipe: {text}"
