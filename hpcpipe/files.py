"""File helpers shared by registration and the data handlers."""
from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


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
