"""Task signatures: which files a task reads and writes, and finding them in a session.

A signature entry is ``(pattern, collection, required)``: ``pattern`` a glob on the file name,
``collection`` the folder inside the session (may itself hold ``*``; ``''`` or None is the
session root), ``required`` a bool. Shared by ``Task.assert_expected_*`` and the data handlers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .errors import BadInput


@dataclass(frozen=True)
class FileSpec:
    """One signature entry."""

    pattern: str
    collection: str
    required: bool

    @property
    def glob(self) -> str:
        """The glob relative to the session folder."""
        return f"{self.collection}/{self.pattern}" if self.collection else self.pattern

    def find(self, session_path: Path) -> list[Path]:
        """Files of this entry present under ``session_path`` (sorted)."""
        return sorted(p for p in Path(session_path).glob(self.glob) if p.is_file())


def parse(entries: Iterable[Sequence] | None) -> list[FileSpec]:
    """Turn signature tuples into ``FileSpec`` objects, refusing malformed entries by name."""
    specs = []
    for entry in entries or []:
        if isinstance(entry, FileSpec):
            specs.append(entry)
            continue
        if isinstance(entry, str):
            entry = (entry, "", True)
        if not 2 <= len(entry) <= 3:
            raise BadInput(f"signature entry {entry!r} must be (pattern, collection, required)")
        collection = entry[1] or ""
        required = bool(entry[2]) if len(entry) == 3 else True
        # ibllib allows a list of patterns sharing one collection: one spec per pattern
        patterns = list(entry[0]) if isinstance(entry[0], (list, tuple)) else [entry[0]]
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise BadInput(f"signature entry {entry!r} has no file pattern")
            specs.append(FileSpec(pattern, collection.strip("/"), required))
    return specs


def check(session_path: Path, entries: Iterable[Sequence] | None) -> tuple[bool, list[Path], list[FileSpec]]:
    """Look for every entry in the session.

    Returns ``(all_required_present, files_found, missing_required_specs)``.
    """
    found: list[Path] = []
    missing: list[FileSpec] = []
    for spec in parse(entries):
        files = spec.find(Path(session_path))
        found.extend(files)
        if spec.required and not files:
            missing.append(spec)
    return not missing, found, missing
