"""Exceptions shared by every layer.

One base class so the CLI can turn any expected failure into a one-line message and a
non-zero exit, while programming errors still surface with a traceback.
"""


class HpcpipeError(Exception):
    """Base class for errors that are the user's input or environment, not a bug."""


class BadInput(HpcpipeError, ValueError):
    """The user asked for something invalid (path, pipeline, resource, status name...)."""


class PipelineError(BadInput):
    """The task graph itself is invalid: cycle, missing parent, duplicate name."""


class StoreError(HpcpipeError):
    """The task store refused or failed an operation."""


class NotFound(StoreError, KeyError):
    """A record that was asked for does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep messages readable
        return str(self.args[0]) if self.args else "not found"


class Conflict(StoreError):
    """A record would break a uniqueness rule, e.g. (name, session, arguments) for tasks."""


class Unreachable(StoreError):
    """The store's server could not be reached (after retries): the caller may use the outbox."""


class BackendError(HpcpipeError):
    """A compute backend (local engine, SLURM, SSH transport) failed."""
