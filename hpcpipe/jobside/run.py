"""The job side's entry point (``python -m hpcpipe.jobside``): find the task, run it through
``run_alyx_task``, record and report the outcome, exit with a code that tells the scheduler
success from failure (so ``afterok`` children run only after real success).

The task is found from a run folder (see ``runfolder``), written by the local engine and the
SLURM backend alike: ``--run-dir DIR --chunk C (--index I | --array) --task-name NAME``; an array
element takes its index from ``SLURM_ARRAY_TASK_ID``. No database query is needed to start.

Its settings are the ones the submitting side wrote into ``run.json`` (``Settings.from_run``):
a job reads neither hpcpipe's environment variables nor the config file of the node it runs on,
only SLURM's own variables (job id, array index, node, restart count, ``CUDA_VISIBLE_DEVICES``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from ..jobstate import REQUEUE_EXIT

EXIT_DONE, EXIT_FAILED, EXIT_RETRY = 0, 1, REQUEUE_EXIT
#: a Waiting status after the run means the GPU lock was held: try again later (EX_TEMPFAIL)
EXIT_CODES = {"Complete": EXIT_DONE, "Incomplete": EXIT_DONE, "Waiting": EXIT_RETRY}

_logger = logging.getLogger("hpcpipe.jobside")


def exit_code(status: str) -> int:
    """Process exit code for a final task status."""
    return EXIT_CODES.get(status, EXIT_FAILED)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpcpipe.jobside", description=__doc__)
    parser.add_argument("--location", default=None, help="data location (default: the run's profile)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--chunk", required=True)
    parser.add_argument("--index", type=int)
    parser.add_argument("--array", action="store_true", help="index from $SLURM_ARRAY_TASK_ID")
    parser.add_argument("--task-name", required=True)
    args = parser.parse_args(argv)
    if args.array:
        try:
            args.index = int(os.environ["SLURM_ARRAY_TASK_ID"])
        except (KeyError, ValueError):
            parser.error("--array needs $SLURM_ARRAY_TASK_ID (run inside an array job)")
    if args.index is None:
        parser.error("give --index, or --array inside an array job")
    return args


def job_banner() -> str:
    """Where this runs: SLURM job id, node, attempt (restart count), for the task's log."""
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
            "SLURMD_NODENAME", "CUDA_VISIBLE_DEVICES")
    parts = [f"{k}={os.environ[k]}" for k in keys if k in os.environ]
    return f"host {socket.gethostname()} pid {os.getpid()}" + (" " + " ".join(parts) if parts else "")


def job_info() -> dict:
    """This attempt of the job, saved in the result file (the sweep reads ``output``)."""
    from .signals import own_output_path

    env = os.environ
    return {"job_id": env.get("SLURM_JOB_ID"), "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
            "array_task_id": env.get("SLURM_ARRAY_TASK_ID"), "node": env.get("SLURMD_NODENAME"),
            "restart": int(env.get("SLURM_RESTART_COUNT") or 0), "host": socket.gethostname(),
            "pid": os.getpid(), "output": own_output_path(), "started": time.time()}


def _task_of(exc: BaseException):
    """The Task instance a signal interrupted (its ``run`` frame), for its log and clean-up."""
    from ..task import Task

    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        obj = frame.f_locals.get("self")
        if isinstance(obj, Task):
            found = obj
    return found


def _stopped(store, task_id: str, stop, record: bool) -> str:
    """Clean up after a signal and record (when ``record``) why the job stopped: Errored, or
    Waiting for a requeue. Returns the task's status. A task that had already reported its
    outcome when the signal came keeps it."""
    task = _task_of(stop)
    _logger.warning("stopping: %s", stop.text)
    if task is not None:
        for step in (task.tearDown, task.cleanUp):  # GPU lock, scratch folder
            try:
                step()
            except Exception:  # noqa: BLE001 - best effort while being killed
                _logger.exception("clean-up after %s failed", stop.text)
    try:
        current = store.get_task(task_id)
    except Exception:  # noqa: BLE001
        current = {}
    if not record or current.get("status", "Started") not in ("Started", "Waiting"):
        return current.get("status") or stop.status
    log = task.log if task is not None and task.log else (current.get("log") or "")
    fields = {"status": stop.status, "log": (log or "") + f"\n{stop.reason}\n"}
    if task is not None and task.time_elapsed_secs is not None:
        fields["time_elapsed_secs"] = task.time_elapsed_secs
    store.update_task(task_id, **fields)
    return stop.status


def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as stack:  # the job's settings stay active until its last report
        return _main(parse_args(argv), stack)


def _main(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    from .signals import JobSignal, SignalGuard

    guard = SignalGuard().install()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _logger.info("job side: %s", job_banner())
    store = None
    task_id = None
    try:
        from ..pipeline import run_alyx_task
        from ..settings import Settings, active
        from .runfolder import RunFolderStore, load_session_entry

        run_dir = Path(args.run_dir)
        run = json.loads((run_dir / "run.json").read_text())
        settings = stack.enter_context(active(Settings.from_run(run)))
        entry = load_session_entry(run_dir, args.chunk, args.index)
        try:
            tdict = next(t for t in entry["tasks"] if t["name"] == args.task_name)
        except StopIteration:
            _logger.error("no task %s in session %s", args.task_name, entry["path"])
            return EXIT_FAILED
        upstream = None
        if run.get("upstream", run["store"] != "sqlite"):
            from ..errors import Unreachable
            from ..store import open_store

            try:
                upstream = open_store(settings=settings)
            except Unreachable as exc:  # every report then waits in the result file
                _logger.warning("task store unreachable at start: %s", exc)
        if upstream is not None:
            entry = _claim(upstream, run_dir, entry, args.task_name)
            tdict = next(t for t in entry["tasks"] if t["name"] == args.task_name)
        task_id = tdict["id"]
        store = RunFolderStore(run_dir, entry, task_id, upstream, job=job_info(), guard=guard)
        tdict = store.get_task(task_id)  # a requeued attempt sees what the last one recorded
        session = entry["path"]
        # the profile's location (run.json) decides the data handler
        location = args.location or run["location"]
        tdict, _ = run_alyx_task(tdict=tdict, session_path=session, one=store,
                                 machine=socket.gethostname(), location=location, settings=settings)
        status = tdict["status"]
        code = exit_code(status)
        guard.settle()  # the task reported its outcome: late signals change nothing
    except JobSignal as stop:
        record = store is not None and task_id is not None
        guard.fired = stop  # later signals stay ignored while we report
        status = _stopped(store, task_id, stop, record) if store is not None else stop.status
        if status == stop.status:
            code = EXIT_RETRY if status == "Waiting" else 128 + stop.signum
        else:  # the task had reported its own outcome just before the signal
            code = exit_code(status)
        if hasattr(store, "finish"):
            store.finish(status, code, final=status != "Waiting")
        _logger.info("task %s stopped %s by signal %d (exit %d)", task_id, status, stop.signum, code)
        return code
    except Exception:  # noqa: BLE001 - failed before reporting: import error, missing module, constructor
        text = traceback.format_exc()
        _logger.error("the task failed before reporting its outcome:\n%s", text)
        if store is None or task_id is None:
            return EXIT_FAILED  # no session entry to report to: the job's output file has it
        status = _failed_early(store, task_id, text)
        code = exit_code(status) if status != "Errored" else EXIT_FAILED
        tdict = {"name": args.task_name}
    if hasattr(store, "finish"):
        store.finish(status, code)
    _logger.info("task %s ended %s (exit %d)", tdict["name"], status, code)
    return code


def _claim(upstream, run_dir: Path, entry: dict, task_name: str) -> dict:
    """A backfill whose records are made after queueing (``hpcpipe.recorder``): the entry with
    store ids, this task's record made now if the recorder has not reached it. A store that
    cannot be reached leaves the provisional ids: reports wait in the result file."""
    from ..errors import Unreachable
    from ..recorder import claim, is_provisional
    from ..store import health, outbox

    if not any(is_provisional(t["id"]) for t in entry["tasks"]):
        return entry
    try:
        # a report's terms: nothing asked while the store is marked down, a short budget
        # otherwise, so an outage holds no job before its work (the recorder makes it later)
        with health.reporting(upstream):
            return claim(upstream, run_dir, entry, task_name)
    except Unreachable as exc:
        if not isinstance(exc, health.MarkedDown):
            health.mark_down(outbox.store_key(upstream), str(exc))
        _logger.warning("task record not made on the store now: %s", exc)
        return entry


def _failed_early(store, task_id: str, text: str) -> str:
    """Record a failure the task could not report itself, traceback in its log: Errored, unless
    the task had already recorded a final outcome (then only the log grows). Returns the status."""
    try:
        current = store.get_task(task_id)
    except Exception:  # noqa: BLE001
        current = {}
    status = current.get("status") or "Started"
    log = (current.get("log") or "") + f"\njob side: the task failed before reporting its outcome:\n{text}"
    if status in ("Started", "Waiting", "Held"):
        status = "Errored"
        store.update_task(task_id, status=status, log=log)
    else:
        store.update_task(task_id, log=log)
    return status
