"""The sweep: no task stays Started after the process or job that ran it is gone.

A job killed from outside (SIGKILL, OOM killer, a scheduler limit) cannot report. ``sweep``
compares the store with what the backend says about the live jobs in the ledger and records
such tasks Errored, with the reason in their log. ``hpcpipe status`` runs it before printing.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .ledger import JobRecord, Ledger
from .status import ERRORED, STARTED

_logger = logging.getLogger(__name__)


def _pid_runs_task(pid: int, task_id: str) -> bool:
    """Is ``pid`` alive and still the job side of ``task_id`` (not a recycled pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return task_id.encode() in cmdline


def sweep_local(store, ledger: Ledger) -> list[JobRecord]:
    """Record Errored the tasks whose local process died; returns the jobs found dead."""
    dead = []
    for job in ledger.live("local"):
        if _pid_runs_task(int(job.job_id), job.task_id):
            continue
        dead.append(job)
        try:
            task = store.get_task(job.task_id)
        except Exception:  # noqa: BLE001 - task deleted since: nothing to repair
            task = None
        reason = f"local process {job.job_id} ended without reporting (killed or its engine died)"
        if task is not None and task["status"] == STARTED:
            store.update_task(job.task_id, status=ERRORED, log=(task.get("log") or "") + f"\n{reason}\n")
            _logger.warning("%s: %s", job.task_name, reason)
        ledger.set_state([(job.task_id, job.run_id, "LOST", reason)])
    return dead


def sweep(store, ledger: Ledger) -> list[JobRecord]:
    """Every backend's sweep (the local one here; SLURM's is added by its backend)."""
    if os.name != "posix":
        return []
    return sweep_local(store, ledger)
