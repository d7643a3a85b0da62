"""``hpcpipe rerun --failed --escalate``: run a failed task again with more of what it ran out of.

The last tagged reason in the task's log (``[hpcpipe:MEMORY]``, ``[hpcpipe:TIMEOUT]``, written by
the job side or the sweep, see ``reasons``) says what the last attempt lacked. Config rules::

    [escalate]
    ram_factor = 2     # MEMORY: ram x 2
    time_factor = 2    # TIMEOUT: time_out_secs x 2

capped by the partition's limits (``ClusterLimits``: MaxMemPerNode, node memory, MaxTime), and
time by 32767 s (Alyx keeps ``time_out_secs`` as a SmallInteger).
The new values start from the record's own ``ram``/``time_out_secs`` (so a second escalation
doubles the first), are written to the store record and to the planned record (which is what
the job script is rendered from), and the attempt is logged in the task's log.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import config
from ..store.base import SMALLINT_MAX
from . import reasons


@dataclass
class Escalation:
    task_id: str
    name: str
    kind: str
    field: str
    old: float
    new: float
    capped: bool

    def line(self) -> str:
        unit = "GB" if self.field == "ram" else "s"
        text = (f"escalated after {self.kind}: {self.field} {self.old:g} {unit} -> {self.new:g} {unit}"
                + (" (capped by the partition's limit)" if self.capped else ""))
        return f"[hpcpipe:ESCALATE] {text}"


def factors() -> tuple[float, float]:
    return (float(config.get("escalate", "ram_factor", 2.0)), float(config.get("escalate", "time_factor", 2.0)))


def caps(backend, task: dict) -> tuple[float | None, float | None]:
    """``(max ram GB, max time_out_secs)`` of the partition the task's job goes to (None: no cap)."""
    if backend is None:
        return None, None
    from ..slurm.render import JobSpec, resolve_partition

    spec = JobSpec(name="escalate", command=["true"], resources=_resources(task))
    limits = backend.limits
    name = resolve_partition(spec, backend.profile) or limits.default_partition
    part = limits.partitions.get(name) if name else None
    if part is None:
        return None, None
    mem = [m for m in (part.max_mem_per_node_mb,
                       max((limits.nodes[n].real_memory_mb for n in part.nodes if n in limits.nodes), default=None))
           if m is not None]
    ram_cap = min(mem) / 1024 if mem else None
    time_cap = part.max_time_min * 60 if part.max_time_min is not None else None
    return ram_cap, time_cap


def _resources(task: dict):
    from ..slurm.backend import _resources as resources

    return resources(task)


def plan(tasks: list[dict], backend=None) -> dict[str, Escalation]:
    """What to raise for each failed task whose last attempt ran out of memory or time."""
    ram_factor, time_factor = factors()
    out: dict[str, Escalation] = {}
    for task in tasks:
        kind = reasons.last_kind(task.get("log"))
        if kind == reasons.MEMORY:
            field, factor = "ram", ram_factor
        elif kind == reasons.TIMEOUT:
            field, factor = "time_out_secs", time_factor
        else:
            continue
        old = float(task.get(field) or (4 if field == "ram" else 7200))
        new = old * factor
        ram_cap, time_cap = caps(backend, task)
        if field == "time_out_secs":  # the store keeps time_out_secs as Alyx's SmallInteger
            time_cap = min(time_cap or SMALLINT_MAX, SMALLINT_MAX)
        cap = ram_cap if field == "ram" else time_cap
        capped = cap is not None and new > cap
        if capped:
            new = math.floor(cap * 1000) / 1000 if field == "ram" else math.floor(cap)
        if field == "time_out_secs":
            new = int(new)
        out[task["id"]] = Escalation(task["id"], task["name"], kind, field, old, new, capped)
    return out


def apply(store, plans, escalations: dict[str, Escalation]) -> list[Escalation]:
    """Set the new resources on the planned records (rendered into the job scripts) and in the
    store, and log the attempt in the task's log. Returns the escalations applied."""
    done = []
    for p in plans:
        for item in p.items:
            esc = escalations.get(item.id)
            if esc is None:
                continue
            item.task[esc.field] = esc.new
            current = store.get_task(item.id)
            log = (current.get("log") or "")
            store.update_task(item.id, **{esc.field: esc.new}, log=(log + "\n" if log else "") + esc.line() + "\n")
            done.append(esc)
    return done
