"""A backfill's task records on a store whose creates are slow, made after its jobs are queued.

Alyx has no bulk create and allows about 550 requests a minute per user (ALYX-API.md), so
creating 6,000 records before queueing 1,000 sessions kept the user waiting about 11 minutes,
and an interrupted submitter left a half-recorded, unqueued backfill. A backfill on Alyx now:

1. gives each new task a **provisional id** (``new-<32 hex>``: not a UUID, so the Alyx store
   refuses to send one anywhere) and queues its arrays at once. The chunk files of the run
   folder, written before the first sbatch, hold every provisional record: they are the to-do
   list, and nothing else needs saving for the records to be made later.
2. starts a **background recorder** (``python -m hpcpipe.recorder RUN_DIR``; its log is
   ``<run>/logs/recorder.log``) that creates the records parents first, paced at
   ``[alyx] record_rate`` creates a minute (400: the jobs keep the rest of the throttle), waits
   out a 429 or an outage, and writes each store id to ``<run>/records/<provisional id>`` the
   moment Alyx answers. It exits when every record exists (``records/.done``).
3. a **job** that starts before the recorder reached its task makes its own record (``claim``:
   one listing of its session, one create) and writes the same file. Nothing can be recorded
   twice: Alyx's ``(name, session, arguments)`` uniqueness (every stamped record has non-null
   arguments) turns the second create into a read of the first.
4. the **login node** (``status``/``sync``/``cancel``, through the SLURM backend's refresh)
   renames the ledger's provisional ids to store ids from those files, and creates on the spot a
   record the sweep needs before the recorder got there. ``hpcpipe sync`` resumes a recorder that
   was killed, from the id files: a killed submitter or recorder loses nothing.

Why not the alternatives: recording before queueing makes the user wait on Alyx's pace; records
made only by jobs leave tasks that never start (Held behind a failure, cancelled) without one;
a recorder that must run to completion before anything is queued dies with the submitter.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import Conflict, HpcpipeError, StoreError, Unreachable
from .files import atomic_write
from .jobside.runfolder import _TYPE_FIELDS, load_session_entries, session_entry
from .settings import Settings, current
from .store.base import TaskStore

_logger = logging.getLogger(__name__)
PREFIX = "new-"
RECORDS = "records"
DONE_MARK = ".done"


def provisional_id() -> str:
    """A task id made on this machine, until the store gives the task its own."""
    return PREFIX + uuid.uuid4().hex


def is_provisional(task_id: object) -> bool:
    return isinstance(task_id, str) and task_id.startswith(PREFIX)


def stamp(template: Sequence[dict], sessions: Sequence[str]) -> list[list[dict]]:
    """``TaskStore.stamp_tasks``'s answer with provisional ids, nothing written: each session's
    records in template order, parents as (provisional) ids."""
    out = []
    for eid in sessions:
        ids = {item["name"]: provisional_id() for item in template}
        out.append([dict(item, id=ids[item["name"]], session=eid, parents=[ids[p] for p in item["parents"]])
                    for item in template])
    return out


def records_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / RECORDS


def known_ids(run_dir: Path | str, wanted: Iterable[str] | None = None) -> dict[str, str]:
    """Provisional id → store id, from the run's id files (all of them, or only ``wanted``)."""
    folder = records_dir(run_dir)
    if wanted is None:
        try:
            wanted = [n for n in os.listdir(folder) if is_provisional(n)]
        except FileNotFoundError:
            return {}
    out = {}
    for name in wanted:
        try:
            text = (folder / name).read_text().strip()
        except FileNotFoundError:
            continue
        if text:
            out[name] = text
    return out


def write_id(run_dir: Path | str, provisional: str, store_id: str) -> None:
    atomic_write(records_dir(run_dir) / provisional, store_id)


def done(run_dir: Path | str) -> bool:
    """Whether every record of the run exists (the recorder finished)."""
    return (records_dir(run_dir) / DONE_MARK).exists()


def deferred(run_dir: Path | str) -> bool:
    """Whether the run's records are made after queueing (it has a records folder)."""
    return records_dir(run_dir).is_dir()


def _chunk_tasks(run_dir: Path) -> list[tuple[str, list[tuple[dict, str, str, list[str]]]]]:
    """Every session of the run's chunk files: ``(eid, [(record, id, status, parents)])``."""
    out = []
    for path in sorted((run_dir / "sessions").glob("*.json")):
        for entry in load_session_entries(run_dir, path.stem).values():
            out.append((entry["eid"], [(task, task["id"], task["status"], task["parents"]) for task in entry["tasks"]]))
    return out


def _fields(kind: dict, eid: str, status: str, parents: list[str]) -> dict:
    return {**{k: kind.get(k) for k in _TYPE_FIELDS}, "session": eid, "status": status, "parents": parents}


def create_or_find(store: TaskStore, fields: dict) -> dict:
    """Create a task; if Alyx says it exists (someone else made it), the existing record."""
    try:
        return store.create_task(fields)
    except Conflict:
        same = [t for t in store.list_tasks(session=fields["session"], name=fields["name"])
                if t.get("arguments") == fields.get("arguments")]
        if len(same) != 1:
            raise
        return same[0]


class Recorder:
    """Creates the missing records of one run, parents first, paced (``[alyx] record_rate``)."""

    def __init__(self, store: TaskStore, run_dir: Path | str, rate: float | None = None,
                 settings: Settings | None = None) -> None:
        self.store = store
        self.run_dir = Path(run_dir)
        self.rate = float(rate if rate is not None else (settings or current()).alyx.record_rate)
        self._next = 0.0
        self.created = 0

    def _pace(self) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(now, self._next) + 60.0 / self.rate

    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[bool]:
        """One recorder per run at a time; yields False when another one holds it."""
        folder = records_dir(self.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def run(self, only: set[str] | None = None, patience: float = 600.0) -> int:
        """Create every missing record (or those of ``only`` and their ancestors); returns how
        many are still missing. A store that cannot take a create now (429 beyond the client's
        own waiting, an outage) is waited for up to ``patience`` seconds in a row; then the
        recorder stops and ``hpcpipe sync`` carries on later."""
        sessions = _chunk_tasks(self.run_dir)
        known = known_ids(self.run_dir)
        todo: list[tuple[str, dict, str, str, list[str]]] = []
        for eid, tasks in sessions:
            wanted = None
            if only is not None:
                by_id = {tid: parents for _, tid, _, parents in tasks}
                wanted, stack = set(), [t for t in by_id if t in only]
                while stack:  # the tasks asked for and their ancestors
                    tid = stack.pop()
                    if tid not in wanted:
                        wanted.add(tid)
                        stack.extend(p for p in by_id.get(tid, ()) if p in by_id)
            for kind, tid, status, parents in tasks:
                if tid not in known and (wanted is None or tid in wanted) and is_provisional(tid):
                    todo.append((eid, kind, tid, status, parents))
        # one task type at a time over every session: the order in which the arrays start
        order = {tid: k for _, tasks in sessions for k, (_, tid, _, _) in enumerate(tasks)}
        todo.sort(key=lambda t: order[t[2]])
        missing = 0
        for eid, kind, tid, status, parents in todo:
            mapped = [known.get(p, p) for p in parents]
            if any(is_provisional(p) for p in mapped):
                missing += 1  # a parent could not be recorded: its child waits for the next run
                continue
            failing_since = None
            while True:
                self._pace()
                try:
                    rec = create_or_find(self.store, _fields(kind, eid, status, mapped))
                    break
                except Unreachable as exc:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if only is not None or now - failing_since > patience:
                        _logger.warning("recorder of %s stops: %s", self.run_dir.name, exc)
                        return len(todo) - self.created
                    time.sleep(min(30.0, 1.0 + now - failing_since))
                except HpcpipeError as exc:
                    _logger.error("task %s of session %s not recorded: %s", kind.get("name"), eid, exc)
                    rec = None
                    break
            if rec is None:
                missing += 1
                continue
            write_id(self.run_dir, tid, rec["id"])
            known[tid] = rec["id"]
            self.created += 1
            if self.created % 500 == 0:
                _logger.info("recorder of %s: %d record(s) made, %d to go", self.run_dir.name, self.created,
                             len(todo) - self.created)
        if only is None and not missing:
            atomic_write(records_dir(self.run_dir) / DONE_MARK, str(time.time()))
        return missing


def record_now(store: TaskStore, decks: Iterable[list[dict]]) -> int:
    """Make the provisional records of these sessions' decks now, parents first (a backfill
    with no job to queue: nothing to wait for). Returns how many were made."""
    made = 0
    for deck in decks:
        known: dict[str, str] = {}
        for task in deck:  # template order: parents first
            if is_provisional(task["id"]):
                parents = [known.get(p, p) for p in task["parents"]]
                known[task["id"]] = create_or_find(store, _fields(task, task["session"], task["status"], parents))["id"]
                made += 1
    return made


def claim(store: TaskStore, run_dir: Path | str, entry: dict, task_name: str) -> dict:
    """The job side: its session entry with store ids, its own record made if nobody has yet.

    Reads only the id files of its session's tasks; when its own is missing, one listing of the
    session on the store (the recorder may have made it without writing the file yet) and, if
    still missing, one create. Parents ran before this job (``aftercorr``) and made theirs."""
    tasks = entry["tasks"]
    known = known_ids(run_dir, [t["id"] for t in tasks if is_provisional(t["id"])])
    own = next(t for t in tasks if t["name"] == task_name)
    if is_provisional(own["id"]) and own["id"] not in known:
        stored = {t["name"]: t for t in store.list_tasks(session=entry["eid"])}
        for t in tasks:
            found = stored.get(t["name"])
            if is_provisional(t["id"]) and t["id"] not in known and found is not None \
                    and found.get("arguments") == t.get("arguments"):
                known[t["id"]] = found["id"]
                write_id(run_dir, t["id"], found["id"])
        if own["id"] not in known:
            parents = [known.get(p, p) for p in own["parents"]]
            if any(is_provisional(p) for p in parents):
                raise StoreError(f"the parents of {task_name} have no record on the store yet")
            rec = create_or_find(store, _fields(own, entry["eid"], own["status"], parents))
            known[own["id"]] = rec["id"]
            write_id(run_dir, own["id"], rec["id"])
    if not known:
        return entry
    return session_entry(entry["eid"], entry["path"], [
        dict(t, id=known.get(t["id"], t["id"]), parents=[known.get(p, p) for p in t["parents"]]) for t in tasks])


def adopt_result(run_dir: Path | str, provisional: str, known: dict[str, str]) -> bool:
    """A job that reported under its provisional id (the store was unreachable when it
    started): its result file moves to its store id, the ids in its operations translated, so
    the fold replays it like any other. Returns whether there was such a file."""
    from .jobside.runfolder import read_result, result_path

    old = result_path(run_dir, provisional)
    try:
        res = read_result(old.read_text())
    except FileNotFoundError:
        return False
    if res is None:
        return False
    res["task_id"] = known.get(res["task_id"], res["task_id"])
    for op in res["ops"]:
        if "task_id" in op["payload"]:
            op["payload"]["task_id"] = known.get(op["payload"]["task_id"], op["payload"]["task_id"])
    atomic_write(result_path(run_dir, known[provisional]), json.dumps(res))
    old.unlink()
    return True


def spawn(run_dir: str) -> int:
    """Start the background recorder of a run (detached: it outlives the submitter); its pid."""
    log = open(Path(run_dir) / "logs" / "recorder.log", "ab")
    with log:
        proc = subprocess.Popen([sys.executable, "-m", "hpcpipe.recorder", run_dir], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=run_dir)
    return proc.pid


def resume(store: TaskStore, run_dirs: Iterable[str], settings: Settings | None = None) -> dict[str, int | None]:
    """``hpcpipe sync``: carry on the recorder of every deferred run not done, in this process;
    per run, the records still missing (None: another recorder is at work on it)."""
    out: dict[str, int | None] = {}
    for run_dir in run_dirs:
        if not run_dir or not deferred(run_dir) or done(run_dir):
            continue
        rec = Recorder(store, run_dir, settings=settings)
        with rec.lock() as mine:
            out[run_dir] = rec.run() if mine else None
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m hpcpipe.recorder RUN_DIR``: the background recorder, an edge of its own on the
    submitting machine (started by it, with its environment): it loads the settings once."""
    from .store import open_store

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hpcpipe.recorder RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings.load()
    rec = Recorder(open_store(settings=settings), args[0], settings=settings)
    with rec.lock(wait=False) as mine:
        if not mine:
            _logger.info("another recorder is at work on %s", args[0])
            return 0
        missing = rec.run()
    _logger.info("recorder of %s: %d record(s) made, %d missing", args[0], rec.created, missing)
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
