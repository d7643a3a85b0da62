"""Task stores: one interface (``TaskStore``), an embedded SQLite store and an Alyx store.

``open_store()`` is the one place that decides which store a command uses, so nothing above
this package knows or cares which one it got.
"""
from __future__ import annotations

from typing import Any

from ..errors import BadInput
from ..settings import Settings, current
from .base import TASK_FIELDS, TaskStore

__all__ = ["TaskStore", "SQLiteStore", "TASK_FIELDS", "open_store", "STORE_KINDS"]

STORE_KINDS = ("sqlite", "alyx")


def open_store(one: Any = None, settings: Settings | None = None) -> TaskStore:
    """The task store to use.

    ``one`` may be a ``TaskStore`` (used as is), a ONE instance or any object with ONE's
    ``alyx.rest(url, action, **kwargs)`` (wrapped in an Alyx store), or None: then config
    ``[store] backend`` decides (``sqlite`` by default, at ``[store] path`` or
    ``<hpcpipe home>/tasks.sqlite``) in ``settings`` (default ``settings.current()``: a library
    caller's own configuration, or the settings the CLI or a job made active).
    """
    if isinstance(one, TaskStore):
        return one
    if isinstance(getattr(one, "store", None), TaskStore):  # a OneFace handed to an ibllib class
        return one.store
    if one is not None:
        rest_owner = getattr(one, "alyx", one)
        if not callable(getattr(rest_owner, "rest", None)):
            raise BadInput(f"{type(one).__name__} is neither a TaskStore nor a ONE-like object "
                           "with alyx.rest(url, action, ...)")
        from .alyx import AlyxStore

        return AlyxStore(rest_owner, settings=settings)
    settings = settings or current()
    kind = settings.store.backend
    if kind == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(settings.path(settings.store.path, "tasks.sqlite"))
    if kind == "alyx":
        from .alyx import AlyxStore

        return AlyxStore.from_config(settings)
    raise BadInput(f"unknown store backend {kind!r} in config [store] backend; valid: {', '.join(STORE_KINDS)}")


def __getattr__(name: str) -> Any:
    """``SQLiteStore`` on first use: a job with a run-folder store never loads sqlite3."""
    if name == "SQLiteStore":
        from .sqlite import SQLiteStore

        return SQLiteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
