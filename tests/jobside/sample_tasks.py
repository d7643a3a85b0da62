"""Tasks and pipelines the job-side tests submit (imported by dotted path inside SLURM jobs:
the job processes need ``PYTHONPATH`` to hold the repository)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path

from hpcpipe.pipeline import Pipeline
from hpcpipe.task import Task


class LongSleep(Task):
    """Sleeps ``seconds`` (argument, default 300): scancel, kill -9 and signal tests."""

    cpu = 1
    ram = 0.25
    time_out_secs = 1200
    io_charge = 0
    priority = 100

    def _run(self, overwrite=False):
        logging.getLogger(__name__).info("sleeping in pid %d", os.getpid())
        time.sleep(float(self.kwargs.get("seconds", 300)))
        return []


class TooSlow(LongSleep):
    """Asks for 60 s (``--time=1``) and sleeps 300 s: SLURM's time limit stops it."""

    time_out_secs = 60


class MemoryHog(Task):
    """Asks for 0.1 GB (``--mem=103M``) and fills 800 MB, 40 MB at a time."""

    cpu = 1
    ram = 0.1
    time_out_secs = 600
    io_charge = 0
    priority = 100

    def _run(self, overwrite=False):
        keep = []
        for _ in range(20):
            keep.append(bytearray(40 * 2**20))
            keep[-1][::4096] = b"x" * len(keep[-1][::4096])
            time.sleep(0.2)
        time.sleep(60)
        return []


class AfterHog(Task):
    """Child of MemoryHog: never runs, since its parent fails."""

    ram = 0.1
    time_out_secs = 600
    io_charge = 0

    def _run(self, overwrite=False):
        return []


class WhoAmI(Task):
    """Writes which array element processed which session (``whoami.json``)."""

    ram = 0.25
    time_out_secs = 600
    io_charge = 0
    signature = {"input_files": [], "output_files": [("whoami.json", "", True)]}

    def _run(self, overwrite=False):
        out = Path(self.session_path) / "whoami.json"
        out.write_text(json.dumps({"session": str(self.session_path),
                                   "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
                                   "job_id": os.environ.get("SLURM_JOB_ID")}))
        return [out]


def _pipeline(name: str, *classes) -> type[Pipeline]:
    def __init__(self, session_path=None, **kwargs):
        Pipeline.__init__(self, session_path, **kwargs)
        tasks: OrderedDict = OrderedDict()
        previous = None
        for cls, chained in classes:
            task = cls(self.session_path, parents=[previous] if chained and previous else None)
            tasks[task.name] = task
            previous = task
        self.tasks = tasks

    return type(name, (Pipeline,), {"__init__": __init__, "__module__": __name__})


Sleepy = _pipeline("Sleepy", (LongSleep, False))
Slow = _pipeline("Slow", (TooSlow, False))
Hog = _pipeline("Hog", (MemoryHog, False), (AfterHog, True))
Who = _pipeline("Who", (WhoAmI, False))


#: modules a job side should load only for a task that needs them (scripts/bench/jobside.py)
HEAVY = ("numpy", "requests", "boto3", "paramiko", "sqlite3", "filelock", "pandas", "ibllib", "one")


class Stamp(Task):
    """For scripts/bench/jobside.py: writes when ``_run`` started and ended (``alf/_bench_qc.metrics.json``), and
    registers one small output."""

    ram = 1  # Alyx stores whole GB
    time_out_secs = 600
    io_charge = 0
    signature = {"input_files": [], "output_files": [("_bench_qc.metrics.json", "alf", True)]}

    def _run(self, overwrite=False):
        start = time.time()
        out = Path(self.session_path) / "alf" / "_bench_qc.metrics.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"start": start, "modules": sorted(
            m for m in HEAVY if m in sys.modules)}))
        data = json.loads(out.read_text())
        data["end"] = time.time()
        out.write_text(json.dumps(data))
        return [out]


Bench = _pipeline("Bench", (Stamp, False))
