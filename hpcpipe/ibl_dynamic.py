"""IBL's dynamic pipeline: the tasks a session's experiment description asks for.

Imports ibllib (only this module does, and only when a session with an
``_ibl_experiment.description.yaml`` is submitted without ``--pipeline``, or this class is named).
"""
from __future__ import annotations

from ibllib.pipes import dynamic_pipeline
from ibllib.pipes.tasks import Pipeline


class DescriptionPipeline(Pipeline):
    """``ibllib.pipes.dynamic_pipeline.make_pipeline`` for one session, as a pipeline class.

    Recorded under ibllib's own graph name (``Pipeline``), so its records are the ones IBL's
    own servers make for the session.
    """

    graph_per_session = True

    def __init__(self, session_path=None, one=None, eid=None, **kwargs):
        built = dynamic_pipeline.make_pipeline(session_path, one=one, eid=eid, **kwargs)
        self.__dict__.update(built.__dict__)

    @property
    def name(self) -> str:
        return "Pipeline"
