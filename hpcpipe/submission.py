"""From "this session, this pipeline" to a plan handed to a backend.

The CLI calls this module; it calls the store (records), ``plan`` (rules) and a backend
(execution). A dry run computes the same plan without writing a single record.
"""
from __future__ import annotations

import datetime as _dt
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import recorder
from .ledger import Ledger
from .pipeline import Pipeline, graph_template, record_existing
from .pipelines import find_pipeline
from .plan import Plan, plan_session, plan_template, stamp_plans
from .session import SessionRef, parse_session_path, parse_session_paths
from .status import HELD, WAITING, check_statuses
from .store import TaskStore

_logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One submission: an id that tags every job of it, and a folder for its scripts and logs."""

    id: str
    dir: Path

    @classmethod
    def new(cls, root: Path, prefix: str = "hp") -> "Run":
        """A fresh run id (sortable by time, unique) and its folder under ``root``."""
        run_id = f"{prefix}-{_dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        path = Path(root) / run_id
        return cls(run_id, path)


def instantiate(cls: type, session_path: Path, store: TaskStore):
    """A pipeline object of ``cls`` for a session: hpcpipe's get the store as ``one``, ibllib's
    get the store's ONE face (which creates no session: recording does that)."""
    if issubclass(cls, Pipeline):
        return cls(session_path, one=store)
    from .ibl import face_of

    return cls(session_path, one=face_of(store, create_sessions=False))


def template_of(pipe) -> list[dict]:
    """The pipeline's task records without a session, parents by name, checked."""
    if isinstance(pipe, Pipeline):
        return graph_template(pipe)
    from .ibl import ibllib_template

    return ibllib_template(pipe)


def load_pipeline(session_path: Path | str, pipeline: str | type[Pipeline], store: TaskStore):
    """Instantiate a pipeline (a name, or a class already found) on a checked session path.

    Errors come before any record is written.
    """
    ref = parse_session_path(session_path)
    cls = find_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
    return instantiate(cls, ref.path, store)


def dry_deck(template: list[dict], eid: str | None, existing: list[dict],
             rerun_statuses: list[str] | None = None) -> tuple[str, list[dict]]:
    """A session's records as a run would see them, writing nothing: tasks not yet recorded
    appear as would-be records (``id`` = ``dry:<name>``)."""
    eid = eid or "dry:session"
    deck = [dict(t) for t in existing]
    names = {t["name"]: t for t in deck}
    for item in template:
        if item["name"] in names:
            if rerun_statuses and names[item["name"]]["status"] in rerun_statuses:
                names[item["name"]]["status"] = WAITING
            continue
        deck.append(dict(item, id=f"dry:{item['name']}", session=eid,
                         parents=[names[p]["id"] if p in names else f"dry:{p}" for p in item["parents"]]))
    return eid, deck


_UNSEEN = object()


def session_templates(refs: list[SessionRef], classes: list[type[Pipeline]], store: TaskStore) -> list[list[dict]]:
    """Each session's graph template: one per pipeline class (the Task objects are built and
    checked once per class), or one per session for a class with ``graph_per_session``.
    Sessions sharing a template share the very same list object (the stamping groups by it)."""
    by_class: dict[type, list[dict] | None] = {}  # None: built per session
    out = []
    for ref, cls in zip(refs, classes):
        template = by_class.get(cls, _UNSEEN)
        if template is _UNSEEN:
            # an ibllib pipeline may build its tasks from the session (its default: one per session)
            per_session = getattr(cls, "graph_per_session", not issubclass(cls, Pipeline))
            template = by_class[cls] = None if per_session else template_of(instantiate(cls, ref.path, store))
        out.append(template_of(instantiate(cls, ref.path, store)) if template is None else template)
    return out


def check_sessions(sessions: list, pipeline: str, store: TaskStore, check: Callable[[list[dict]], None]) -> None:
    """Every check before anything is recorded: session paths, the pipeline, and (``check``, the
    backend's) the resources of every distinct kind of task -- cluster limits, the machine's
    budget -- taken from the graph templates, as they will be recorded."""
    cls = find_pipeline(pipeline)
    refs = parse_session_paths(sessions)
    distinct: dict[tuple, dict] = {}
    for template in {id(t): t for t in session_templates(refs, [cls] * len(refs), store)}.values():
        for item in template:
            distinct.setdefault(tuple(map(item.get, ("executable", "cpu", "gpu", "ram", "time_out_secs",
                                                     "priority", "io_charge"))), item)
    check(list(distinct.values()))


def plan_sessions(sessions: list[Path | str], pipeline: str, store: TaskStore, ledger: Ledger,
                  statuses=(WAITING,), names=None, dry_run: bool = False, rerun_statuses=None,
                  live_backend: str | None = None, defer_records: bool = False,
                  pipes: list[Pipeline] | None = None) -> list[Plan]:
    """Record (unless dry) and plan each session; Held decisions are saved (unless dry).

    Every session path and the pipeline are checked before the first record is written. A
    session with none of the pipeline's tasks yet (a backfill's usual case) gets the template's
    records and plan stamped (Held ones created Held), in a few statements for all of them; a
    session with records goes through the general rules (``record_existing``, ``plan_session``).

    ``defer_records``: the stamped records get provisional ids and nothing is written; they are
    made after queueing (``hpcpipe.recorder``). A session still queued by such a backfill
    (live jobs with provisional ids) is not planned again.
    """
    statuses = check_statuses(statuses)
    rerun_statuses = check_statuses(rerun_statuses)
    cls = find_pipeline(pipeline)  # once: entry points are read from disk
    refs = parse_session_paths(sessions)  # every path checked, in one pass
    templates = session_templates(refs, [cls] * len(refs), store)
    live = {j.task_id: j for j in ledger.live(live_backend)} if live_backend else {}
    queued = {j.session for j in live.values() if recorder.is_provisional(j.task_id)}
    plans: list[Plan | None] = [None] * len(refs)
    with store.batch():
        eids = store.session_ids(refs, create=not dry_run)
        groups: dict[int, list[int]] = {}  # sessions by template
        for k, template in enumerate(templates):
            groups.setdefault(id(template), []).append(k)
        for ks in groups.values():
            template = templates[ks[0]]
            graph = template[0]["graph"] if template else None
            known = [eids[k] for k in ks if eids[k] is not None]
            existing = store.tasks_by_session(known, graph) if known else {}
            for k in [k for k in ks if eids[k] in queued]:
                plans[k] = Plan(eids[k], refs[k].path)
                _logger.info("%s: still queued by a backfill whose records are being made; not planned again",
                             refs[k].short)
            ks = [k for k in ks if eids[k] not in queued]
            fresh = [k for k in ks if not existing.get(eids[k])]
            recorded = [k for k in ks if existing.get(eids[k])]
            if fresh and not dry_run:
                _stamp(store, template, [eids[k] for k in fresh], [refs[k] for k in fresh], statuses, names,
                       plans, fresh, defer_records)
            if dry_run:
                for k in ks:
                    eid, deck = dry_deck(template, eids[k], existing.get(eids[k], []), rerun_statuses)
                    plans[k] = plan_session(deck, eid, refs[k].path, statuses, names, live)
                continue
            decks = record_existing(store, [(eids[k], template, existing[eids[k]]) for k in recorded],
                                    rerun_statuses)
            for k, deck in zip(recorded, decks):
                plans[k] = plan = plan_session(deck, eids[k], refs[k].path, statuses, names, live)
                for task, reason in plan.held:
                    if task["status"] != HELD:
                        store.update_task(task["id"], status=HELD)
                    _logger.info("%s held: %s", task["name"], reason)
    return plans  # type: ignore[return-value]


def _stamp(store: TaskStore, template: list[dict], eids: list[str], refs: list[SessionRef], statuses, names,
           plans: list, where: list[int], defer: bool = False) -> None:
    """Record and plan sessions with none of the template's tasks: the plan is made once on the
    template, its Held tasks are created Held, and both are stamped on every session (``defer``:
    with provisional ids, nothing written)."""
    tplan = plan_template(template, statuses, names)
    held = {task["name"] for task, _ in tplan.held}
    for task, reason in tplan.held:
        _logger.info("%s held in %d session(s): %s", task["name"], len(eids), reason)
    stamped = [dict(item, status=HELD) if item["name"] in held else item for item in template]
    made = recorder.stamp(stamped, eids) if defer else store.stamp_tasks(stamped, eids)
    for k, plan in zip(where, stamp_plans(tplan, made, eids, [ref.path for ref in refs])):
        plans[k] = plan
