"""The job side's entry point: find the task, run it through ``run_alyx_task``, exit with a code
that tells the scheduler success from failure (so ``afterok`` children run only after success).
"""
from __future__ import annotations

import argparse
import logging
import socket
import sys

EXIT_DONE, EXIT_FAILED, EXIT_RETRY = 0, 1, 75
#: a Waiting status after the run means the GPU lock was held: try again later (EX_TEMPFAIL)
EXIT_CODES = {"Complete": EXIT_DONE, "Incomplete": EXIT_DONE, "Waiting": EXIT_RETRY}


def exit_code(status: str) -> int:
    """Process exit code for a final task status."""
    return EXIT_CODES.get(status, EXIT_FAILED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcpipe.jobside", description=__doc__)
    parser.add_argument("--task-id", required=True)
    parser.add_argument("--session", help="session folder (default: as the store knows it)")
    parser.add_argument("--location", default="server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..pipeline import run_alyx_task
    from ..store import open_store

    store = open_store()
    tdict = store.get_task(args.task_id)
    tdict, _ = run_alyx_task(tdict=tdict, session_path=args.session, one=store,
                             machine=socket.gethostname(), location=args.location)
    logging.getLogger(__name__).info("task %s ended %s", tdict["name"], tdict["status"])
    return exit_code(tdict["status"])
