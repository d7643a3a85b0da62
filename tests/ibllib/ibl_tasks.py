"""Task and pipeline classes written the ibllib way, for the tests: they subclass the real
``ibllib.pipes.tasks.Task`` and ``Pipeline`` (PyPI ibllib), nothing of hpcpipe.

The job processes import this module by its dotted path (``PYTHONPATH`` holds the repository).
"""
from __future__ import annotations

import os
import sys
from collections import OrderedDict

import numpy as np
from ibllib.pipes.tasks import Pipeline, Task

if os.environ.get("IBL_TEST_BREAK_IMPORT") and "hpcpipe.jobside.run" in sys.modules:
    # a module that imports on the submitting machine but not in the job (a dependency missing there)
    import a_module_missing_on_the_compute_node  # noqa: F401

RAW = ("_iblrig_taskData.raw.jsonable", "raw_behavior_data", True)


class Extract(Task):
    """Reads the raw file, writes one ALF dataset: Complete, dataset registered."""

    cpu = 1
    ram = 1
    time_out_secs = 600
    signature = {"input_files": [RAW], "output_files": [("_ibl_trials.goCue_times.npy", "alf", True)]}

    def _run(self, overwrite=False):
        raw = self.session_path.joinpath("raw_behavior_data", "_iblrig_taskData.raw.jsonable").read_text()
        out = self.session_path.joinpath("alf", "_ibl_trials.goCue_times.npy")
        out.parent.mkdir(exist_ok=True)
        np.save(out, np.arange(len(raw.splitlines()), dtype=float))
        return [out]


class Nothing(Task):
    """Returns None: Empty."""

    ram = 1
    time_out_secs = 600

    def _run(self, overwrite=False):
        return None


class Fails(Task):
    """Raises: Errored, the traceback in its log."""

    ram = 1
    time_out_secs = 600

    def _run(self, overwrite=False):
        raise ValueError("deliberate failure in Fails._run")


class AfterFails(Task):
    """Child of Fails: Held."""

    ram = 1
    time_out_secs = 600

    def _run(self, overwrite=False):
        return []


class CrashesInJob(Task):
    """Its constructor crashes when a job builds it (taskid given), not when the pipeline does."""

    ram = 1
    time_out_secs = 600

    def __init__(self, session_path, taskid=None, **kwargs):
        if taskid is not None:
            raise RuntimeError("deliberate crash in CrashesInJob.__init__")
        super().__init__(session_path, taskid=taskid, **kwargs)

    def _run(self, overwrite=False):
        return []


class Stamp(Task):
    """For scripts/bench/jobside.py: the ibllib twin of ``tests.jobside.sample_tasks.Stamp``."""

    ram = 1
    time_out_secs = 600
    io_charge = 0
    signature = {"input_files": [], "output_files": [("_bench_qc.metrics.json", "alf", True)]}

    def _run(self, overwrite=False):
        import json
        import time

        from tests.jobside.sample_tasks import HEAVY

        start = time.time()
        out = self.session_path / "alf" / "_bench_qc.metrics.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"start": start, "modules": sorted(m for m in HEAVY if m in sys.modules),
                                   "end": time.time()}))
        return [out]


class Bench(Pipeline):
    """One ``Stamp`` (scripts/bench/jobside.py)."""

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        self.tasks = OrderedDict(Stamp=Stamp(self.session_path))


class IblTestPipeline(Pipeline):
    """Extract -> Nothing; Fails -> AfterFails."""

    label = __name__

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        tasks = OrderedDict()
        tasks["Extract"] = Extract(self.session_path)
        tasks["Nothing"] = Nothing(self.session_path, parents=[tasks["Extract"]])
        tasks["Fails"] = Fails(self.session_path)
        tasks["AfterFails"] = AfterFails(self.session_path, parents=[tasks["Fails"]])
        self.tasks = tasks


class CrashPipeline(Pipeline):
    """One task whose constructor crashes in the job, one child."""

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        tasks = OrderedDict()
        tasks["CrashesInJob"] = CrashesInJob(self.session_path)
        tasks["AfterFails"] = AfterFails(self.session_path, parents=[tasks["CrashesInJob"]])
        self.tasks = tasks


def make_ibl_session(root, subject="KS001", date="2024-01-02", number="001"):
    """A session folder with the raw file ``Extract`` reads."""
    path = root / "mylab" / "Subjects" / subject / date / number
    raw = path / "raw_behavior_data" / "_iblrig_taskData.raw.jsonable"
    raw.parent.mkdir(parents=True)
    raw.write_text("\n".join('{"trial_num": %d}' % i for i in range(5)) + "\n")
    return path
