"""The outbox: reports that could not reach the store wait on disk, and are replayed in order.

When Alyx is down, timing out or throttling past the retry budget at the end of a task, the
status patch and the dataset registration must not be lost. ``deliver()`` tries the store now
and, on ``Unreachable``, writes the report as one JSON file (atomically: temp file, fsync, then
rename) under ``<hpcpipe home>/outbox``. ``sync()`` replays the files in the order they were
written; each replay is idempotent (a PATCH sets the same fields again; registering the same
files returns the same datasets), so a replay interrupted halfway can simply run again.

Each report records which store it is for (``store.outbox_key``, e.g. ``alyx:<url key>``):
``sync(store)`` replays only that store's reports, so ``hpcpipe status`` on the embedded store
never applies a report meant for Alyx, nor one Alyx server's reports to another. A file lock
(``outbox/.lock``) serialises replays across processes; a report made while older ones of its
store wait is queued behind them rather than sent, so nothing overtakes an older status. A
store that could not be reached is marked down for a short while (``health``): reports then go
straight to the outbox, without a request, and the replays wait until it is back.

Contract used by ``run_alyx_task``: ``deliver`` returns the store's result when delivered now,
and None when the report was queued.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import Unreachable
from ..files import atomic_write
from ..settings import current
from . import health
from .held import release_held_children

_logger = logging.getLogger(__name__)
#: the store methods a report may call
OPERATIONS = ("update_task", "append_log", "register_files")
_counter = itertools.count()
LOCK_TIMEOUT = 300.0


def outbox_dir() -> Path:
    """Where queued reports live (``[store] outbox`` or ``<hpcpipe home>/outbox``).

    One folder per machine and process, not per store: it follows the active settings
    (``settings.current()``: the CLI's, or a job's from its ``run.json``)."""
    settings = current()
    path = settings.path(settings.store.outbox, "outbox")
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_key(store: Any) -> str:
    """The identity of a store for the outbox (which reports belong to it)."""
    key = getattr(store, "outbox_key", None)
    if key:
        return str(key)
    path = getattr(store, "path", None)
    return f"{getattr(store, 'kind', '') or type(store).__name__}:{path or ''}"


def _lock():
    from filelock import FileLock  # lazily: job start-up time

    return FileLock(str(outbox_dir() / ".lock"), timeout=LOCK_TIMEOUT)


def apply(store, op: str, payload: dict) -> Any:
    """Call the store method a report names: the one place a recorded operation (a queued
    report, a job's result file) becomes a store call."""
    if op not in OPERATIONS:
        raise ValueError(f"unknown outbox operation {op!r}; valid: {', '.join(OPERATIONS)}")
    payload = dict(payload)
    if op == "update_task":
        return store.update_task(payload.pop("task_id"), **payload)
    if op == "append_log":
        return store.append_log(payload.pop("task_id"), payload.pop("text"), **payload)
    return store.register_files(**payload)


def queue(op: str, payload: dict, key: str | None = None) -> Path:
    """Write one report to the outbox; file names sort in the order reports were made."""
    if op not in OPERATIONS:
        raise ValueError(f"unknown outbox operation {op!r}; valid: {', '.join(OPERATIONS)}")
    folder = outbox_dir()
    name = f"{time.time_ns():020d}-{next(_counter):06d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    report = {"op": op, "payload": payload, "store": key, "queued": time.time()}
    atomic_write(folder / name, json.dumps(report, default=str), fsync=True)
    return folder / name


def pending(store: Any = None) -> list[Path]:
    """Queued reports (of ``store`` only, when given), oldest first."""
    paths = sorted(outbox_dir().glob("[0-9]*.json"))
    if store is None:
        return paths
    key = store_key(store)
    return [p for p in paths if _report_key(p) in (key, None)]


def _report_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("store")
    except (FileNotFoundError, ValueError):
        return "(unreadable)"


def deliver(store, op: str, _replay: bool = True, **payload: Any) -> Any:
    """Send a report now; queue it when the store cannot take it now. Never waits long.

    * the store is marked down (``health``): queued at once, no request;
    * older reports of this store are queued: they are replayed first when the outbox lock is
      free at once (never waited for), and this one goes behind those still queued (``sync``
      replays in order, so a later status is never overwritten by an older one);
    * otherwise sent within the store's report budget; if it cannot go, the store is marked
      down and the report queued.

    ``_replay=False`` (the local engine's scheduling loop, which replays in the background
    when the store is back) never replays here.
    """
    if getattr(store, "keeps_undelivered", False):
        # the store records what it could not deliver itself (a job's run-folder store): no
        # outbox listing on a compute node's shared home folder
        return apply(store, op, payload)
    key = store_key(store)
    if not health.is_down(key) and _replay and pending(store):
        _try_sync(store)
    if health.is_down(key) or pending(store):
        path = queue(op, payload, key)
        _logger.info("store unreachable or reports waiting: %s queued in %s", op, path)
        return None
    try:
        with health.reporting(store):
            result = apply(store, op, payload)
    except Unreachable as exc:
        health.mark_down(key, str(exc))
        path = queue(op, payload, key)
        _logger.warning("store unreachable: %s queued in %s", op, path)
        return None
    health.mark_up(key)
    return result


def sync(store, force: bool = True) -> int:
    """Replay queued reports of ``store`` in order; stop at the first that still cannot be delivered.

    Returns how many were delivered. A report the store refuses for a reason other than being
    unreachable (e.g. the task was deleted) is moved to ``failed/`` with the error, not retried
    forever and not silently dropped. ``force=False`` does nothing while the store is marked
    down (the start of every command); ``hpcpipe sync`` tries anyway.
    """
    if not pending(store):  # cheap path for every `hpcpipe status`: no lock, no network
        return 0
    if not force and health.is_down(store_key(store)):
        return 0
    with _lock():
        return _sync_locked(store, forced=force)


def _try_sync(store) -> int:
    """``sync`` if no other process is replaying right now (the lock is not waited for)."""
    from filelock import Timeout

    try:
        with _lock().acquire(timeout=0):
            return _sync_locked(store)
    except Timeout:
        return 0


def _sync_locked(store, forced: bool = False) -> int:
    done = 0
    key = store_key(store)
    while True:
        batch = pending(store)
        progress = False
        for path in batch:
            try:
                report = json.loads(path.read_text())
            except FileNotFoundError:  # replayed concurrently by another process
                continue
            except ValueError as exc:
                _move_failed(path, {"raw": path.read_text(errors="replace")}, f"unreadable report: {exc}")
                continue
            try:
                with health.reporting(store, forced=forced):
                    result = apply(store, report["op"], report["payload"])
            except Unreachable as exc:
                health.mark_down(key, str(exc))
                return done
            except Exception as exc:  # noqa: BLE001 - keep the report and say why
                _move_failed(path, report, str(exc))
                continue
            health.mark_up(key)
            path.unlink(missing_ok=True)
            done += 1
            progress = True
            if report["op"] == "update_task":
                _release_children(store, result)
        if not progress or not batch:  # reports queued meanwhile (behind these) go in the next round
            return done


def _release_children(store, tdict: Any) -> None:
    """A replayed final status releases the task's Held children, as the undisturbed run did.

    ``run_alyx_task`` could not release them when the store was unreachable (it saw no fresh
    task list); without this they would stay Held for ever after the replay.
    """
    if not isinstance(tdict, dict):
        return
    try:
        release_held_children(store, tdict)
    except Exception as exc:  # noqa: BLE001 - the report itself was delivered; retry is the sweep's
        _logger.warning("after replaying %s: Held children not released: %s", tdict.get("name"), exc)


def _move_failed(path: Path, report: dict, error: str) -> None:
    report["error"] = error
    failed = path.parent / "failed"
    atomic_write(failed / path.name, json.dumps(report, default=str))
    path.unlink(missing_ok=True)
    _logger.error("outbox report %s refused by the store: %s (kept in %s)", path.name, error, failed)
