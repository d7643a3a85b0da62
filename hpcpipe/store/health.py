"""Whether a task store is known to be down, so an outage costs no time.

The first report that cannot reach a store marks it down for ``down_secs`` (``[store]
down_secs``, default 30 s). While it is marked, reports go straight to the
outbox (or a job's result file) without a request, and the local engine schedules from local
results instead of asking the store. After the interval, the next report tries once more; a
report that goes through clears the mark.

The mark lives in memory *and* in a small file under the outbox folder, so the job processes
the local engine starts (and other jobs on the same home) learn of an outage from the first
one that met it, instead of each paying its own failed attempt.

Reports are sent within a short budget (``report_timeout``, ``report_budget``): a status
patch that cannot go now is queued, it does not hold a task or the scheduler back. The store
itself consults the mark before every report's request (``AlyxStore.reporting``), through
hpcpipe's client and through ONE's alike, so no path can forget to.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, ContextManager

from ..errors import Unreachable
from ..files import atomic_write
from ..settings import current

_logger = logging.getLogger(__name__)
_down: dict[str, float] = {}  # store key -> marked down until (time.time())


def down_secs() -> float:
    """Seconds a store stays marked down after a report failed to reach it (the active settings)."""
    return current().store.down_secs


def _mark_file(key: str) -> Path:
    from .outbox import outbox_dir

    return outbox_dir() / ".down" / re.sub(r"[^.\w-]", "_", key)


def mark_down(key: str, reason: str) -> None:
    """Remember that ``key``'s store cannot be reached, for ``down_secs()``."""
    until = time.time() + down_secs()
    _down[key] = until
    path = _mark_file(key)
    try:
        atomic_write(path, json.dumps({"until": until, "reason": reason}))
    except OSError as exc:  # a read-only outbox: the in-memory mark still serves this process
        _logger.debug("could not write the store-down mark %s: %s", path, exc)
    _logger.warning("task store %s unreachable (%s): reports go to the outbox for the next %.0f s",
                    key, reason, down_secs())


def mark_up(key: str) -> None:
    """The store answered: forget a mark (in memory and on disk)."""
    if _down.pop(key, None) is not None or _mark_file(key).exists():
        _mark_file(key).unlink(missing_ok=True)


def is_down(key: str) -> bool:
    """True while ``key``'s store is marked down (by this process or another on this home)."""
    now = time.time()
    until = _down.get(key)
    if until is None:
        try:
            until = float(json.loads(_mark_file(key).read_text())["until"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return False
        _down[key] = until
    return now < until


class MarkedDown(Unreachable):
    """Raised by a store, without a request, for a report made while it is marked down."""


def reporting(store: Any, forced: bool = False) -> ContextManager[Any]:
    """The store's mode for a report (``AlyxStore.reporting``: the down mark consulted first,
    a short timeout and retry budget), if it has one. ``forced``: the user's ``hpcpipe sync``."""
    mode = getattr(store, "reporting", None)
    return mode(forced=forced) if callable(mode) else contextlib.nullcontext()


def brief(store: Any) -> None:
    """Make every later call of ``store`` a report's, marking it down when one cannot reach it
    (``AlyxStore.brief``; ``hpcpipe status``: local knowledge at once during an outage)."""
    mode = getattr(store, "brief", None)
    if callable(mode):
        mode()
