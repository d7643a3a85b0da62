"""Pipeline (a session's graph of Tasks) and ``run_alyx_task``, with ibllib's API.

A pipeline's tasks are registered as task records in the store (Alyx or the embedded one);
running a record goes through ``run_alyx_task``, which applies ibllib's rules: a task runs only
when its parents are Complete or Incomplete, a child of a failed parent is Held, and Held
children go back to Waiting once all their parents are done.
"""
from __future__ import annotations

import abc
import importlib
import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .errors import BadInput, PipelineError
from .status import ABANDONED, BLOCKING, CODE_TO_STATUS, DONE, EMPTY, ERRORED, HELD, STATUSES, WAITING, check_statuses
from .store.base import SMALLINT_MAX
from .store.held import parents_state, release_held_children
from .task import Task

_logger = logging.getLogger(__name__)


def executable_name(task: Task) -> str:
    """The dotted path stored as a task's ``executable`` (ibllib: module + class name)."""
    return f"{type(task).__module__}.{task.name}"


def str2class(dotted: str) -> type:
    """Import ``package.module.Class``; a clear error when it cannot be found."""
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise BadInput(f"{dotted!r} is not a dotted path package.module.Class")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        # chained: the job side records the import's own traceback in the task's log
        raise BadInput(f"cannot import {dotted!r}: {exc}") from exc


def check_graph(tasks: "OrderedDict[str, Task]") -> None:
    """Refuse duplicate names, parents outside the pipeline and cycles, naming the tasks."""
    by_name: dict[str, Task] = {}
    for task in tasks.values():
        if task.name in by_name:
            raise PipelineError(f"two tasks are named {task.name!r} in the pipeline")
        by_name[task.name] = task
    members = {id(t) for t in tasks.values()}
    for task in tasks.values():
        for parent in task.parents:
            if id(parent) not in members:
                raise PipelineError(f"task {task.name!r} has parent {getattr(parent, 'name', parent)!r} "
                                    "which is not in the pipeline")
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done

    def visit(task: Task, path: list[str]) -> None:
        if state.get(id(task)) == 2:
            return
        if state.get(id(task)) == 1:
            cycle = path[path.index(task.name):] + [task.name]
            raise PipelineError(f"cycle in task parents: {' -> '.join(cycle)}")
        state[id(task)] = 1
        for parent in task.parents:
            visit(parent, path + [task.name])
        state[id(task)] = 2

    for task in tasks.values():
        visit(task, [])


class Pipeline(abc.ABC):
    """A collection of related, interdependent tasks for one session."""

    one = None
    _name: str | None = None
    #: True for a pipeline whose tasks depend on what a session holds: a backfill then builds
    #: it once per session. By default the graph is a function of the class: built once per
    #: class and stamped on every session (``graph_template``).
    graph_per_session: bool = False

    def __init__(self, session_path=None, one=None, eid=None) -> None:
        if session_path is None and eid is None:
            raise BadInput("a pipeline needs a session_path or an eid")
        self.one = one
        self.eid = eid
        self.session_path = Path(session_path) if session_path is not None else None
        self.label = f"{type(self).__module__}.{type(self).__name__}"
        self._tasks: OrderedDict[str, Task] = OrderedDict()

    @property
    def tasks(self) -> "OrderedDict[str, Task]":
        """The tasks by name, parents before children. Checked whenever it is assigned."""
        return self._tasks

    @tasks.setter
    def tasks(self, value: "OrderedDict[str, Task]") -> None:
        value = OrderedDict(value)
        check_graph(value)
        self._tasks = value

    @property
    def name(self) -> str:
        """The graph name recorded on every task (``graph`` field)."""
        return self._name or type(self).__name__

    @property
    def store(self):
        """The task store this pipeline records into (from ``one``, or the configured one)."""
        from .store import open_store

        if getattr(self, "_store", None) is None:
            self._store = open_store(self.one)
        return self._store

    def _eid(self, create: bool = False) -> str:
        if self.eid is None:
            self.eid = self.store.session_id(self.session_path, create=create)
        return self.eid

    # ------------------------------------------------------------------ graph
    def make_graph(self, out_dir=None, show: bool = False) -> Path:
        """Write the pipeline as a Graphviz file, and render SVG/PNG where ``dot`` exists.

        Returns the path of the rendered picture, or of the ``.gv`` file without ``dot``.
        """
        import shutil
        import subprocess

        out_dir = Path(out_dir or self.session_path or ".")
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = [f'digraph "{self.name}" {{', "  rankdir=TB;", '  node [shape=box, style=rounded];']
        for task in self.tasks.values():
            label = f"{task.name}\\nlevel {task.level} | cpu {task.cpu} gpu {task.gpu} ram {task.ram}G"
            lines.append(f'  "{task.name}" [label="{label}"];')
            lines.extend(f'  "{p.name}" -> "{task.name}";' for p in task.parents)
        lines.append("}")
        gv = out_dir / f"{self.name}.gv"
        gv.write_text("\n".join(lines) + "\n")
        dot = shutil.which("dot")
        if dot is None:
            return gv
        for fmt in ("svg", "png"):
            subprocess.run([dot, f"-T{fmt}", str(gv), "-o", str(gv.with_suffix(f".{fmt}"))], check=True)
        picture = gv.with_suffix(".png")
        if show:
            _logger.info("graph written to %s", picture)
        return picture

    # ------------------------------------------------------------------ records
    def create_tasks_list_from_pipeline(self) -> list[dict]:
        """Task descriptions (parents by name) that ``create_alyx_tasks(tasks_list=...)`` accepts."""
        return [self._task_dict(t, parents=[p.name for p in t.parents]) for t in self.tasks.values()]

    def _task_dict(self, task: Task, parents: list) -> dict:
        if task.time_out_secs > SMALLINT_MAX:
            _logger.info("%s: time_out_secs %s recorded as %d (Alyx's limit); jobs get the class's value",
                         task.name, task.time_out_secs, SMALLINT_MAX)
        return {"executable": executable_name(task), "priority": task.priority,
                "io_charge": task.io_charge, "gpu": task.gpu, "cpu": task.cpu, "ram": task.ram,
                "parents": parents, "level": task.level,
                "time_out_secs": min(int(math.ceil(task.time_out_secs)), SMALLINT_MAX),
                "session": self.eid, "status": WAITING, "log": None, "name": task.name,
                "graph": self.name, "arguments": task.kwargs}

    def create_alyx_tasks(self, rerun__status__in=None, tasks_list=None) -> list[dict]:
        """Record the pipeline's tasks in the store; idempotent.

        A task is the triple (name, session, arguments). Existing tasks are left untouched unless
        their status is in ``rerun__status__in`` (``'__all__'``: every status but Abandoned),
        in which case they are reset to Waiting with an empty log.
        """
        return record_pipelines([self], rerun__status__in, tasks_list)[0]

    def _items(self, tasks_list=None) -> list[dict]:
        """The task descriptions to record, parents by name, checked before anything is written."""
        if tasks_list is not None:
            items = [dict(t, session=self.eid) for t in tasks_list]
        else:
            items = [self._task_dict(t, parents=[p.name for p in t.parents]) for t in self.tasks.values()]
        from .store.base import check_fields

        seen: set[str] = set()
        for item in items:
            item.pop("time_out_sec", None)
            item.setdefault("arguments", {})
            check_fields(item)
            missing = [pn for pn in item.get("parents") or [] if pn not in seen]
            if missing:
                raise PipelineError(f"task {item.get('name')!r}: parent(s) {missing} listed after it or missing")
            seen.add(item.get("name"))
        return items

    # ------------------------------------------------------------------ running
    def run(self, status__in=("Waiting",), machine=None, clobber=True, **kwargs):
        """Run, in this process, the session's tasks whose status is in ``status__in``.

        Returns ``(task_deck, all_datasets)`` like ibllib.
        """
        statuses = check_statuses(status__in)
        eid = self._eid()
        task_deck = self.store.list_tasks(session=eid)
        all_datasets: list = []
        for i, tdict in enumerate(task_deck):
            if tdict["status"] not in statuses:
                continue
            task_deck[i], dsets = run_alyx_task(tdict=tdict, session_path=self.session_path, one=self.store,
                                                job_deck=task_deck, machine=machine, clobber=clobber, **kwargs)
            if dsets:
                all_datasets.extend(dsets)
        return task_deck, all_datasets

    def rerun_failed(self, **kwargs):
        """Run again every task that did not finish: Waiting, Held, Started, Errored, Empty."""
        return self.run(status__in=[WAITING, HELD, "Started", ERRORED, EMPTY], **kwargs)

    def rerun(self, **kwargs):
        """Run again every task but the Abandoned ones."""
        return self.run(status__in=[s for s in STATUSES if s != ABANDONED], **kwargs)


def job_size(tdict: dict) -> str | None:
    """A record's ``job_size``: not an Alyx field, so it comes from the task class."""
    try:
        return getattr(str2class(tdict["executable"]), "job_size", None) if tdict.get("executable") else None
    except BadInput:
        return None


def time_out_secs(tdict: dict) -> int | None:
    """A record's time-out, in full: Alyx caps ``time_out_secs`` at 32767 s (about 9 h), so a
    capped value is read back from the task class, where the real one lives."""
    value = tdict.get("time_out_secs")
    if value is not None and value >= SMALLINT_MAX and tdict.get("executable"):
        try:
            return int(math.ceil(str2class(tdict["executable"]).time_out_secs))
        except BadInput:
            return value
    return value


def graph_template(pipe: Pipeline, tasks_list=None) -> list[dict]:
    """The pipeline's task records without a session, parents by name, checked: what every
    session of its class stamps (``TaskStore.stamp_tasks``), so a backfill builds the Task
    objects and checks their fields once per class, not once per session."""
    return [{k: v for k, v in item.items() if k != "session"} for item in pipe._items(tasks_list)]


def record_pipelines(pipes: list[Pipeline], rerun__status__in=None, tasks_list=None) -> list[list[dict]]:
    """Record the tasks of many sessions' pipelines at once (``create_alyx_tasks`` for each).

    Every session's list is checked before the first write. Returns each pipeline's records.
    """
    rerun = check_statuses(rerun__status__in)
    if not pipes:
        return []
    store = pipes[0].store
    todo = [(pipe._eid(create=True), pipe._items(tasks_list)) for pipe in pipes]
    out: list[list[dict]] = [[] for _ in pipes]
    with store.batch():
        graphs: dict[str, list[int]] = {}
        for k, pipe in enumerate(pipes):
            graphs.setdefault(pipe.name, []).append(k)
        for graph, ks in graphs.items():
            existing = store.tasks_by_session([todo[k][0] for k in ks], graph)
            fresh = [k for k in ks if not existing[todo[k][0]]]
            for k in fresh:  # sessions of a class share no template object here: one stamp each
                out[k] = store.stamp_tasks(todo[k][1], [todo[k][0]])[0]
            for k, records in zip([k for k in ks if existing[todo[k][0]]],
                                  record_existing(store, [(todo[k][0], todo[k][1], existing[todo[k][0]])
                                                          for k in ks if existing[todo[k][0]]], rerun)):
                out[k] = records
    return out


def record_existing(store, sessions: list[tuple[str, list[dict], list[dict]]], rerun: list[str]) -> list[list[dict]]:
    """Record the tasks of sessions that already have some: ``(eid, items, existing records)``.

    Existing tasks are kept (reset to the class's values and Waiting when their status is in
    ``rerun``); missing ones are created in rounds, parents before children, one
    ``store.create_tasks`` per round for all the sessions together.
    """
    records: list[dict[str, dict]] = [{} for _ in sessions]
    pending = [(k, i) for k, (_, items, _) in enumerate(sessions) for i in range(len(items))]
    while pending:
        ready, waiting = [], []
        for k, i in pending:
            names = sessions[k][1][i].get("parents") or []
            (ready if all(n in records[k] for n in names) else waiting).append((k, i))
        create: list[tuple[int, dict]] = []
        for k, i in ready:
            eid, items, existing = sessions[k]
            item = dict(items[i], session=eid)
            item["parents"] = [records[k][n]["id"] for n in item.get("parents") or []]
            found = next((r for r in existing if r["name"] == item["name"]
                          and (r["arguments"] or {}) == (item["arguments"] or {})), None)
            if found is None:
                create.append((k, item))
                continue
            if found["status"] in rerun:
                found = store.update_task(found["id"], **{f: v for f, v in item.items() if f != "session"})
            records[k][item["name"]] = found
        for (k, item), rec in zip(create, store.create_tasks([item for _, item in create])):
            records[k][item["name"]] = rec
        pending = waiting
    return [[records[k][item["name"]] for item in items] for k, (_, items, _) in enumerate(sessions)]


def run_alyx_task(tdict=None, session_path=None, one=None, job_deck=None, max_md5_size=None,
                  machine=None, clobber=True, location="server", mode="log", settings=None):
    """Run one task record and register its outputs (ibllib semantics).

    Returns ``(tdict, registered_datasets)``. ``one`` is a TaskStore or a ONE-like object (or
    None for the configured store). With ``mode='raise'`` the task's error is re-raised after
    its status has been saved. ``settings``: what the task runs with (a job's, from its
    ``run.json``); None: the active ones (``settings.current()``).
    """
    from .store import open_store, outbox

    store = open_store(one, settings=settings)
    # reports go through the outbox: kept on disk when the store cannot be reached
    report = outbox.deliver
    registered: list = []
    if not job_deck:
        job_deck = store.list_tasks(session=tdict["session"])
    if tdict.get("parents"):
        statuses = parents_state(tdict, job_deck)
        if not statuses <= DONE:
            _logger.warning("%s has unmet dependencies: parents are %s", tdict["name"], sorted(statuses))
            if statuses & (BLOCKING | {"Missing"}):
                tdict = store.update_task(tdict["id"], status=HELD)
                if mode == "raise":
                    raise RuntimeError(f"{tdict['name']} has unmet dependencies")
            return tdict, registered
    if session_path is None:
        session_path = store.session_path(tdict["session"])
    classe = str2class(tdict["executable"])
    if not issubclass(classe, Task):  # an ibllib task: ibllib's own runner, over the store's ONE face
        from .ibl import run_ibllib_task

        return run_ibllib_task(store, tdict, session_path, job_deck=job_deck, max_md5_size=max_md5_size,
                               machine=machine, clobber=clobber, location=location, mode=mode)
    task = classe(session_path, one=store, taskid=tdict["id"], machine=machine, clobber=clobber,
                  location=location, **(tdict.get("arguments") or {}))
    task.settings = settings
    status = task.run()
    patch: dict[str, Any] = {"time_elapsed_secs": task.time_elapsed_secs, "log": task.log,
                             "version": task.version}
    if task.outputs is None:
        patch["status"] = EMPTY
    else:
        try:
            payload = task.dataset_payload(max_md5_size=max_md5_size)
            if payload["filenames"]:
                registered = report(store, "register_files", **payload) or []
            patch["status"] = CODE_TO_STATUS[0]
        except Exception as exc:
            _logger.exception("registration of %s failed", tdict["name"])
            patch["log"] = (patch["log"] or "") + f"\nregistration failed: {exc}\n"
            status = -1
    if status in CODE_TO_STATUS and status != 0:
        patch["status"] = CODE_TO_STATUS[status]
    # delivered now: the stored record; queued in the outbox (store unreachable): None
    tdict = report(store, "update_task", task_id=tdict["id"], **patch) or dict(tdict, **patch)
    release_held_children(store, tdict)
    task.cleanUp()
    if mode == "raise" and status != 0:
        raise RuntimeError(f"task {tdict['name']} ended with status {patch['status']}:\n{task.log[-2000:]}")
    return tdict, registered
