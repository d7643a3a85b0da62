"""Ibllib's Held rule on task records: a child runs only when every parent is done.

Store-level logic (no Task objects), shared by ``run_alyx_task`` and the outbox replay, which
must release Held children exactly as an undisturbed run would.
"""
from __future__ import annotations

from typing import Iterable

from ..errors import Unreachable
from ..status import DONE, HELD, WAITING


def parents_state(tdict: dict, job_deck: Iterable[dict]) -> set[str]:
    """The statuses of a task's parents, read from ``job_deck``."""
    by_id = {t["id"]: t["status"] for t in job_deck}
    return {by_id.get(p, "Missing") for p in tdict.get("parents") or []}



def release_held_children(store, tdict: dict) -> list[dict]:
    """Held children of ``tdict`` whose parents are all done go back to Waiting.

    Reads the session's tasks afresh (one query): a job deck read before the run may be stale
    when other jobs of the session finished meanwhile.
    """
    if tdict.get("status") not in DONE:
        return []
    try:
        deck = store.list_tasks(session=tdict["session"])
    except Unreachable:
        return []  # the outbox replay and the next sweep release them
    released = []
    for child in deck:
        if child["status"] == HELD and tdict["id"] in (child["parents"] or []):
            if parents_state(child, deck) <= DONE:
                released.append(store.update_task(child["id"], status=WAITING))
    return released
