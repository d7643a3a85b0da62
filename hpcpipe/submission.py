"""From "this session, this pipeline" to a plan handed to a backend.

The CLI calls this module; it calls the store (records), ``plan`` (rules) and a backend
(execution). A dry run computes the same plan without writing a single record.
"""
from __future__ import annotations

import datetime as _dt
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from . import config
from .errors import NotFound
from .ledger import Ledger
from .pipeline import Pipeline, executable_name, record_pipelines
from .pipelines import find_pipeline
from .plan import Plan, plan_session
from .session import parse_session_path
from .status import HELD, WAITING, check_statuses
from .store import TaskStore

_logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One submission: an id that tags every job of it, and a folder for its scripts and logs."""

    id: str
    dir: Path

    @classmethod
    def new(cls, root: Path | None = None, prefix: str = "hp") -> "Run":
        """A fresh run id (sortable by time, unique) and its folder under ``root``."""
        run_id = f"{prefix}-{_dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        root = Path(root or config.get("local", "run_root", str(config.home() / "runs")))
        path = root / run_id
        return cls(run_id, path)


@dataclass
class SubmitResult:
    """What a submission did, for the CLI to print."""

    run: Run
    plans: list[Plan] = field(default_factory=list)
    final: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False


def load_pipeline(session_path: Path | str, pipeline: str | type[Pipeline], store: TaskStore) -> Pipeline:
    """Instantiate a pipeline (a name, or a class already found) on a checked session path.

    Errors come before any record is written.
    """
    ref = parse_session_path(session_path)
    cls = find_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
    return cls(ref.path, one=store)


def dry_deck(pipe: Pipeline, store: TaskStore, rerun_statuses: list[str] | None = None) -> tuple[str, list[dict]]:
    """The pipeline's records as a run would see them, writing nothing: tasks not yet recorded
    appear as would-be records (``id`` = ``dry:<name>``)."""
    try:
        eid = store.session_id(pipe.session_path)
        existing = store.list_tasks(session=eid, graph=pipe.name)
    except NotFound:
        eid, existing = "dry:session", []
    names = {t["name"]: t for t in existing}
    deck = list(existing)
    for task in pipe.tasks.values():
        if task.name in names:
            if rerun_statuses and names[task.name]["status"] in rerun_statuses:
                names[task.name]["status"] = WAITING
            continue
        record = pipe._task_dict(task, parents=[])
        record.update(id=f"dry:{task.name}", session=eid, executable=executable_name(task),
                      parents=[names[p.name]["id"] if p.name in names else f"dry:{p.name}" for p in task.parents])
        deck.append(record)
    return eid, deck


def plan_sessions(sessions: list[Path | str], pipeline: str, store: TaskStore, ledger: Ledger,
                  statuses=(WAITING,), names=None, dry_run: bool = False, rerun_statuses=None,
                  live_backend: str | None = None) -> list[Plan]:
    """Record (unless dry) and plan each session; Held decisions are saved (unless dry).

    Every session path and the pipeline are checked before the first record is written.
    """
    statuses = check_statuses(statuses)
    rerun_statuses = check_statuses(rerun_statuses)
    cls = find_pipeline(pipeline)  # once: entry points are read from disk
    pipes = [load_pipeline(s, cls, store) for s in sessions]
    plans = []
    live = {j.task_id: j for j in ledger.live(live_backend)} if live_backend else {}
    with store.batch():
        if dry_run:
            decks = [dry_deck(pipe, store, rerun_statuses) for pipe in pipes]
        else:  # the pipelines' records (their graph), existing or just created, in a few bulk writes
            recorded = record_pipelines(pipes, rerun_statuses)
            decks = [(pipe.eid, records) for pipe, records in zip(pipes, recorded)]
        for pipe, (eid, deck) in zip(pipes, decks):
            plan = plan_session(deck, eid, pipe.session_path, statuses, names, live)
            if not dry_run:
                for task, reason in plan.held:
                    if task["status"] != HELD:
                        store.update_task(task["id"], status=HELD)
                    _logger.info("%s held: %s", task["name"], reason)
            plans.append(plan)
    return plans
