"""How plans become sbatch calls: a pure function of the plans, unit-tested without a cluster.

A ``Layout`` says which session sits at which index of which run-folder chunk, and which sbatch
calls to make, in order, each waiting on what. ``SlurmBackend`` records the layout's calls as
intents in the ledger, then submits them one by one.

* ``per_task``: one job per task (``submit``); a job waits ``afterok`` on its parents' jobs,
  those of this run (by call name) and those still live from earlier runs (by job id).
* ``arrays``: one job array per task type per chunk (``backfill``). Session *i* of a chunk keeps
  index *i* in every array of that chunk, a child array waits with ``aftercorr`` on the arrays
  holding its sessions' parents, and elements whose parents are all done go into an array with
  no dependency (SLURM makes an index the parent array lacks wait for the *whole* parent array).

A re-backfill whose parents are still live in an earlier run's arrays keeps arrays too: a session
whose live parents are all element *i* of one earlier chunk takes index *i* again in a chunk of
its own anchored to that earlier chunk, so its child arrays wait ``aftercorr`` on the earlier
arrays -- one array per task type per chunk, never one per session. A session whose live parents
come from several earlier chunks is the one exception: it waits ``afterok`` on the elements.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..plan import Plan, PlanItem, StampedPlan

#: every job's ``--comment``: ``hpcpipe:<call name>`` (the run itself is the job name)
COMMENT_PREFIX = "hpcpipe:"


@dataclass
class Call:
    """One sbatch call: a single job (one member) or one job array."""

    #: unique in its run: the script's file name and the job's comment
    script: str
    chunk: str
    task_name: str
    #: ``(index in the chunk, item)``
    members: Sequence[tuple[int, PlanItem]]
    array: bool
    #: calls of this run waited on (``afterok`` for single jobs, ``aftercorr`` for arrays)
    after_calls: list[str] = field(default_factory=list)
    #: arrays of earlier runs holding this call's parents at the same indices (``aftercorr``)
    aftercorr_ids: list[str] = field(default_factory=list)
    #: jobs of earlier runs waited on as a whole (``afterok``)
    afterok_ids: list[str] = field(default_factory=list)

    @property
    def comment(self) -> str:
        return COMMENT_PREFIX + self.script

    def columns(self) -> tuple[list[int], list[str], list[str | None]]:
        """The members' indices, task ids and sessions (what the ledger records of each), read
        from the stamped records without making an item per member when it can."""
        if isinstance(self.members, StampedMembers):
            return self.members.columns()
        return ([i for i, _ in self.members], [item.id for _, item in self.members],
                [item.task.get("session") for _, item in self.members])


class StampedMembers(Sequence):
    """A call's members when they are the same task of sessions stamped from one store answer
    (``StampedPlan``): ``(index, item)`` made only when asked for; ``columns`` at list speed."""

    def __init__(self, indices: list[int], plans: list[StampedPlan], item: int, position: int) -> None:
        self.indices, self.plans, self.item, self.position = indices, plans, item, position
        self._columns: tuple | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, n):
        if isinstance(n, slice):
            return [self[k] for k in range(*n.indices(len(self)))]
        return self.indices[n], self.plans[n].items[self.item]

    def columns(self) -> tuple[list[int], list[str], list[str | None]]:
        if self._columns is None:
            ids = self.plans[0].task_ids(self.position)
            self._columns = (self.indices, [ids[p.index] for p in self.plans], [p.session for p in self.plans])
        return self._columns


@dataclass
class Layout:
    """Chunks (``{chunk: {index: plan}}``) and the sbatch calls, parents first."""

    chunks: dict[str, dict[int, Plan]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    not_submitted: list[str] = field(default_factory=list)

    @property
    def elements(self) -> int:
        return sum(len(c.members) for c in self.calls)


def per_task(plans: list[Plan]) -> Layout:
    """One job per task; session *i* is index *i* of chunk ``c0``."""
    layout = Layout(chunks={"c0": {i: p for i, p in enumerate(plans)}})
    call_of: dict[str, str] = {}
    for i, plan in enumerate(plans):
        for item in plan.items:
            script = f"{item.task['name']}.{i}"
            layout.calls.append(Call(script, "c0", item.task["name"], [(i, item)], array=False,
                                     after_calls=[call_of[p] for p in item.parents_in_plan],
                                     afterok_ids=[j.backend_id for j in item.parents_live]))
            call_of[item.id] = script
    return layout


def _anchor(plan: Plan) -> tuple[tuple[str, str | None], int] | None | bool:
    """The earlier chunk and index a session's live array parents share: ``((run, chunk), index)``;
    None when it has no live array parent; False when they are scattered over several."""
    if plan.origin is not None:  # stamped: a new session, no live parent
        return None
    found = {((j.run_id, j.chunk), j.array_index) for item in plan.items for j in item.parents_live
             if j.array_index is not None}
    if not found:
        return None
    return found.pop() if len(found) == 1 else False


def arrays(plans: list[Plan], size: int, budget: int | None = None) -> Layout:
    """One array per task type per chunk of at most ``size`` sessions; at most ``budget``
    elements in all (MaxSubmitJobs): sessions beyond it are listed in ``not_submitted``."""
    layout = Layout()
    used = 0
    fresh: list[list[Plan]] = []
    anchored: dict[tuple[str, str | None], dict[int, Plan]] = {}
    scattered: set[int] = set()
    for plan in plans:
        n = len(plan)
        if budget is not None and used + n > budget:
            layout.not_submitted.append(f"{plan.session_path} (MaxSubmitJobs reached; run backfill again later)")
            continue
        used += n
        anchor = _anchor(plan)
        if anchor:
            slot = anchored.setdefault(anchor[0], {})
            if anchor[1] not in slot:
                slot[anchor[1]] = plan
                continue
        if anchor is not None:  # scattered, or its index is taken: afterok on the elements
            scattered.add(id(plan))
        if not fresh or len(fresh[-1]) >= size:
            fresh.append([])
        fresh[-1].append(plan)
    members = [dict(enumerate(chunk)) for chunk in fresh] + [m for m in anchored.values() if m]
    for k, chunk in enumerate(members):
        layout.chunks[f"c{k}"] = chunk
        _chunk_calls(layout, f"c{k}", chunk, scattered)
    return layout


def _chunk_calls(layout: Layout, chunk: str, sessions: dict[int, Plan], scattered: set[int]) -> None:
    stamped: dict[int, list[int]] = {}  # sessions by the template plan they were stamped from
    general: dict[int, Plan] = {}
    for i, plan in sessions.items():
        if plan.origin is not None:
            stamped.setdefault(id(plan.origin), []).append(i)
        else:
            general[i] = plan
    # calls are numbered per chunk and task type: stamped groups first, then the general ones
    for k, indices in enumerate(stamped.values()):
        _stamped_calls(layout, chunk, sessions, indices, k)
    if general:
        _general_calls(layout, chunk, general, scattered, first=len(stamped))


def _stamped_calls(layout: Layout, chunk: str, sessions: dict[int, Plan], indices: list[int], group: int) -> None:
    """Sessions stamped from one template plan (new sessions: no live parents, the same items and
    parents in the same order): one array per template task, its dependencies worked out once."""
    origin = sessions[indices[0]].origin
    plans = [sessions[i] for i in indices]
    made = getattr(plans[0], "made", None)
    # one store answer, records never asked for: members read from it, no item per element
    lazy = made is not None and all(type(p) is StampedPlan and p.made is made and not p.built for p in plans)
    positions = [at for at, _ in origin.stamp[0]] if lazy else []
    call_of: dict[str, str] = {}
    for j, titem in enumerate(origin.items):
        name = titem.task["name"]
        script = f"{name}.{chunk}.{group}"
        members = StampedMembers(indices, plans, j, positions[j]) if lazy else [(i, p.items[j]) for i, p in zip(indices, plans)]
        layout.calls.append(Call(script, chunk, name, members, array=True,
                                 after_calls=sorted({call_of[p] for p in titem.parents_in_plan})))
        call_of[titem.id] = script


def _general_calls(layout: Layout, chunk: str, sessions: dict[int, Plan], scattered: set[int], first: int = 0) -> None:
    # task types in dependency order (every session shares the pipeline), in one pass
    by_name: dict[str, list[tuple[int, Plan, PlanItem]]] = {}
    for i, plan in sessions.items():
        for item in plan.items:
            by_name.setdefault(item.task["name"], []).append((i, plan, item))
    call_of: dict[str, str] = {}  # task id -> the call (array) holding it
    for name, elements in by_name.items():
        groups: dict[tuple, list[tuple[int, PlanItem]]] = defaultdict(list)
        for i, plan, item in elements:
            corr = tuple(sorted({call_of[p] for p in item.parents_in_plan})) if item.parents_in_plan else ()
            old_corr: tuple = ()
            old_ok: tuple = ()
            if item.parents_live:
                arrays_ = [j for j in item.parents_live if j.array_index is not None and id(plan) not in scattered]
                old_corr = tuple(sorted({j.job_id for j in arrays_}))
                old_ok = tuple(sorted(j.backend_id for j in item.parents_live if j not in arrays_))
            groups[(corr, old_corr, old_ok)].append((i, item))
        for g, ((corr, old_corr, old_ok), group) in enumerate(groups.items(), first):
            script = f"{name}.{chunk}.{g}"
            layout.calls.append(Call(script, chunk, name, group, array=True, after_calls=list(corr),
                                     aftercorr_ids=list(old_corr), afterok_ids=list(old_ok)))
            for _, item in group:
                call_of[item.id] = script
