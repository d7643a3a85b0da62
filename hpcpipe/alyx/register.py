"""Dataset registration helpers: file descriptions (sizes, streaming md5s) and the checks
Alyx's ``register-file`` would otherwise fail on, one file at a time and non-atomically.

* ``describe_files(session_path, files, max_md5_size)`` → session-relative names, md5s (None
  above ``max_md5_size`` bytes: hashing a 50 GB raw file is not worth minutes), sizes.
* ``match_dataset_type`` / ``match_data_format`` mirror ``one.registration.get_dataset_type``
  and Alyx's DataFormat lookup, so unknown types are reported *before* the request, by name.
"""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Iterable

from ..errors import BadInput
from ..files import md5

#: ALF file name: [_namespace_]object.attribute[_timescale][.extra...].ext
_ALF_RE = re.compile(r"^(?:_(?P<namespace>[a-zA-Z0-9]+)_)?(?P<object>[a-zA-Z0-9]+)\."
                     r"(?P<attribute>[a-zA-Z0-9]+(?:_times|_intervals)?)(?:_(?P<timescale>[a-zA-Z0-9]+))?"
                     r"(?:\.[^.]+)*\.(?P<extension>[^.]+)$")


def relative_name(session_path: Path | str, file: Path | str) -> str:
    """A file's name relative to the session folder (posix), refusing files outside it."""
    file = Path(file)
    if not file.is_absolute():
        name = file.as_posix()
        while name.startswith("./"):
            name = name[2:]
        if name.startswith("../") or "/../" in name or not name:
            raise BadInput(f"output file {file} is not inside the session folder")
        return name
    root = Path(session_path).expanduser()
    for base in (root, root.resolve()):
        for candidate in (file, file.resolve()):
            try:
                return candidate.relative_to(base).as_posix()
            except ValueError:
                continue
    raise BadInput(f"output file {file} is not inside the session folder {session_path}")


def describe_files(session_path: Path | str, files: Iterable[Path | str],
                   max_md5_size: int | None = None) -> dict:
    """``{"filenames", "hashes", "filesizes"}`` for ``register_files`` (equal-length lists)."""
    names, hashes, sizes = [], [], []
    for f in files:
        path = Path(f) if Path(f).is_absolute() else Path(session_path) / f
        names.append(relative_name(session_path, path))
        sizes.append(path.stat().st_size)
        hashes.append(md5(path, max_md5_size))
    return {"filenames": names, "hashes": hashes, "filesizes": sizes}


def split_filename(relative: str) -> tuple[str, str, str]:
    """``alf/#rev#/x.npy`` → (collection ``alf``, revision ``rev``, name ``x.npy``)."""
    *folders, name = [p for p in relative.split("/") if p]
    revision = ""
    if folders and folders[-1].startswith("#") and folders[-1].endswith("#"):
        revision = folders.pop()[1:-1]
    return "/".join(folders), revision, name


def alf_object_attribute(filename: str) -> str | None:
    """The ALF ``object.attribute`` of a file name (the dataset type's name), or None."""
    m = _ALF_RE.match(filename)
    return f"{m['object']}.{m['attribute']}" if m else None


def match_dataset_type(filename: str, types: Iterable[dict]) -> tuple[str | None, str | None]:
    """``(type name, None)`` or ``(None, reason)`` for a file *name* (no folders).

    A type matches when its ``filename_pattern`` (fnmatch, case-insensitive) matches the name,
    or, with an empty pattern, when its name is the file's ALF ``object.attribute``; exactly one
    must match (as ``one.registration.get_dataset_type``).
    """
    objattr = alf_object_attribute(filename)
    matches = []
    for dtype in types:
        pattern = (dtype.get("filename_pattern") or "").strip()
        if pattern:
            if fnmatch.fnmatch(filename.lower(), pattern.lower()):
                matches.append(dtype["name"])
        elif objattr is not None and dtype.get("name") == objattr:
            matches.append(dtype["name"])
    if len(matches) == 1:
        return matches[0], None
    if not matches:
        hint = f" (create dataset type {objattr!r} on Alyx)" if objattr else \
            " (not an ALF name object.attribute.ext, and no type pattern matches it)"
        return None, f'no dataset type on Alyx matches "{filename}"{hint}'
    return None, f'several dataset types match "{filename}": {", ".join(sorted(matches))}'


def match_data_format(filename: str, formats: Iterable[dict]) -> tuple[str | None, str | None]:
    """``(format name, None)`` or ``(None, reason)``: the unique format with the file's extension."""
    ext = "." + filename.rsplit(".", 1)[1] if "." in filename else ""
    found = [f["name"] for f in formats if ext and f.get("file_extension") == ext]
    if len(found) == 1:
        return found[0], None
    if not found:
        return None, (f'no data format on Alyx has the extension "{ext or "(none)"}" of "{filename}" '
                      "(create one in /data-formats)")
    return None, f'several data formats have the extension "{ext}": {", ".join(sorted(found))}'
