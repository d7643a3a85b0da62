"""The data-handler interface and the helpers every handler shares.

A Task does not know where its session's files live: on this disk (``server``), behind an
HTTP data server (``remote``), on a read-only store whose file names carry dataset UUIDs
(``SDSC``) or in an S3 bucket (``AWS``). It asks a data handler, with ibllib's method names, to

* ``setUp()``: make the signature's input files available under ``handler.session_path``
  (which the Task must then use: the SDSC handler moves it to a scratch copy);
* ``uploadData(outputs, version)``: put the outputs where they must be registered and return
  the files to register (paths under ``handler.session_path``; ``handler.relative(files)``
  gives the session-relative names Alyx's ``register-file`` wants);
* ``cleanUp()``: remove what ``setUp`` made that must not outlive the task.

Handlers only depend on ``signature``, ``settings`` and ``errors`` (never on the Task, store or
Alyx modules): the Task passes what they need (session path, signature, ``one``, datasets).
"""
from __future__ import annotations

import fnmatch
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

from ..errors import BadInput, HpcpipeError
from ..settings import Settings, current
from ..signature import FileSpec, check, parse

log = logging.getLogger("hpcpipe.handlers")

#: A dataset UUID as the central store puts it in file names (before the extension).
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_NAME_UUID_RE = re.compile(r"\.(" + UUID_RE.pattern + r")(?=\.[^.]+$)", re.IGNORECASE)
_SESSION_RE = re.compile(
    r"(?:(?P<lab>\w+)/Subjects/)?(?P<subject>[\w-]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<number>\d{1,3})$")


class DataHandlerError(HpcpipeError):
    """A handler could not make the data available (missing input, failed download...)."""


class MissingInputs(DataHandlerError):
    """Required inputs of the signature are nowhere to be found; the message names them."""

    def __init__(self, missing: Sequence[FileSpec], where: str):
        self.missing = list(missing)
        names = ", ".join(f"{s.pattern!r} in collection {s.collection or '(session root)'!r}"
                          for s in self.missing)
        super().__init__(f"missing required input(s) {names} {where}")


class DownloadError(DataHandlerError):
    """A transfer failed or produced a file whose size or hash is not the expected one."""


@dataclass(frozen=True)
class SessionParts:
    """The ALF identity of a session folder: ``[<lab>/Subjects/]<subject>/<date>/<number>``."""

    lab: str | None
    subject: str
    date: str
    number: str

    @property
    def short(self) -> str:
        """``subject/YYYY-MM-DD/NNN``: the form Alyx's register-file and our S3 keys use."""
        return f"{self.subject}/{self.date}/{self.number}"

    @property
    def relative(self) -> str:
        """The session's path below a data root, lab part included when known."""
        return f"{self.lab}/Subjects/{self.short}" if self.lab else self.short


def session_parts(session_path: str | os.PathLike) -> SessionParts:
    """Split a session path into lab/subject/date/number, refusing non-ALF paths by name."""
    posix = PurePosixPath(Path(session_path).as_posix()).as_posix().rstrip("/")
    m = _SESSION_RE.search(posix)
    if not m or not (m.start() == 0 or posix[m.start() - 1] == "/"):
        raise BadInput(f"{session_path} is not an ALF session path "
                       "([<lab>/Subjects/]<subject>/<YYYY-MM-DD>/<NNN>)")
    return SessionParts(m["lab"], m["subject"], m["date"], m["number"])


def strip_uuid(filename: str) -> str:
    """``spikes.times.<uuid>.npy`` → ``spikes.times.npy``; names without a UUID are unchanged."""
    return _NAME_UUID_RE.sub("", filename)


def spec_matches(spec: FileSpec, relative: str) -> bool:
    """Whether a session-relative posix path is one of ``spec``'s files.

    Matches part by part, so ``*`` never crosses a ``/`` (the same rule as ``Path.glob``, which
    the server handler uses on disk).
    """
    want = [*(spec.collection.split("/") if spec.collection else []), *spec.pattern.split("/")]
    have = relative.strip("/").split("/")
    return len(want) == len(have) and all(fnmatch.fnmatchcase(h, w) for h, w in zip(have, want))


def md5sum(path: str | os.PathLike) -> str:
    """The md5 hex digest of a file (Alyx's dataset ``hash``); the same helper registration uses."""
    from ..files import md5

    return md5(Path(path))  # type: ignore[return-value]  # no max_size: always a digest


def link_or_copy(src: Path, dst: Path) -> str:
    """Make ``dst`` the same content as ``src``: a hard link when possible, else a copy.

    Written under a temporary name then renamed, so a reader never sees a half-copied file.
    Returns ``"link"`` or ``"copy"`` (tests and logs use it).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        how = "link"
    except OSError:  # other file system, or links not allowed
        shutil.copyfile(src, tmp)
        how = "copy"
    os.replace(tmp, dst)
    return how


def flatten_outputs(outputs: Any) -> list[Path]:
    """ibllib tasks return a path, a list of paths, or nested lists with ``None``: flatten."""
    if outputs is None:
        return []
    if isinstance(outputs, (str, os.PathLike)):
        return [Path(outputs)]
    flat: list[Path] = []
    for item in outputs:
        flat.extend(flatten_outputs(item))
    return flat


class DataHandler:
    """Base class: keeps the session, signature and options, and checks inputs on disk.

    ``options`` are handler settings given by the caller; each handler documents the keys it
    reads and falls back to ``settings`` (its section of them) for each one: a job's come from
    its ``run.json``; without any, the active ones (``settings.current()``), for a handler that
    an ibllib user builds directly.
    """

    #: the name ``get_data_handler`` knows this handler by
    location: str = ""

    def __init__(self, session_path: str | os.PathLike, signature: dict | None,
                 one: Any = None, settings: Settings | None = None, **options: Any):
        self.settings = settings or current()
        self.signature = dict(signature or {})
        self.input_specs: list[FileSpec] = parse(self.signature.get("input_files"))
        self.output_specs: list[FileSpec] = parse(self.signature.get("output_files"))
        self.one = one
        self.options = options
        self._session_path = Path(session_path)
        #: the session as given (as the store knows it), even when the task works elsewhere
        self.original_session_path = Path(session_path)

    @property
    def session_path(self) -> Path:
        """The folder the Task must read its inputs from and write its outputs to."""
        return self._session_path

    def __repr__(self) -> str:  # never shows options: they may hold passwords
        return f"<{type(self).__name__} {self.location} {self.session_path}>"

    # -------------------------------------------------------------- interface
    def setUp(self, **kwargs: Any) -> bool:
        """Make the inputs available locally. Base: they must already be there."""
        self.check_inputs()
        return True

    def uploadData(self, outputs: Any, version: str | None = None, **kwargs: Any) -> list[Path]:
        """Put the outputs where they must be registered; return the files to register."""
        return self.outputs_in_session(outputs)

    def cleanUp(self, **kwargs: Any) -> None:
        """Remove what ``setUp`` created that must not outlive the task. Base: nothing."""

    # -------------------------------------------------------------- helpers
    def check_inputs(self, where: str | None = None) -> list[Path]:
        """Raise ``MissingInputs`` naming every required input absent from the session."""
        ok, found, missing = check(self.session_path, self.input_specs)
        if not ok:
            raise MissingInputs(missing, where or f"in {self.session_path}")
        return found

    def outputs_in_session(self, outputs: Any) -> list[Path]:
        """The outputs as absolute paths, refusing any outside ``session_path`` (not registrable)."""
        files = []
        root = self.session_path.resolve()
        for path in flatten_outputs(outputs):
            path = path if path.is_absolute() else self.session_path / path
            try:
                path.parent.resolve().relative_to(root)
            except ValueError:
                raise BadInput(f"output {path} is not inside the session folder {self.session_path}") from None
            files.append(path)
        return files

    def relative(self, files: Iterable[str | os.PathLike]) -> list[str]:
        """Session-relative posix names of files under ``session_path`` (for register-file)."""
        root = self.session_path.resolve()
        out = []
        for f in files:
            p = Path(f) if Path(f).is_absolute() else self.session_path / f
            out.append(p.parent.resolve().joinpath(p.name).relative_to(root).as_posix())
        return out

    def option(self, section: str, key: str) -> Any:
        """An option given to the constructor, else the setting ``[section] key``."""
        if self.options.get(key) is not None:
            return self.options[key]
        return getattr(getattr(self.settings, section), key)
