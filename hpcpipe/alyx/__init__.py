"""Alyx: the REST client (``AlyxClient``), credentials (``params``) and registration helpers.

The task store over Alyx is ``hpcpipe.store.alyx.AlyxStore``; see docs/ALYX.md.
"""
from .client import (
                     AlyxAuthError,
                     AlyxBadInput,
                     AlyxClient,
                     AlyxConflict,
                     AlyxError,
                     AlyxNotFound,
                     AlyxServerError,
                     AlyxUnreachable,
)

__all__ = ["AlyxClient", "AlyxError", "AlyxAuthError", "AlyxBadInput", "AlyxConflict",
           "AlyxNotFound", "AlyxServerError", "AlyxUnreachable"]
