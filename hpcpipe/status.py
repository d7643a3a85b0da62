"""The task status vocabulary, exactly as Alyx spells it, and the Task.run() status codes.

Alyx stores statuses as small integers and answers with these strings (case-sensitive on
write); every store and every table in hpcpipe uses the strings.
"""
from __future__ import annotations

from typing import Iterable

from .errors import BadInput

WAITING, HELD, STARTED, ERRORED = "Waiting", "Held", "Started", "Errored"
ABANDONED, EMPTY, INCOMPLETE, COMPLETE = "Abandoned", "Empty", "Incomplete", "Complete"

#: Alyx's order (its database integers 20, 25, 30, 40, 45, 50, 55, 60).
STATUSES = (WAITING, HELD, STARTED, ERRORED, ABANDONED, EMPTY, INCOMPLETE, COMPLETE)
ALYX_INT = dict(zip(STATUSES, (20, 25, 30, 40, 45, 50, 55, 60)))

#: A child may run only when every parent is in one of these.
DONE = frozenset({COMPLETE, INCOMPLETE})
#: A parent in one of these sends its child to Held (ibllib's rule).
BLOCKING = frozenset({ERRORED, HELD, EMPTY, WAITING, STARTED, ABANDONED})

#: Task.run() return codes.
CODE_COMPLETE, CODE_ERRORED, CODE_LOCKED, CODE_INCOMPLETE = 0, -1, -2, -3
#: What a run code becomes in the store; ``-2`` (a lock was held) means "try again later".
CODE_TO_STATUS = {CODE_COMPLETE: COMPLETE, CODE_ERRORED: ERRORED,
                  CODE_LOCKED: WAITING, CODE_INCOMPLETE: INCOMPLETE}


def check_status(name: str) -> str:
    """Return ``name`` if it is a valid status, else raise naming the valid ones."""
    if name not in STATUSES:
        raise BadInput(f"unknown status {name!r}; valid statuses: {', '.join(STATUSES)}")
    return name


def check_statuses(names: Iterable[str] | str | None) -> list[str]:
    """Normalise a status filter (one name, several, or ``'__all__'`` = all but Abandoned)."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if "__all__" in names:
        return [s for s in STATUSES if s != ABANDONED]
    return [check_status(n) for n in names]
