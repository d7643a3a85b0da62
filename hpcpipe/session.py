"""Session folders: ``<root>/[<lab>/Subjects/]<subject>/<YYYY-MM-DD>/<NNN>``.

Parsing lives here once, for the stores (which need ``subject/date/number`` to find an Alyx
session or to register files) and for the CLI (which must refuse a bad path before anything).
"""
from __future__ import annotations

import os
import re
import stat
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable, NamedTuple

from .errors import BadInput

_SESSION_RE = re.compile(
    r"(?:^|/)(?:(?P<lab>\w+)/Subjects/)?(?P<subject>[\w-]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<number>\d{1,3})/?$")


class SessionRef(NamedTuple):
    """The parts of a session path that identify it (a named tuple: a backfill makes 10,000,
    and a frozen dataclass costs several times more to build)."""

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
    ref = _parse(str(raw.absolute()))  # cached per absolute path: a relative one depends on the cwd
    if ref is None:
        raise _not_a_session(raw)
    return ref


def _not_a_session(raw: object) -> BadInput:
    return BadInput(f"{raw} is not a session path: expected "
                    "<root>/[<lab>/Subjects/]<subject>/<YYYY-MM-DD>/<NNN>")


def parse_session_paths(paths: Iterable[Path | str | SessionRef]) -> list[SessionRef]:
    """Check and parse many session folders in one pass (a backfill's thousands), in order,
    duplicates (after resolving) dropped; ``BadInput`` names the first bad one. A
    ``SessionRef`` (already checked) is kept as it is.

    Same answer as ``parse_session_path`` for each, at a fraction of the cost. On Linux the
    kernel resolves each path in one go: the folder is opened with ``O_PATH`` (no read, just
    the lookup, which fails for a missing path or a file) and its real path read back from
    ``/proc/self/fd``, three system calls and no Python per path component. Elsewhere, folders
    shared by sessions (root, lab, subject, date) are resolved once, so a session costs an
    ``lstat`` or two, not a ``realpath`` walking every component of its path.
    """
    resolve = _resolve_by_fd if _BY_FD else _resolve_by_lstat
    real: dict[str, str] = {}
    seen: dict[str, SessionRef] = {}
    for path in paths:
        if isinstance(path, SessionRef):
            seen.setdefault(str(path.path), path)
            continue
        text = os.path.expanduser(os.fspath(path))
        resolved = resolve(text, real)
        if resolved in seen:
            continue
        found = _SESSION_RE.search(resolved)
        if not found:
            raise _not_a_session(text)
        seen[resolved] = SessionRef(Path(resolved), found["subject"], found["date"], int(found["number"]),
                                    found["lab"])
    return list(seen.values())


#: Linux: a folder's real path from an ``O_PATH`` descriptor (``parse_session_paths``)
_BY_FD = hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")


def _resolve_by_fd(text: str, real: dict[str, str]) -> str:
    try:
        fd = os.open(text, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadInput(f"session path {text} does not exist") from None
    except NotADirectoryError:  # the path, or a folder on its way, is a file
        raise BadInput(f"session path {text} " + ("is not a folder" if os.path.exists(text) else "does not exist")) \
            from None
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _resolve_by_lstat(text: str, real: dict[str, str]) -> str:
    full = text if text[:1] == "/" and "//" not in text and "/." not in text and text[-1:] != "/" \
        else os.path.abspath(text)
    head, _, tail = full.rpartition("/")
    head = head or "/"
    try:
        resolved = _join(_real_dir(head, real), tail)
        st = os.lstat(resolved)
        if stat.S_ISLNK(st.st_mode):
            resolved, st = os.path.realpath(resolved), os.stat(resolved)
    except (FileNotFoundError, NotADirectoryError):
        raise BadInput(f"session path {text} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"session path {text} is not a folder")
    return resolved


def _join(folder: str, name: str) -> str:
    return f"{folder}{name}" if folder.endswith("/") else f"{folder}/{name}"


def _real_dir(folder: str, real: dict[str, str]) -> str:
    """``os.path.realpath(folder)`` (absolute, normalised), remembering every folder resolved."""
    found = real.get(folder)
    if found is None:
        parent, _, name = folder.rpartition("/")
        if not name:
            found = folder
        else:
            parent = parent or "/"
            found = _join(_real_dir(parent, real), name)
            try:
                if stat.S_ISLNK(os.lstat(found).st_mode):
                    found = os.path.realpath(found)
            except FileNotFoundError:
                pass  # reported for the session path itself
        real[folder] = found
    return found


def short_names(paths) -> dict[str, str]:
    """The shortest distinguishing form of each session path: its last three parts
    (``subject/date/number``) when that is unique among ``paths``, else as many more leading
    parts (lab, ``Subjects``, root...) as it takes to tell it from every other one.

    One count of suffixes per extra part, not a comparison of every pair: a status table of a
    10,000-session backfill stays cheap.
    """
    parts = {str(p): Path(str(p)).parts for p in paths if p is not None}
    out: dict[str, str] = {}
    pending = dict(parts)
    n = 3
    while pending:
        counts = Counter(own[-n:] for own in parts.values())
        for key, own in list(pending.items()):
            if n >= len(own) or counts[own[-n:]] == 1:
                out[key] = "/".join(own[-n:]) if n < len(own) else key
                del pending[key]
        n += 1
    return out
