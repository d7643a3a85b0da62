"""Session folders: ``<root>/[<lab>/Subjects/]<subject>/<YYYY-MM-DD>/<NNN>``.

Parsing lives here once, for the stores (which need ``subject/date/number`` to find an Alyx
session or to register files) and for the CLI (which must refuse a bad path before anything).
"""
from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import BadInput

_SESSION_RE = re.compile(
    r"(?:^|/)(?:(?P<lab>\w+)/Subjects/)?(?P<subject>[\w-]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<number>\d{1,3})/?$")


@dataclass(frozen=True)
class SessionRef:
    """The parts of a session path that identify it."""

    path: Path
    subject: str
    date: str
    number: int
    lab: str | None = None

    @property
    def short(self) -> str:
        """Alyx's ``subject/YYYY-MM-DD/NNN`` form (``register-file`` wants this)."""
        return f"{self.subject}/{self.date}/{self.number:03d}"


@lru_cache(maxsize=65536)
def _parse(path: str) -> SessionRef | None:
    """Resolve and match once per path per process: a backfill parses each session path twice."""
    raw = Path(path)
    resolved = raw.resolve() if raw.exists() else raw.absolute()
    match = _SESSION_RE.search(resolved.as_posix())
    if not match:
        return None
    return SessionRef(resolved, match["subject"], match["date"], int(match["number"]), match["lab"])


def parse_session_path(path: Path | str, must_exist: bool = True) -> SessionRef:
    """Parse and check a session folder; raise ``BadInput`` saying what is wrong with it."""
    raw = Path(path).expanduser()
    if must_exist:
        try:
            is_dir = stat.S_ISDIR(raw.stat().st_mode)
        except FileNotFoundError:
            raise BadInput(f"session path {raw} does not exist") from None
        if not is_dir:
            raise BadInput(f"session path {raw} is not a folder")
    ref = _parse(str(raw))
    if ref is None:
        raise BadInput(f"{raw} is not a session path: expected "
                       "<root>/[<lab>/Subjects/]<subject>/<YYYY-MM-DD>/<NNN>")
    return ref
