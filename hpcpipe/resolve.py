"""Which pipeline a session runs when ``--pipeline`` is not given.

The order, first answer wins (docs/PIPELINES.md):

1. a rule in config: ``[submit] rules = [{glob = "*/Subjects/ZM_*/*/*", pipeline = "NAME"}]``
   (``fnmatch`` on the session's full path, first match), then ``[submit] pipeline = "NAME"``;
2. IBL's experiment description in the session (``_ibl_experiment.description.yaml``): IBL's
   dynamic pipeline, built by ``ibllib.pipes.dynamic_pipeline`` (``hpcpipe.ibl_dynamic``);
   without ibllib installed, a one-line error naming the package;
3. the graph already recorded for the session, when it has exactly one that names a known
   pipeline (a registered name, or the graph name of a registered pipeline class);
4. the only registered pipeline (hpcpipe's own ``demo`` does not count).

Nothing here writes: resolution happens before anything is recorded.
"""
from __future__ import annotations

import importlib.util
from fnmatch import fnmatch
from pathlib import Path

from .errors import BadInput, NotFound
from .pipelines import registered
from .settings import Settings

DESCRIPTION = "_ibl_experiment.description.yaml"
#: the pipeline an experiment description stands for (a dotted path: no entry point, so it
#: never counts as "the only registered pipeline")
DYNAMIC = "hpcpipe.ibl_dynamic.DescriptionPipeline"
#: the graph name ibllib records for its dynamic pipeline
DYNAMIC_GRAPH = "Pipeline"
_OWN = {"demo"}


def _rule(session: Path, settings: Settings) -> str | None:
    for rule in settings.submit.rules:
        if not isinstance(rule, dict) or not {"glob", "pipeline"} <= rule.keys():
            raise BadInput(f"[submit] rules: each rule needs glob and pipeline, got {rule!r}")
        if fnmatch(str(session), rule["glob"]):
            return rule["pipeline"]
    return settings.submit.pipeline


def _description(session: Path) -> str | None:
    if not (session / DESCRIPTION).is_file():
        return None
    if importlib.util.find_spec("ibllib") is None:
        raise BadInput(f"{session} has an experiment description ({DESCRIPTION}); its pipeline is built by "
                       "ibllib, which is not installed: pip install ibllib (or pass --pipeline)")
    return DYNAMIC


def _recorded(session: Path, store) -> str | None:
    try:
        graphs = {t["graph"] for t in store.list_tasks(session=store.session_id(session)) if t["graph"]}
    except NotFound:
        return None
    if len(graphs) != 1:
        return None
    graph = graphs.pop()
    names = registered()
    if graph in names:
        return graph
    if graph == DYNAMIC_GRAPH and importlib.util.find_spec("ibllib") is not None:
        return DYNAMIC
    from .pipelines import find_pipeline

    for name in names:
        cls = find_pipeline(name)
        if (getattr(cls, "_name", None) or cls.__name__) == graph:
            return name
    return None


def _only_registered() -> str | None:
    names = sorted(set(registered()) - _OWN)
    return names[0] if len(names) == 1 else None


def resolve_pipeline(session: Path, store, settings: Settings, given: str | None = None) -> str:
    """The pipeline name for ``session``: ``given`` (``--pipeline``), else the documented order
    (the rules of ``settings``)."""
    if given:
        return given
    session = Path(session)
    for step in (lambda: _rule(session, settings), lambda: _description(session), lambda: _recorded(session, store),
                 _only_registered):
        found = step()
        if found:
            return found
    known = ", ".join(sorted(registered())) or "none"
    raise BadInput(f"no pipeline for {session}: pass --pipeline NAME (registered: {known}), set [submit] pipeline "
                   f"or [submit] rules in the config, or put an {DESCRIPTION} in the session")
