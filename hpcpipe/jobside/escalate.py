"""``hpcpipe rerun --failed --escalate``: each failed task rerun according to why it ended.

The cause is the last attempt's ending as its log says it (``reasons.last_cause``: the tagged
line the job side or the sweep wrote, or the task's own traceback):

==========================  ==========================================================
MEMORY (OOM, memory kill)   ram x ``[escalate] ram_factor`` (default 2)
TIMEOUT                     time_out_secs x ``[escalate] time_factor`` (default 2)
PREEMPTED, NODE_FAIL,       the same resources: they were not the problem
REQUEUED, CANCELLED, KILLED
a Python error (PYTHON)     no escalation: more resources will not fix the code or data
anything else / unknown     no escalation
==========================  ==========================================================

A raised value is at least the suggestion for the task's class when the user applies
suggestions (``[resources] apply``; the suggestion rule, ``hpcpipe.resources``), and at most
the partition's limit (``ClusterLimits.caps``: MaxMemPerNode, node memory, MaxTime), and time
at most 32767 s (Alyx keeps ``time_out_secs`` as a SmallInteger). After ``[escalate]
max_attempts`` raises (default 3) a task is rerun without raising again. Values start from the
record's own ``ram``/``time_out_secs`` (a second escalation doubles the first), are written to
the store record and to the planned record (which the job script is rendered from), and every
attempt, raised or not, is logged in the task's log with its cause.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..settings import Settings, current
from ..store.base import SMALLINT_MAX
from . import reasons

RAISES = {reasons.MEMORY: "ram", reasons.TIMEOUT: "time_out_secs"}
#: endings where the resources were not the problem
SAME = (reasons.PREEMPTED, reasons.NODE_FAIL, reasons.REQUEUED, reasons.CANCELLED, reasons.KILLED)
_UNITS = {"ram": "GB", "time_out_secs": "s"}


@dataclass
class Escalation:
    """What a rerun does about one failed task, and why."""

    task_id: str
    name: str
    kind: str
    #: the resource raised (None: rerun with the same resources)
    field: str | None
    old: float | None
    new: float | None
    capped: bool
    attempt: int = 1
    #: why nothing was raised, when nothing was
    note: str = ""

    @property
    def raised(self) -> bool:
        return self.field is not None

    def line(self) -> str:
        if self.raised:
            unit = _UNITS[self.field]
            text = (f"escalated after {self.kind}: {self.field} {self.old:g} {unit} -> {self.new:g} {unit}"
                    + (" (capped by the partition's limit)" if self.capped else ""))
        else:
            text = f"not escalated after {self.kind}: {self.note}"
        return f"[hpcpipe:ESCALATE] attempt {self.attempt}: {text}"


def factors(settings: Settings) -> tuple[float, float]:
    return settings.escalate.ram_factor, settings.escalate.time_factor


def caps(backend, task: dict) -> tuple[float | None, float | None]:
    """``(max ram GB, max time_out_secs)`` of the partition the task's job goes to (None: no cap)."""
    if backend is None:
        return None, None
    return backend.limits.caps(backend.partition_of(task))


def _note(kind: str, text: str) -> str:
    if kind in SAME:
        return f"same resources (the job {reasons.DESCRIPTIONS.get(kind, kind.lower())}; resources were not the problem)"
    if kind == reasons.PYTHON:
        return f"same resources: the task's code raised ({text}); more resources will not fix it"
    return "same resources: " + (f"the ending ({text or kind}) says nothing about resources" if kind
                                 else "no cause recorded in the task's log")


def plan(tasks: list[dict], backend=None, floors: dict[str, dict] | None = None,
         settings: Settings | None = None) -> dict[str, Escalation]:
    """What to do for each failed task, by the cause of its last ending.

    ``floors`` (task id -> {field: value}): the suggestion for the task's class, a raised value's
    lower bound. ``settings``: the ``[escalate]`` factors and limit (default ``settings.current()``).
    """
    settings = settings or current()
    ram_factor, time_factor = factors(settings)
    max_attempts = settings.escalate.max_attempts
    out: dict[str, Escalation] = {}
    for task in tasks:
        kind, text = reasons.last_cause(task.get("log"))
        attempt = (task.get("log") or "").count("[hpcpipe:ESCALATE]") + 1
        field = RAISES.get(kind or "")
        raised_before = (task.get("log") or "").count(" escalated after ")
        if field is None or raised_before >= max_attempts:
            note = _note(kind or "", text) if field is None else \
                f"same resources: already raised {raised_before} time(s) ([escalate] max_attempts = {max_attempts})"
            out[task["id"]] = Escalation(task["id"], task["name"], kind or "an unknown ending", None, None, None,
                                         False, attempt, note)
            continue
        factor = ram_factor if field == "ram" else time_factor
        old = float(task.get(field) or (4 if field == "ram" else 7200))
        new = max(old * factor, float((floors or {}).get(task["id"], {}).get(field) or 0))
        ram_cap, time_cap = caps(backend, task)
        if field == "time_out_secs":  # the store keeps time_out_secs as Alyx's SmallInteger
            time_cap = min(time_cap or SMALLINT_MAX, SMALLINT_MAX)
        cap = ram_cap if field == "ram" else time_cap
        capped = cap is not None and new > cap
        if capped:
            new = math.floor(cap * 1000) / 1000 if field == "ram" else math.floor(cap)
        if field == "time_out_secs":
            new = int(new)
        out[task["id"]] = Escalation(task["id"], task["name"], kind, field, old, new, capped, attempt)
    return out


def apply(store, plans, escalations: dict[str, Escalation]) -> list[Escalation]:
    """Set the raised resources on the planned records (rendered into the job scripts) and in the
    store, and log every attempt in the task's log. Returns the escalations applied."""
    done = []
    for p in plans:
        for item in p.items:
            esc = escalations.get(item.id)
            if esc is None:
                continue
            fields = {}
            if esc.raised:
                item.task[esc.field] = esc.new
                fields[esc.field] = esc.new
            store.append_log(item.id, esc.line(), **fields)
            done.append(esc)
    return done
