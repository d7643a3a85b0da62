"""Finding pipeline classes: by dotted path, or by name in the ``hpcpipe.pipelines`` entry points.

Labs register their own pipelines in their package's metadata, without editing hpcpipe::

    [project.entry-points."hpcpipe.pipelines"]
    ephys = "mylab.pipelines:EphysPipeline"

A pipeline is a subclass of hpcpipe's ``Pipeline`` or of ``ibllib.pipes.tasks.Pipeline``
(recognised by its class hierarchy, so hpcpipe's own pipelines never import ibllib).
"""
from __future__ import annotations

from functools import lru_cache

from .errors import BadInput
from .ibl import is_ibllib_pipeline
from .pipeline import Pipeline, str2class

GROUP = "hpcpipe.pipelines"


@lru_cache(maxsize=1)
def _entry_points() -> dict:
    """The group's entry points by name, read once per process (it reads every installed
    package's metadata; a backfill asks for its pipeline twice: checks, then planning)."""
    from importlib.metadata import entry_points  # a dotted path needs none of it (find_pipeline)

    return {ep.name: ep for ep in entry_points(group=GROUP)}


def registered() -> dict[str, str]:
    """Registered pipeline names and the object each points to."""
    return {name: ep.value for name, ep in _entry_points().items()}


def is_pipeline_class(cls: object) -> bool:
    """A hpcpipe ``Pipeline`` subclass, or an ``ibllib.pipes.tasks.Pipeline`` subclass."""
    return isinstance(cls, type) and (issubclass(cls, Pipeline) or is_ibllib_pipeline(cls))


def find_pipeline(name: str) -> type:
    """The Pipeline class called ``name``: a ``package.module.Class`` that imports, else the
    entry point of that name.

    A dotted path is imported first: reading the entry points means importing
    ``importlib.metadata`` and every installed package's metadata (about 50 ms of each
    ``hpcpipe backfill``), which a path does not need. An entry point whose name has dots is
    still found when no module of that path imports."""
    if "." in name:
        try:
            cls = str2class(name)
        except BadInput:
            eps = _entry_points()
            if name not in eps:
                raise
            cls = eps[name].load()
    else:
        eps = _entry_points()
        if name not in eps:
            known = ", ".join(sorted(eps)) or "none"
            raise BadInput(f"unknown pipeline {name!r}; registered pipelines: {known} (or give package.module.Class)")
        cls = eps[name].load()
    if not is_pipeline_class(cls):
        raise BadInput(f"{name!r} is {cls!r}, not a pipeline class: subclass hpcpipe.pipeline.Pipeline "
                       "or ibllib.pipes.tasks.Pipeline")
    return cls
