"""Map session paths between the workstation and the cluster by prefix rules.

``PathMap({"/mnt/lab/Subjects": "/cluster/lab/Subjects"})``: the longest matching prefix
wins, matched component by component (``/mnt/lab/Subjects2`` does not match
``/mnt/lab/Subjects``). A path no rule covers is ``BadInput`` -- raised before anything is
sent to the cluster. ``{"/": "/"}`` maps every absolute path to itself (same mounts on both
sides). Paths are normalised first (``..`` resolved lexically), so ``/mnt/lab/Subjects/../x``
is ``/mnt/lab/x`` and is not covered by the rule above.
"""
from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping

from ..errors import BadInput


def _norm(path: str | os.PathLike, what: str, local: bool = False) -> str:
    p = os.fspath(path)
    if not isinstance(p, str) or not p:
        raise BadInput(f"empty {what} path")
    if "\0" in p:
        raise BadInput(f"{what} path contains a NUL byte: {p!r}")
    if local and not p.startswith("/"):
        p = os.path.abspath(p)  # a workstation path relative to the current folder
    if not p.startswith("/"):
        raise BadInput(f"{what} path must be absolute: {p}")
    p = posixpath.normpath(p)
    if p.startswith("//"):  # POSIX keeps a leading double slash; we do not need it
        p = "/" + p.lstrip("/")
    return p


def _under(path: str, prefix: str) -> str | None:
    """The rest of ``path`` below ``prefix`` ('' for the prefix itself), or None."""
    if prefix == "/":
        return path.lstrip("/")
    if path == prefix:
        return ""
    if path.startswith(prefix + "/"):
        return path[len(prefix) + 1:]
    return None


class PathMap:
    """Prefix rules ``{workstation prefix: cluster prefix}``, applied both ways."""

    def __init__(self, rules: Mapping[str, str] | None = None, name: str = ""):
        self.name = name
        self.rules: dict[str, str] = {}
        for local, remote in (rules or {}).items():
            self.rules[_norm(local, "path_map")] = _norm(remote, "path_map")
        self._fwd = sorted(self.rules.items(), key=lambda kv: -len(kv[0]))
        self._back = sorted(((r, l) for l, r in self.rules.items()), key=lambda kv: -len(kv[0]))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __repr__(self) -> str:
        return f"PathMap({self.rules!r})"

    def _describe(self) -> str:
        if not self.rules:
            return "no path_map is configured"
        return "configured prefixes: " + ", ".join(f"{l} -> {r}" for l, r in self.rules.items())

    @staticmethod
    def _apply(path: str, table: list[tuple[str, str]]) -> str | None:
        for src, dst in table:
            rest = _under(path, src)
            if rest is not None:
                return posixpath.join(dst, rest) if rest else dst
        return None

    def to_remote(self, path: str | os.PathLike) -> str:
        """The cluster path for a workstation path; ``BadInput`` when no rule covers it."""
        p = _norm(path, "session", local=True)
        out = self._apply(p, self._fwd)
        if out is None:
            where = f" for cluster {self.name!r}" if self.name else ""
            raise BadInput(f"{p} has no mapping to the cluster{where}: {self._describe()} "
                           f"(add a rule to path_map in the cluster's config)")
        return out

    def to_local(self, path: str | os.PathLike) -> str:
        """The workstation path for a cluster path; ``BadInput`` when no rule covers it."""
        p = _norm(path, "cluster")
        out = self._apply(p, self._back)
        if out is None:
            where = f" of {self.name!r}" if self.name else ""
            raise BadInput(f"cluster path {p}{where} has no mapping back to this workstation: "
                           f"{self._describe()}")
        return out

    def covers(self, path: str | os.PathLike) -> bool:
        try:
            self.to_remote(path)
            return True
        except BadInput:
            return False
