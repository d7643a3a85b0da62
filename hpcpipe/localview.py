"""What this machine knows of tasks without asking the store, for output while it is unreachable.

Sources, oldest knowledge first: the job ledger (which tasks ran here, their jobs), the jobs'
result files in their run folders (the statuses they reported), then the reports waiting in
the outbox. Rows have the keys of the CLI's status table; ``local`` marks them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .jobside.runfolder import read_result, result_path
from .store import outbox

#: the task fields a report may carry that the status table shows
_SHOWN = ("status", "time_elapsed_secs")


def _result_fields(run_dir: str, task_id: str) -> dict:
    try:
        res = read_result(result_path(run_dir, task_id).read_text())
    except OSError:
        return {}
    fields: dict = {}
    for op in (res or {}).get("ops", []):
        if op["op"] == "update_task" and op["payload"].get("task_id") == task_id:
            fields.update({k: op["payload"][k] for k in _SHOWN if k in op["payload"]})
    return fields


def _queued_fields(store: Any) -> dict[str, dict]:
    """``{task id: fields}`` of the update reports waiting in the outbox, applied in order."""
    out: dict[str, dict] = {}
    for path in outbox.pending(store):
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        payload = report.get("payload") or {}
        if report.get("op") == "update_task" and payload.get("task_id"):
            out.setdefault(payload["task_id"], {}).update({k: payload[k] for k in _SHOWN if k in payload})
    return out


def local_rows(store: Any, ledger: Any, tasks: Iterable[dict] | None = None,
               final: dict[str, str] | None = None) -> list[dict]:
    """Status rows from local knowledge: of ``tasks`` (records), or of every task in the ledger.

    ``final``: statuses the caller knows best (the local engine's own results).
    """
    tasks = list(tasks) if tasks is not None else None
    jobs = ledger.latest(None if tasks is None else [t["id"] for t in tasks])
    if tasks is None:
        tasks = [{"id": j.task_id, "name": j.task_name, "session": j.session} for j in jobs.values()]
    queued = _queued_fields(store)
    rows = []
    for t in tasks:
        job = jobs.get(t["id"])
        fields = {k: t.get(k) for k in _SHOWN}
        if job is not None and job.run_dir:
            fields.update(_result_fields(job.run_dir, t["id"]))
        fields.update(queued.get(t["id"], {}))
        status = (final or {}).get(t["id"]) or fields.get("status") or "unknown"
        rows.append({"session": t.get("session"), "name": t.get("name"), "status": status,
                     "level": t.get("level"), "cpu": t.get("cpu"), "gpu": t.get("gpu"), "ram": t.get("ram"),
                     "time_elapsed_secs": fields.get("time_elapsed_secs"),
                     "backend": job.backend if job else None, "job_id": job.backend_id if job else None,
                     "job_state": job.state if job else None, "reason": job.reason if job else None,
                     "local": True})
    return rows
