"""``server`` / ``local``: the session is already on this machine's file system.

Nothing is downloaded or copied. ``setUp`` only checks that every required input of the
signature is present, so a task fails early with a message naming the missing pattern and
collection instead of deep inside ``_run``; outputs are registered where the task wrote them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import DataHandler


class ServerDataHandler(DataHandler):
    """Lab servers: data on local disk, registered in place."""

    location = "server"

    def setUp(self, **kwargs: Any) -> bool:
        """Check the required inputs exist under ``session_path`` (raises ``MissingInputs``)."""
        self.check_inputs()
        return True

    def uploadData(self, outputs: Any, version: str | None = None, **kwargs: Any) -> list[Path]:
        """Nothing to move: the outputs (flattened to a list of paths) are registered as they are."""
        return self.outputs_in_session(outputs)


class LocalDataHandler(ServerDataHandler):
    """A laptop or workstation: same behaviour as ``server``, under its own name."""

    location = "local"
