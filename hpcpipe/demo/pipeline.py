"""The demo pipeline, registered as the ``demo`` entry point of ``hpcpipe.pipelines``."""
from __future__ import annotations

from collections import OrderedDict

from ..pipeline import Pipeline
from . import tasks as t


class DemoPipeline(Pipeline):
    """Five tasks with real parents; one asks for a GPU."""

    _name = "demo"

    def __init__(self, session_path=None, **kwargs) -> None:
        super().__init__(session_path, **kwargs)
        tasks = OrderedDict()
        tasks["DemoSync"] = t.DemoSync(self.session_path)
        tasks["DemoSpikeSorting"] = t.DemoSpikeSorting(self.session_path)
        tasks["DemoTrials"] = t.DemoTrials(self.session_path, parents=[tasks["DemoSync"]])
        tasks["DemoBehaviourQC"] = t.DemoBehaviourQC(self.session_path, parents=[tasks["DemoTrials"]])
        tasks["DemoSummary"] = t.DemoSummary(self.session_path, parents=[tasks["DemoBehaviourQC"],
                                                                         tasks["DemoSpikeSorting"]])
        self.tasks = tasks
