"""ibllib's own Task and Pipeline classes, run as they are.

Recognised by their class hierarchy (``ibllib.pipes.tasks.Task`` / ``Pipeline`` among the
bases), so nothing here imports ibllib until an ibllib class is actually run. They get the
store's ONE face (``store.oneface.OneFace``) as ``one`` and run through ibllib's own
``run_alyx_task``: statuses, logs, Held children and registration (``Task.register_datasets``,
their data handler, ONE's ``RegistrationClient``) are ibllib's, reported to hpcpipe's store.
"""
from __future__ import annotations

from typing import Any

IBLLIB_TASK = "ibllib.pipes.tasks.Task"
IBLLIB_PIPELINE = "ibllib.pipes.tasks.Pipeline"


def _has_base(cls: type, dotted: str) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" == dotted for c in getattr(cls, "__mro__", ()))


def is_ibllib_task(cls: type) -> bool:
    """A subclass of ``ibllib.pipes.tasks.Task`` (checked without importing ibllib)."""
    return _has_base(cls, IBLLIB_TASK)


def is_ibllib_pipeline(cls: type) -> bool:
    """A subclass of ``ibllib.pipes.tasks.Pipeline`` (checked without importing ibllib)."""
    return _has_base(cls, IBLLIB_PIPELINE)


def face_of(store: Any, create_sessions: bool = True):
    """The ONE face an ibllib class is handed for ``store``."""
    from .store.oneface import OneFace

    return OneFace(store, create_sessions=create_sessions)


def run_ibllib_task(store: Any, tdict: dict, session_path, job_deck=None, **kwargs: Any) -> tuple[dict, list]:
    """``ibllib.pipes.tasks.run_alyx_task`` over the store's ONE face."""
    from ibllib.pipes.tasks import run_alyx_task

    return run_alyx_task(tdict=tdict, session_path=session_path, one=face_of(store, create_sessions=False),
                         job_deck=job_deck, **kwargs)


def ibllib_template(pipe: Any) -> list[dict]:
    """An ibllib pipeline's task records, parents by name, without a session, checked as every
    store checks them: ibllib's own ``create_tasks_list_from_pipeline`` (its ``TaskSpec``s,
    sorted parents first), keeping the fields Alyx's task has (Alyx drops the others, e.g.
    ``module``)."""
    from .store.base import TASK_FIELDS, check_fields

    keep = set(TASK_FIELDS) - {"id", "session", "datetime"}
    items = []
    for item in pipe.create_tasks_list_from_pipeline():
        record = {k: v for k, v in item.items() if k in keep}
        record["arguments"] = record.get("arguments") or {}
        record["parents"] = list(record.get("parents") or [])
        items.append(check_fields(record))
    return items
