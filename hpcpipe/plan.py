"""Planning: which task records of a session to run now, and on what each must wait.

Backends (the local engine, SLURM) receive a ``Plan`` and never look at statuses themselves, so
the rules below hold for every backend:

* a task is planned when its status is one of the requested ones (Waiting by default) and no
  live job already runs it (no double submission);
* a parent planned in the same run is a dependency (SLURM: ``afterok``);
* a parent already Complete or Incomplete is no dependency at all;
* a parent with a live job from an earlier run is a dependency on that job, unless SLURM does not
  know that job right now (unknown, or an intent not resolved yet): the task is skipped this time,
  since SLURM treats a dependency on an id it has forgotten as satisfied;
* any other parent (Errored, Held, Empty, Abandoned, Waiting but not planned) means the task
  cannot run: it is recorded Held and not submitted, and so are its planned descendants.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .ledger import JobRecord
from .status import DONE, WAITING, check_statuses


@dataclass(slots=True)
class PlanItem:
    """One task to submit."""

    task: dict
    parents_in_plan: list[str] = field(default_factory=list)
    parents_live: list[JobRecord] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.task["id"]


@dataclass
class Plan:
    """What to run for one session, parents before children."""

    session: str
    session_path: Path | None
    items: list[PlanItem] = field(default_factory=list)
    held: list[tuple[dict, str]] = field(default_factory=list)
    skipped: list[tuple[dict, str]] = field(default_factory=list)
    #: every record the plan was made from (what a job needs to check its parents)
    deck: list[dict] = field(default_factory=list)
    #: a template plan's items and held tasks by position in the deck (``stamp_plan``)
    stamp: tuple | None = field(default=None, repr=False)
    #: the template plan this one was stamped from: plans sharing it have the same items, parents
    #: and resources, so a backend may treat them per task type rather than per task
    origin: "Plan | None" = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        """How many tasks it submits."""
        return len(self.items)


def topological(deck: list[dict]) -> list[dict]:
    """Task records ordered so that parents come first (level order is not trusted)."""
    by_id = {t["id"]: t for t in deck}
    done: set[str] = set()
    out: list[dict] = []

    def visit(task: dict, stack: frozenset) -> None:
        if task["id"] in done:
            return
        if task["id"] in stack:
            raise ValueError(f"cycle in stored task parents at {task['name']!r}")
        for pid in task.get("parents") or []:
            if pid in by_id:
                visit(by_id[pid], stack | {task["id"]})
        done.add(task["id"])
        out.append(task)

    for task in sorted(deck, key=lambda t: (t.get("level") or 0, -(t.get("priority") or 0))):
        visit(task, frozenset())
    return out


def plan_session(deck: list[dict], session: str, session_path: Path | None = None,
                 statuses: Iterable[str] | str = (WAITING,), names: Iterable[str] | None = None,
                 live_jobs: dict[str, JobRecord] | None = None) -> Plan:
    """Build the plan for one session's task records (``deck``: every task of the session).

    ``names`` limits planning to some task names; ``live_jobs`` maps task id to its live job.
    """
    wanted = set(check_statuses(statuses))
    only = set(names) if names else None
    live_jobs = live_jobs or {}
    by_id = {t["id"]: t for t in deck}
    plan = Plan(session, session_path, deck=deck)
    planned: set[str] = set()
    blocked: set[str] = set()
    for task in topological(deck):
        if task["status"] not in wanted or (only is not None and task["name"] not in only):
            continue
        if task["id"] in live_jobs:
            job = live_jobs[task["id"]]
            plan.skipped.append((task, f"already queued as {job.backend} job {job.backend_id} ({job.state})"))
            continue
        item = PlanItem(task)
        reason = None
        doubtful = [by_id[p]["name"] for p in task.get("parents") or []
                    if p in live_jobs and p in by_id and (live_jobs[p].doubt_since or not live_jobs[p].job_id)]
        if doubtful:
            # SLURM counts a dependency on an id it forgot as satisfied: never name such a job
            plan.skipped.append((task, f"parent {doubtful[0]}'s job is not known to SLURM right now; "
                                       "submit again once it is found or declared lost"))
            continue
        for pid in task.get("parents") or []:
            parent = by_id.get(pid)
            if parent is None:
                reason = f"parent {pid} is not a task of this session"
            elif pid in blocked:
                reason = f"parent {parent['name']} cannot run"
            elif pid in planned:
                item.parents_in_plan.append(pid)
            elif pid in live_jobs:
                item.parents_live.append(live_jobs[pid])
            elif parent["status"] in DONE:
                continue
            else:
                reason = f"parent {parent['name']} is {parent['status']}"
            if reason:
                break
        if reason:
            blocked.add(task["id"])
            plan.held.append((task, reason))
            continue
        planned.add(task["id"])
        plan.items.append(item)
    return plan


def plan_template(template: list[dict], statuses: Iterable[str] | str = (WAITING,),
                  names: Iterable[str] | None = None) -> Plan:
    """The plan of a session none of whose tasks is recorded yet: every task is as the template
    says (Waiting) and none has a job, so the plan is the same for every such session of a
    pipeline. Made once on the template (ids are the task names) and stamped per session."""
    return plan_session([dict(t, id=t["name"]) for t in template], "template", None, statuses, names)


def _stamp_spec(template_plan: Plan) -> tuple:
    """Where each of the template plan's items (and its parents) and held tasks sits in a
    session's records: worked out once per template."""
    spec = template_plan.stamp
    if spec is None:
        at = {t["name"]: j for j, t in enumerate(template_plan.deck)}
        spec = template_plan.stamp = ([(at[i.task["name"]], [at[p] for p in i.parents_in_plan])
                                       for i in template_plan.items],
                                      [(at[t["name"]], why) for t, why in template_plan.held])
    return spec


def stamp_plan(template_plan: Plan, records: list[dict], session: str, session_path: Path | None) -> Plan:
    """``template_plan`` for one session, whose just-created ``records`` (in template order, as
    ``TaskStore.stamp_tasks`` returns them) carry real ids."""
    items, held = _stamp_spec(template_plan)
    return Plan(session, session_path, [PlanItem(records[j], [records[p]["id"] for p in parents])
                                        for j, parents in items],
                [(records[j], why) for j, why in held], deck=records, origin=template_plan)


def stamp_plans(template_plan: Plan, made, sessions: list[str], paths: list) -> list[Plan]:
    """``stamp_plan`` for every session of one ``stamp_tasks`` answer. From the embedded store
    (``StampedRecords``) the plans are ``StampedPlan``: nothing is built per task until asked."""
    from .store.base import StampedRecords

    if isinstance(made, StampedRecords):
        _stamp_spec(template_plan)
        return [StampedPlan(template_plan, made, k, eid, path) for k, (eid, path) in enumerate(zip(sessions, paths))]
    return [stamp_plan(template_plan, records, eid, path) for eid, path, records in zip(sessions, paths, made)]


class StampedPlan(Plan):
    """A stamped plan (``stamp_plan``) whose records, items and held tasks are made on first use.

    A backfill's SLURM path asks none of them: it takes the ids of each task type for all
    sessions at once (``task_ids``), so 10,000 sessions cost 10,000 small objects, not 60,000
    records and items. Anything else reading ``deck``, ``items`` or ``held`` gets them as a
    ``stamp_plan`` would have made them, and may change them as usual.
    """

    _LAZY = frozenset(("deck", "items", "held"))

    def __init__(self, template_plan: Plan, made, k: int, session: str, session_path: Path | None) -> None:
        # not Plan.__init__: deck, items and held are left unset until __getattr__ makes them
        self.session, self.session_path, self.skipped = session, session_path, []
        self.stamp, self.origin = None, template_plan
        #: the ``StampedRecords`` it was stamped from (shared by the plans of that answer), and
        #: its session's place there
        self.made, self.index = made, k
        self._template = template_plan

    def __getattr__(self, name: str):
        if name not in StampedPlan._LAZY:
            raise AttributeError(name)
        whole = stamp_plan(self._template, self.made[self.index], self.session, self.session_path)
        self.deck, self.items, self.held = whole.deck, whole.items, whole.held
        return getattr(self, name)

    def __bool__(self) -> bool:
        return bool(self.__dict__["items"] if "items" in self.__dict__ else self._template.items)

    def __len__(self) -> int:
        return len(self.__dict__["items"] if "items" in self.__dict__ else self._template.items)

    @property
    def built(self) -> bool:
        """Whether its records were asked for (then they, not the template, are the truth)."""
        return "deck" in self.__dict__

    def task_ids(self, position: int) -> list[str]:
        """The id of the task at ``position`` of the records, in every session of its
        ``stamp_tasks`` answer (this session's is at ``self.index``)."""
        return self.made.ids(position)
