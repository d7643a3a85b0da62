"""Pipelines the packed-execution tests submit (imported by dotted path inside the allocation:
the job steps need ``PYTHONPATH`` to hold the repository)."""
from __future__ import annotations

import time
from collections import OrderedDict

from hpcpipe.pipeline import Pipeline
from hpcpipe.task import Task


class Quick(Task):
    cpu, ram, time_out_secs, priority = 1, 0.25, 600, 100

    def _run(self, overwrite=False):
        return []


class Sleep(Quick):
    """Sleeps long enough to be running when the test cancels or times it out."""

    priority = 50

    def _run(self, overwrite=False):
        time.sleep(300)
        return []


class ShortTimeout(Sleep):
    """``time_out_secs`` of 4 s: the pack's engine stops it (SLURM's --time is whole minutes)."""

    time_out_secs = 4


class After(Quick):
    priority = 10


class SleepPipeline(Pipeline):
    _name = "pack_sleep"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        tasks = OrderedDict()
        tasks["Quick"] = Quick(self.session_path)
        tasks["Sleep"] = Sleep(self.session_path, parents=[tasks["Quick"]])
        tasks["After"] = After(self.session_path, parents=[tasks["Sleep"]])
        self.tasks = tasks


class TimeoutPipeline(Pipeline):
    _name = "pack_timeout"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        tasks = OrderedDict()
        tasks["ShortTimeout"] = ShortTimeout(self.session_path)
        tasks["After"] = After(self.session_path, parents=[tasks["ShortTimeout"]])
        self.tasks = tasks
