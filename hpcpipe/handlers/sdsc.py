"""``SDSC``: data read in place from the central store, where names carry dataset UUIDs.

On the Flatiron/SDSC store every file is ``<name>.<uuid>.<ext>`` and the store is mounted
read-only, so a task can neither find its inputs under their ALF names nor write next to
them. ``setUp`` therefore builds a scratch copy of the session made of symbolic links:

    <scratch_dir>/<task id or "task">-<random>/[<lab>/Subjects/]<subject>/<date>/<number>/
        alf/spikes.times.npy -> <store>/.../alf/spikes.times.<uuid>.npy

and switches ``handler.session_path`` to it: **the Task must read and write there** (ibllib's
SDSC handler does the same by changing ``task.session_path``). The store path stays available
as ``handler.store_session_path``. ``uploadData`` returns the outputs in the scratch session for
registration and, when ``[sdsc] output_dir`` is set, first copies them to
``<output_dir>/[<lab>/Subjects/]<subject>/<date>/<number>/...`` so they outlive the scratch
folder (copies listed in ``handler.uploaded``). ``cleanUp`` removes the scratch folder this
handler made, and only that: links are removed, never their targets.

Options (constructor keyword, else ``[sdsc]`` in the config file): ``scratch_dir`` (default
``<hpcpipe home>/sdsc_scratch``), ``output_dir`` (default none: outputs only in scratch).
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..signature import FileSpec
from .base import DataHandler, DataHandlerError, MissingInputs, log, session_parts, strip_uuid


class SDSCDataHandler(DataHandler):
    """Inputs linked from a read-only, UUID-named store into a scratch session folder."""

    location = "SDSC"

    def __init__(self, session_path: str | os.PathLike, signature: dict | None, one: Any = None,
                 **options: Any):
        super().__init__(session_path, signature, one=one, **options)
        self.store_session_path = Path(session_path)
        self.parts = session_parts(self.store_session_path)
        #: the folder ``setUp`` created under ``scratch_dir`` (removed by ``cleanUp``)
        self.scratch_root: Path | None = None
        self.scratch_session_path: Path | None = None
        #: output file in scratch -> its copy under ``output_dir``
        self.uploaded: dict[Path, Path] = {}

    @property
    def session_path(self) -> Path:
        """The scratch session after ``setUp`` (where the Task must work), else the store's."""
        return self.scratch_session_path or self.store_session_path

    @property
    def scratch_dir(self) -> Path:
        return Path(self.option("sdsc", "scratch_dir") or self.settings.home_dir() / "sdsc_scratch").expanduser()

    # -------------------------------------------------------------- interface
    def setUp(self, task_id: str | None = None, **kwargs: Any) -> bool:
        """Link every input file of the signature into a new scratch session, without UUIDs."""
        if self.scratch_session_path is not None:
            return True
        if not self.store_session_path.is_dir():
            raise DataHandlerError(f"session folder {self.store_session_path} does not exist on the store")
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f"{task_id or 'task'}-", dir=self.scratch_dir))
        self.scratch_root = root
        session = root / self.parts.relative
        session.mkdir(parents=True)
        try:
            missing: list[FileSpec] = []
            linked: dict[Path, Path] = {}
            for spec in self.input_specs:
                found = False
                for src, rel in self._store_files(spec):
                    found = True
                    link = session / rel
                    if link in linked:
                        if linked[link] != src:
                            raise DataHandlerError(f"both {linked[link].name} and {src.name} in "
                                                   f"{src.parent} would be linked as {rel}")
                        continue
                    link.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(src, link)
                    linked[link] = src
                if spec.required and not found:
                    missing.append(spec)
            if missing:
                raise MissingInputs(missing, f"in the store session {self.store_session_path}")
        except BaseException:
            self.cleanUp()
            raise
        self.scratch_session_path = session
        log.info("SDSC: %d inputs linked into %s", len(linked), session)
        return True

    def uploadData(self, outputs: Any, version: str | None = None, **kwargs: Any) -> list[Path]:
        """Return the outputs (in scratch) to register, copied to ``output_dir`` first if set."""
        files = self.outputs_in_session(outputs)
        output_dir = self.option("sdsc", "output_dir")
        if output_dir:
            dest_session = Path(output_dir).expanduser() / self.parts.relative
            for file, rel in zip(files, self.relative(files)):
                dest = dest_session / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
                shutil.copyfile(file, tmp)  # follows links: a re-registered input is copied
                os.replace(tmp, dest)
                self.uploaded[file] = dest
        elif files:
            log.info("SDSC: no [sdsc] output_dir; %d outputs exist only in %s until cleanUp",
                     len(files), self.session_path)
        return files

    def cleanUp(self, **kwargs: Any) -> None:
        """Remove the scratch folder made by ``setUp`` (links only, never the store's files)."""
        root, self.scratch_root, self.scratch_session_path = self.scratch_root, None, None
        if root is None or not root.exists():
            return
        if root.parent.resolve() != self.scratch_dir.resolve():  # paranoia: only what we made
            raise DataHandlerError(f"refusing to remove {root}: not a folder made under {self.scratch_dir}")
        shutil.rmtree(root)  # rmtree unlinks symlinks, it does not follow them

    # -------------------------------------------------------------- helpers
    def _store_files(self, spec: FileSpec) -> Iterator[tuple[Path, str]]:
        """``(store file, session-relative name without UUID)`` for each file of ``spec``."""
        store = self.store_session_path
        folders = [store] if not spec.collection else sorted(d for d in store.glob(spec.collection) if d.is_dir())
        for folder in folders:
            for src in sorted(folder.iterdir()):
                name = strip_uuid(src.name)
                if src.is_file() and fnmatch.fnmatchcase(name, spec.pattern):
                    rel = (folder.relative_to(store) / name).as_posix()
                    yield Path(os.path.abspath(src)), rel
