"""File helpers shared by registration, the data handlers, the run folder and the transports."""
from __future__ import annotations

import hashlib
import itertools
import os
import threading
from pathlib import Path

_CHUNK = 1 << 20
_writes = itertools.count()


def atomic_write(path: Path | str, text: str, mode: int | None = None, fsync: bool = False) -> None:
    """Write ``text`` to ``path`` so that readers see the old content or the new, never a part.

    The one way hpcpipe writes a file others may read meanwhile (result files, run folders,
    scripts, lock records): a temporary file in the same folder (unique per process, thread and
    write, so a signal handler's write never shares one), then ``os.replace``. Parents are
    created; ``mode`` is applied before the rename; ``fsync`` makes it survive a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{next(_writes)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is None else mode)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644 if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def md5(path: Path | str, max_size: int | None = None) -> str | None:
    """MD5 hex digest of a file, read in 1 MiB chunks (memory stays flat for huge files).

    Returns None when ``max_size`` (bytes) is given and the file is larger: hashing a 50 GB raw
    recording would cost minutes that ``max_md5_size`` exists to save.
    """
    path = Path(path)
    if max_size is not None and path.stat().st_size > max_size:
        return None
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
