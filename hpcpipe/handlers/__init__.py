"""Data handlers: make a Task's input files available where it runs, and its outputs registrable.

``get_data_handler(location, session_path, signature, ...)`` returns one of

=========  ==========================  ===============================================
location   class                       where the data is
=========  ==========================  ===============================================
server     ``ServerDataHandler``       this file system (lab server)
local      ``LocalDataHandler``        this file system (workstation)
remote     ``RemoteHttpDataHandler``   an HTTP(S) data server (Alyx dataset records)
SDSC       ``SDSCDataHandler``         a read-only store with UUID-named files
AWS        ``RemoteAwsDataHandler``    an S3 bucket
=========  ==========================  ===============================================

Handler modules are imported on demand, so importing this package pulls in neither
``requests`` nor ``boto3`` (the job side's start-up time matters). See docs/HANDLERS.md.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import BadInput
from ..settings import Settings
from .base import DataHandler, DataHandlerError, DownloadError, MissingInputs, session_parts, strip_uuid

#: location (lower-case) -> (module, class)
HANDLERS: dict[str, tuple[str, str]] = {
    "server": ("server", "ServerDataHandler"),
    "local": ("server", "LocalDataHandler"),
    "remote": ("remote", "RemoteHttpDataHandler"),
    "sdsc": ("sdsc", "SDSCDataHandler"),
    "aws": ("aws", "RemoteAwsDataHandler"),
}
#: the spelling ibllib uses for each location
LOCATIONS = ("server", "local", "remote", "SDSC", "AWS")

__all__ = ["DataHandler", "DataHandlerError", "DownloadError", "MissingInputs", "get_data_handler",
           "handler_class", "session_parts", "strip_uuid", "LOCATIONS",
           "ServerDataHandler", "LocalDataHandler", "RemoteHttpDataHandler", "SDSCDataHandler",
           "RemoteAwsDataHandler"]


def handler_class(location: str) -> type[DataHandler]:
    """The handler class for a location name (case-insensitive), or ``BadInput`` listing valid ones."""
    try:
        module, name = HANDLERS[str(location).lower()]
    except KeyError:
        raise BadInput(f"unknown data location {location!r}; valid locations: {', '.join(LOCATIONS)}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def get_data_handler(location: str, session_path: str | os.PathLike, signature: dict | None,
                     one: Any = None, datasets: list[dict] | None = None, settings: Settings | None = None,
                     **options: Any) -> DataHandler:
    """Build the data handler for ``location`` (ibllib's factory, with hpcpipe's locations).

    ``datasets`` (Alyx ``/datasets`` records of the session) is what the ``remote`` handler
    downloads from; the other handlers ignore it. ``options`` override the config file's
    ``[remote]``, ``[sdsc]`` or ``[aws]`` settings (``settings``, default ``settings.current()``)
    for this handler only.
    """
    cls = handler_class(location)
    if datasets is not None and str(location).lower() == "remote":
        options["datasets"] = datasets
    return cls(session_path, signature, one=one, settings=settings, **options)


def __getattr__(name: str) -> Any:  # lazy access to the handler classes
    for module, cls in HANDLERS.values():
        if cls == name:
            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
