"""A 6-task pipeline for the submission benchmarks (tasks never run: jobs are submitted held)."""
from __future__ import annotations

from collections import OrderedDict

from hpcpipe.pipeline import Pipeline
from hpcpipe.task import Task


class _Bench(Task):
    cpu = 1
    ram = 1
    time_out_secs = 600

    def _run(self, overwrite=False):
        return []


def _cls(name: str) -> type:
    return type(name, (_Bench,), {"__module__": __name__})


Raw, Sync, Spikes, Trials, QC, Summary = (_cls(n) for n in ("Raw", "Sync", "Spikes", "Trials", "QC", "Summary"))


class SixTasks(Pipeline):
    """Raw -> (Sync -> Trials), (Spikes); (Trials, Spikes) -> QC -> Summary."""

    _name = "bench6"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        raw = Raw(self.session_path)
        sync = Sync(self.session_path, parents=[raw])
        spikes = Spikes(self.session_path, parents=[raw])
        trials = Trials(self.session_path, parents=[sync])
        qc = QC(self.session_path, parents=[trials, spikes])
        self.tasks = OrderedDict((t.name, t) for t in (raw, sync, spikes, trials, qc, Summary(self.session_path, parents=[qc])))
