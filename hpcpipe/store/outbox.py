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
(``outbox/.lock``) serialises replays and queueing across processes, so two jobs finishing at
once cannot replay an older status after a newer one.

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

from .. import config
from ..errors import Unreachable
from .held import release_held_children

_logger = logging.getLogger(__name__)
#: the store methods a report may call
OPERATIONS = ("update_task", "register_files")
_counter = itertools.count()
LOCK_TIMEOUT = 300.0


def outbox_dir() -> Path:
    """Where queued reports live (``[store] outbox`` or ``<hpcpipe home>/outbox``)."""
    path = Path(config.get("store", "outbox", str(config.home() / "outbox")))
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


def _call(store, op: str, payload: dict) -> Any:
    if op not in OPERATIONS:
        raise ValueError(f"unknown outbox operation {op!r}; valid: {', '.join(OPERATIONS)}")
    if op == "update_task":
        payload = dict(payload)
        return store.update_task(payload.pop("task_id"), **payload)
    return store.register_files(**payload)


def queue(op: str, payload: dict, key: str | None = None) -> Path:
    """Write one report to the outbox; file names sort in the order reports were made."""
    if op not in OPERATIONS:
        raise ValueError(f"unknown outbox operation {op!r}; valid: {', '.join(OPERATIONS)}")
    folder = outbox_dir()
    name = f"{time.time_ns():020d}-{next(_counter):06d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    tmp = folder / f".{name}.tmp"
    report = {"op": op, "payload": payload, "store": key, "queued": time.time()}
    with open(tmp, "w") as fh:
        json.dump(report, fh, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / name)
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


def deliver(store, op: str, **payload: Any) -> Any:
    """Send a report now; queue it when the store cannot be reached.

    Earlier queued reports of this store go first (a later status must not be overwritten by
    an older one replayed afterwards): if some are queued, they are replayed first, and this
    report is queued behind them when they cannot all be delivered.
    """
    if getattr(store, "keeps_undelivered", False):
        # the store records what it could not deliver itself (a job's run-folder store): no
        # outbox lock or listing on a compute node's shared home folder
        return _call(store, op, payload)
    key = store_key(store)
    with _lock():
        if pending(store):
            _sync_locked(store)
            if pending(store):
                path = queue(op, payload, key)
                _logger.warning("store still unreachable: %s queued behind earlier reports in %s",
                                op, path)
                return None
        try:
            return _call(store, op, payload)
        except Unreachable as exc:
            path = queue(op, payload, key)
            _logger.warning("store unreachable (%s): %s queued in %s", exc, op, path)
            return None


def sync(store) -> int:
    """Replay queued reports of ``store`` in order; stop at the first that still cannot be delivered.

    Returns how many were delivered. A report the store refuses for a reason other than being
    unreachable (e.g. the task was deleted) is moved to ``failed/`` with the error, not retried
    forever and not silently dropped.
    """
    if not pending(store):  # cheap path for every `hpcpipe status`: no lock, no network
        return 0
    with _lock():
        return _sync_locked(store)


def _sync_locked(store) -> int:
    done = 0
    for path in pending(store):
        try:
            report = json.loads(path.read_text())
        except FileNotFoundError:  # replayed concurrently by another process
            continue
        except ValueError as exc:
            _move_failed(path, {"raw": path.read_text(errors="replace")}, f"unreadable report: {exc}")
            continue
        try:
            result = _call(store, report["op"], report["payload"])
        except Unreachable:
            break
        except Exception as exc:  # noqa: BLE001 - keep the report and say why
            _move_failed(path, report, str(exc))
            continue
        path.unlink(missing_ok=True)
        done += 1
        if report["op"] == "update_task":
            _release_children(store, result)
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
    failed = path.parent / "failed"
    failed.mkdir(exist_ok=True)
    report["error"] = error
    tmp = failed / f".{path.name}.tmp"
    tmp.write_text(json.dumps(report, default=str))
    os.replace(tmp, failed / path.name)
    path.unlink(missing_ok=True)
    _logger.error("outbox report %s refused by the store: %s (kept in %s)", path.name, error, failed)
