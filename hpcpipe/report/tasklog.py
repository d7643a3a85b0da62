"""``hpcpipe log``: a task's log, where its job wrote stdout/stderr, and how that job ended.

The log is the task record's ``log`` (the same on SQLite and Alyx). The job's output file is
the one the job side saved in its result file (``job.output``, its own stdout), or the local
engine's log file (saved with its measurement). How a SLURM job ended comes from one ``sacct``
query (state, exit code, reason; for a task of a pack, its own job step's), else from the
ledger's last view of it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BackendError, NotFound
from ..jobside import runfolder
from ..ledger import JobRecord, Ledger
from ..usage import Usage, load_local


@dataclass
class TaskLog:
    task: dict
    job: JobRecord | None
    usage: Usage | None
    output: str | None
    output_tail: str = ""
    #: the task's SLURM job step (``123.17``) when it ran in a pack
    step: str | None = None

    def lines(self, tail: int | None = None) -> list[str]:
        """The task's log lines (the last ``tail``); the job's output when the log is empty."""
        text = self.task.get("log") or self.output_tail
        lines = text.rstrip("\n").splitlines()
        return lines[-tail:] if tail else lines


def find_tasks(store, task_id: str | None = None, session: str | None = None, name: str | None = None) -> list[dict]:
    """The task by id, or the tasks named ``name`` in session ``session`` (an eid)."""
    if task_id:
        return [store.get_task(task_id)]
    found = store.list_tasks(session=session, name=name)
    if not found:
        raise NotFound(f"no task named {name!r} in this session")
    return found


def task_log(task: dict, ledger: Ledger, transport_for) -> TaskLog:
    """Everything ``hpcpipe log`` prints for one task (one sacct query for a SLURM job)."""
    jobs = ledger.history([task["id"]])
    job = jobs[-1] if jobs else None
    usage = output = step = None
    transport = None
    if job is not None and job.backend == "slurm":
        from ..slurm.accounting import query_usage
        from ..slurm.pack import step_names

        transport = transport_for(job.remote)
        name = step_names(transport.read_file, job.run_dir).get(job.task_id) if job.run_dir else None
        steps: dict = {}
        try:
            found = query_usage(transport, [job.job_id], steps=steps)[0]
            usage = steps.get((job.job_id, name)) if name else found.get(job.backend_id)
        except BackendError:
            usage = None
        step = usage.job_id if name and usage else None
        if job.run_dir:
            result = runfolder.read_result(transport.read_file(str(runfolder.result_path(job.run_dir, job.task_id))))
            output = ((result or {}).get("job") or {}).get("output")
            if not output and step:  # a job step's stdout is a pipe to slurmstepd: its log, by its name
                output = f"{job.run_dir}/logs/{name}.log"
    elif job is not None:
        usage = load_local(job.run_dir, job.task_id)
        output = usage.output if usage and usage.output else None
    tail = ""
    if output and not task.get("log"):
        if transport is None:
            from ..transport import LocalTransport

            transport = LocalTransport()
        tail = (transport.read_file(output) or "")[-65536:]
    return TaskLog(task, job, usage, output, tail, step)
