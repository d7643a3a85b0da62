"""The job side's entry point (``python -m hpcpipe.jobside``): find the task, run it through
``run_alyx_task``, record and report the outcome, exit with a code that tells the scheduler
success from failure (so ``afterok`` children run only after real success).

Two ways to find the task:

* ``--task-id ID``: the local engine, on the machine that holds the store;
* ``--run-dir DIR --chunk C (--index I | --array) --task-name NAME``: a SLURM job; the session's
  records come from the run folder (see ``runfolder``), the element from ``SLURM_ARRAY_TASK_ID``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path

EXIT_DONE, EXIT_FAILED, EXIT_RETRY = 0, 1, 75
#: a Waiting status after the run means the GPU lock was held: try again later (EX_TEMPFAIL)
EXIT_CODES = {"Complete": EXIT_DONE, "Incomplete": EXIT_DONE, "Waiting": EXIT_RETRY}

_logger = logging.getLogger("hpcpipe.jobside")


def exit_code(status: str) -> int:
    """Process exit code for a final task status."""
    return EXIT_CODES.get(status, EXIT_FAILED)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpcpipe.jobside", description=__doc__)
    parser.add_argument("--task-id")
    parser.add_argument("--session", help="session folder (default: as the store knows it)")
    parser.add_argument("--location", default=None)
    parser.add_argument("--run-dir")
    parser.add_argument("--chunk")
    parser.add_argument("--index", type=int)
    parser.add_argument("--array", action="store_true", help="index from $SLURM_ARRAY_TASK_ID")
    parser.add_argument("--task-name")
    args = parser.parse_args(argv)
    if args.run_dir:
        if args.array:
            try:
                args.index = int(os.environ["SLURM_ARRAY_TASK_ID"])
            except (KeyError, ValueError):
                parser.error("--array needs $SLURM_ARRAY_TASK_ID (run inside an array job)")
        if args.chunk is None or args.index is None or not args.task_name:
            parser.error("--run-dir needs --chunk, --index (or --array) and --task-name")
    elif not args.task_id:
        parser.error("give --task-id, or --run-dir with --chunk/--index/--task-name")
    return args


def job_banner() -> str:
    """Where this runs: SLURM job id, node, attempt (restart count), for the task's log."""
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
            "SLURMD_NODENAME", "CUDA_VISIBLE_DEVICES")
    parts = [f"{k}={os.environ[k]}" for k in keys if k in os.environ]
    return f"host {socket.gethostname()} pid {os.getpid()}" + (" " + " ".join(parts) if parts else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..pipeline import run_alyx_task

    _logger.info("job side: %s", job_banner())
    if args.run_dir:
        from .runfolder import RunFolderStore, load_session_entry

        run_dir = Path(args.run_dir)
        run = json.loads((run_dir / "run.json").read_text())
        entry = load_session_entry(run_dir, args.chunk, args.index)
        try:
            tdict = next(t for t in entry["tasks"] if t["name"] == args.task_name)
        except StopIteration:
            _logger.error("no task %s in session %s", args.task_name, entry["path"])
            return EXIT_FAILED
        upstream = None
        if run["store"] != "sqlite":
            from ..store import open_store

            upstream = open_store()
        store = RunFolderStore(run_dir, entry, tdict["id"], upstream)
        session, location = entry["path"], args.location or run.get("location", "server")
    else:
        from ..store import open_store

        store = open_store()
        tdict = store.get_task(args.task_id)
        session, location = args.session, args.location or "server"
    tdict, _ = run_alyx_task(tdict=tdict, session_path=session, one=store,
                             machine=socket.gethostname(), location=location)
    code = exit_code(tdict["status"])
    if hasattr(store, "finish"):
        store.finish(tdict["status"], code)
    _logger.info("task %s ended %s (exit %d)", tdict["name"], tdict["status"], code)
    return code
