"""The sweep: no task stays Started after the process or job that ran it is gone.

A job killed from outside (SIGKILL, OOM killer, a scheduler limit) cannot report. The sweep
compares the store with what the backend says about the live jobs in the ledger and records
such tasks Errored, with the reason in their log. This module is the local engine's (its
``refresh`` calls ``sweep_local``); SLURM's is part of ``SlurmBackend.refresh``, and
``hpcpipe status`` refreshes every backend before printing.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .engines.local import engine_pid
from .jobstate import LOST, UNSUBMITTED
from .ledger import JobRecord, Ledger
from .status import ERRORED, STARTED

_logger = logging.getLogger(__name__)


def _pid_runs_job(job: JobRecord) -> bool:
    """Is the job's pid alive and still its job side (not a recycled pid)?"""
    try:
        argv = Path(f"/proc/{int(job.job_id)}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        return False
    return b"hpcpipe.jobside" in argv and (job.task_name or "").encode() in argv and \
        (job.run_dir is None or job.run_dir.encode() in argv)


def sweep_local(store, ledger: Ledger) -> list[JobRecord]:
    """Record Errored the tasks whose local process died without a final result; returns the
    jobs found dead. A result the job wrote before it died is folded in first."""
    from .jobside import runfolder

    dead = []
    for job in ledger.live("local"):
        if job.intent:  # recorded before its engine started it: live while that engine is
            if engine_pid(job) is None:
                ledger.set_state([(job.task_id, job.run_id, UNSUBMITTED, "its local engine ended before starting it")])
            continue
        if _pid_runs_job(job):
            continue
        dead.append(job)
        if job.run_dir:
            path = runfolder.result_path(job.run_dir, job.task_id)
            done = runfolder.fold(store, [(job.task_id, path.read_text() if path.exists() else None,
                                           job.folded_ops)]).get(job.task_id)
            if done and done[1]:
                ledger.set_folded([(job.task_id, job.run_id, done[0], True)])
                ledger.set_state([(job.task_id, job.run_id, "COMPLETED", "result folded after its engine ended")])
                continue
        try:
            task = store.get_task(job.task_id)
        except Exception:  # noqa: BLE001 - task deleted since: nothing to repair
            task = None
        reason = f"local process {job.job_id} ended without reporting (killed or its engine died)"
        if task is not None and task["status"] == STARTED:
            store.append_log(job.task_id, reason, status=ERRORED)
            _logger.warning("%s: %s", job.task_name, reason)
        ledger.set_state([(job.task_id, job.run_id, LOST, reason)])
    return dead

