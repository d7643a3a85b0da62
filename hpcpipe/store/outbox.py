"""The outbox: reports that could not reach the store wait on disk, and are replayed in order.

When Alyx is down, timing out or throttling past the retry budget at the end of a task, the
status patch and the dataset registration must not be lost. ``deliver()`` tries the store now
and, on ``Unreachable``, writes the report as one JSON file (atomically: temp file, then rename)
under ``<hpcpipe home>/outbox``. ``sync()`` replays the files in the order they were written;
each replay is idempotent (a PATCH sets the same fields again; registering the same files
returns the same datasets), so a replay interrupted halfway can simply run again.

Contract used by ``run_alyx_task``: ``deliver`` returns the store's result when delivered now,
and None when the report was queued.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from .. import config
from ..errors import Unreachable

_logger = logging.getLogger(__name__)
#: the store methods a report may call
OPERATIONS = ("update_task", "register_files")


def outbox_dir() -> Path:
    """Where queued reports live (``[store] outbox`` or ``<hpcpipe home>/outbox``)."""
    path = Path(config.get("store", "outbox", str(config.home() / "outbox")))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _call(store, op: str, payload: dict) -> Any:
    if op not in OPERATIONS:
        raise ValueError(f"unknown outbox operation {op!r}; valid: {', '.join(OPERATIONS)}")
    if op == "update_task":
        payload = dict(payload)
        return store.update_task(payload.pop("task_id"), **payload)
    return store.register_files(**payload)


def queue(op: str, payload: dict) -> Path:
    """Write one report to the outbox; file names sort in the order reports were made."""
    folder = outbox_dir()
    name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps({"op": op, "payload": payload, "queued": time.time()}))
    os.replace(tmp, folder / name)
    return folder / name


def deliver(store, op: str, **payload: Any) -> Any:
    """Send a report now; queue it when the store cannot be reached.

    Earlier queued reports go first (a later status must not be overwritten by an older one
    replayed afterwards): if the outbox is not empty, this report joins the queue and a replay
    is attempted.
    """
    if pending():
        queue(op, payload)
        sync(store)
        return None
    try:
        return _call(store, op, payload)
    except Unreachable as exc:
        path = queue(op, payload)
        _logger.warning("store unreachable (%s): %s queued in %s", exc, op, path)
        return None


def pending() -> list[Path]:
    """Queued reports, oldest first."""
    return sorted(outbox_dir().glob("[0-9]*.json"))


def sync(store) -> int:
    """Replay queued reports in order; stop at the first that still cannot be delivered.

    Returns how many were delivered. A report the store refuses for a reason other than being
    unreachable (e.g. the task was deleted) is moved to ``failed/`` with the error, not retried
    forever and not silently dropped.
    """
    done = 0
    for path in pending():
        try:
            report = json.loads(path.read_text())
        except FileNotFoundError:  # replayed concurrently by another process
            continue
        try:
            _call(store, report["op"], report["payload"])
        except Unreachable:
            break
        except Exception as exc:  # noqa: BLE001 - keep the report and say why
            failed = path.parent / "failed"
            failed.mkdir(exist_ok=True)
            report["error"] = str(exc)
            (failed / path.name).write_text(json.dumps(report))
            _logger.error("outbox report %s refused by the store: %s (kept in %s)", path.name, exc, failed)
        path.unlink(missing_ok=True)
        done += 1
    return done
