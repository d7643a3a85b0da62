"""The rows of a report: each task with its job, what it asked and what it used.

Sources, joined by task id: the task store (name, class, status, parents, log), the job ledger
(which job ran it, where, its run folder) and, for SLURM jobs, one batched ``sacct`` query per
cluster (``slurm.accounting``); local jobs carry the engine's measurement in their run folder.
Requested figures come from what the job asked SLURM (ReqCPUS, ReqMem, Timelimit), so they are
true even when a record's values changed afterwards (escalation, suggestions). A task of a pack
gets its own job step's figures (``123.17``, found by the step's name in the same query), not
the whole allocation's; a task of a pack with no step (it never started) has none.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..errors import BackendError, BadInput, NotFound
from ..jobside import reasons
from ..jobstate import is_final
from ..ledger import JobRecord, Ledger
from ..session import short_names
from ..usage import Usage, load_local

#: the state column of a task of a pack that never started in its (ended) allocation
NOT_RUN = "NOT RUN"


@dataclass
class Row:
    """One task of the report, with its latest job in the selection."""

    task: dict
    job: JobRecord | None
    usage: Usage | None
    session: str
    attempts: int = 1
    #: the task's SLURM job step (``123.17``) when it ran in a pack
    step: str | None = None
    #: a task of a pack (its job is the allocation, shared with the pack's other tasks)
    packed: bool = False

    @property
    def req_cpus(self) -> int | None:
        return self.usage.req_cpus if self.usage and self.usage.req_cpus else self.task.get("cpu")

    @property
    def req_ram_gb(self) -> float | None:
        if self.usage and self.usage.req_mem_mb:
            return self.usage.req_mem_mb / 1024
        return self.task.get("ram")

    @property
    def req_time_secs(self) -> float | None:
        if self.usage and self.usage.timelimit_secs:
            return self.usage.timelimit_secs
        return self.task.get("time_out_secs")

    @property
    def state(self) -> str:
        """SLURM's state of the task's job (or job step). A task of a pack that has no step
        never ran: once the allocation has ended that is ``NOT RUN``, not the allocation's
        state (which says how the *engine* ended)."""
        if self.usage and self.usage.state:
            return self.usage.state
        if self.packed and self.job and is_final(self.job.state):
            return NOT_RUN
        return (self.job.state if self.job else "") or ""

    @property
    def reason(self) -> str:
        return failure_reason(self.task, self.job, self.usage)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    #: sacct commands run
    queries: int = 0
    #: what the report could not tell (no accounting...), one line each
    notes: list[str] = field(default_factory=list)
    title: str = ""


def failure_reason(task: dict, job: JobRecord | None = None, usage: Usage | None = None) -> str:
    """Why a task did not complete, in one line: the last tagged reason in its log
    (``[hpcpipe:MEMORY] ...``), else the exception its traceback ended with, else SLURM's."""
    if task.get("status") in ("Complete", "Incomplete"):
        return ""
    kind, text = reasons.last_cause(task.get("log"))
    if kind == reasons.PYTHON:
        return f"Python error: {text}"
    if kind is not None:
        return f"{kind}: {text}"
    if usage and usage.reason:
        return usage.reason
    return (job.reason or "") if job else ""


def parse_when(text: str, now: _dt.datetime | None = None) -> _dt.datetime:
    """``2026-12-01``, ``2026-12-01T10:00``, or an age: ``90m``, ``6h``, ``2d``, ``1w``."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([mhdw])", text.strip())
    if m:
        unit = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
        return (now or _dt.datetime.now()) - _dt.timedelta(seconds=float(m.group(1)) * unit)
    try:
        return _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"cannot read time {text!r}: give YYYY-MM-DD[THH:MM] or an age like 6h, 2d") from None


def _in_window(job: JobRecord, since: _dt.datetime | None, until: _dt.datetime | None) -> bool:
    if since is None and until is None:
        return True
    if not job.submitted:
        return False
    when = _dt.datetime.fromisoformat(job.submitted)
    return (since is None or when >= since) and (until is None or when <= until)


def collect(store, ledger: Ledger, run: str | None = None, session: str | None = None,
            pipeline: str | None = None, since: _dt.datetime | None = None, until: _dt.datetime | None = None,
            transport_for: Callable[[str | None], object] | None = None, history: bool = False) -> Report:
    """Rows for the tasks selected by every filter given (session: an eid).

    ``transport_for(remote)`` gives the transport sacct runs through for jobs submitted through
    that ``--remote`` (None: this machine). ``history``: one row per job (every attempt), not per
    task. Raises BadInput when a run id names no job.
    """
    if run is not None:
        jobs = ledger.run(run)
        if not jobs:
            raise BadInput(f"no job of run {run!r} in the ledger ({ledger.path})")
        tasks = _tasks_of(store, jobs)
    else:
        tasks = {t["id"]: t for t in store.list_tasks(session=session, graph=pipeline)}
        jobs = ledger.history(tasks)
    jobs = [j for j in jobs if j.task_id in tasks and _in_window(j, since, until)]
    if since is not None or until is not None:
        tasks = {tid: t for tid, t in tasks.items() if any(j.task_id == tid for j in jobs)}
    if pipeline is not None:
        tasks = {tid: t for tid, t in tasks.items() if t.get("graph") == pipeline}
    report = Report()
    usages, steps = _usages(jobs, transport_for, report)
    attempts: dict[str, int] = {}
    latest: dict[str, JobRecord] = {}
    for j in jobs:
        attempts[j.task_id] = attempts.get(j.task_id, 0) + 1
        latest[j.task_id] = j
    labels = _session_labels(store, {t["session"] for t in tasks.values()})
    picked = jobs if history else list(latest.values())
    seen = {j.task_id for j in picked}
    for j in picked:
        t = tasks[j.task_id]
        step_usage = usages.get(_key(j)) if _key(j) in steps else None
        if step_usage is not None and step_usage.req_mem_mb is None and t.get("ram"):
            step_usage.req_mem_mb = float(t["ram"]) * 1024  # what the step asked (--mem): not in its sacct row
        report.rows.append(Row(t, j, usages.get(_key(j)), labels.get(t["session"], str(t["session"])),
                               attempts[j.task_id], steps.get(_key(j)), _key(j) in steps))
    for tid, t in tasks.items():  # tasks never run: in the graph and the table, with no figures
        if tid not in seen:
            report.rows.append(Row(t, None, None, labels.get(t["session"], str(t["session"])), 0))
    report.rows.sort(key=lambda r: (r.session, r.task.get("level") or 0, r.task["name"],
                                    (r.job.submitted or "") if r.job else ""))
    return report


def _key(job: JobRecord) -> tuple[str, str | None, str, str]:
    """A job of one task: the tasks of a pack share their SLURM job id."""
    return (job.backend, job.remote, job.backend_id if job.backend == "slurm" else job.run_id, job.task_id)


def _tasks_of(store, jobs: Iterable[JobRecord]) -> dict[str, dict]:
    """The store records of these jobs' tasks: one listing per session (not one read per task)."""
    wanted = {j.task_id for j in jobs}
    out: dict[str, dict] = {}
    for eid in {j.session for j in jobs}:
        try:
            out.update({t["id"]: t for t in store.list_tasks(session=eid) if t["id"] in wanted})
        except NotFound:
            continue
    for tid in wanted - set(out):  # a job recorded without its session
        try:
            out[tid] = store.get_task(tid)
        except NotFound:
            continue
    return out


def _usages(jobs: list[JobRecord], transport_for, report: Report) -> tuple[dict, dict]:
    """Usage per job: one sacct query per cluster for SLURM jobs, the run folder for local ones;
    a packed task's usage is its job step's. Also ``{job key: step id}`` for packed tasks (None:
    the task has no step, it never started)."""
    from ..slurm.accounting import query_usage
    from ..slurm.pack import step_names

    out: dict = {}
    step_of: dict = {}
    for j in jobs:
        if j.backend != "slurm":
            u = load_local(j.run_dir, j.task_id)
            if u is not None:
                out[_key(j)] = u
    for remote in sorted({j.remote for j in jobs if j.backend == "slurm"}, key=lambda r: r or ""):
        mine = [j for j in jobs if j.backend == "slurm" and j.remote == remote]
        if transport_for is None:
            from ..transport import LocalTransport

            transport = LocalTransport()
        else:
            transport = transport_for(remote)
        names: dict[str, dict[str, str]] = {}
        for run_dir in {j.run_dir for j in mine if j.run_dir and j.array_index is None}:
            names[run_dir] = step_names(transport.read_file, run_dir)
        steps: dict = {}
        try:
            found, queries = query_usage(transport, [j.job_id for j in mine], steps=steps)
        except BackendError as exc:
            report.notes.append(f"no SLURM figures for {len(mine)} job(s){' on ' + remote if remote else ''}: {exc}")
            continue
        report.queries += queries
        for j in mine:
            step = names.get(j.run_dir or "", {}).get(j.task_id)
            if step is not None:  # a packed task: its own step, or nothing (None) if it never started
                step_of[_key(j)] = None
                if (j.job_id, step) in steps:
                    out[_key(j)] = steps[(j.job_id, step)]
                    step_of[_key(j)] = out[_key(j)].job_id
            elif j.backend_id in found:
                out[_key(j)] = found[j.backend_id]
    return out, step_of


def _session_labels(store, eids: set) -> dict:
    paths = {}
    for eid in eids:
        try:
            p = store.session_path(eid) if eid else None
        except NotFound:
            p = None
        paths[eid] = str(p) if p else None
    names = short_names([p for p in paths.values() if p])
    return {eid: names.get(p, str(eid)) if p else str(eid) for eid, p in paths.items()}
