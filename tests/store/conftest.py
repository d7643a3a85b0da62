"""The ``store`` fixture: one TaskStore per backend, each with a registered session.

Every contract test runs once per entry of ``STORE_FACTORIES``. To add a backend (e.g. ``alyx``,
a store talking to the test HTTP server), write a factory with the same shape as
``_sqlite_factory`` and add it to the dict: nothing else changes.

A factory is a generator taking ``(tmp_path, request)`` that yields a ``StoreCase`` and cleans up
after the ``yield``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.alyx_server

from hpcpipe.demo.session import make_session
from hpcpipe.store import SQLiteStore, TaskStore


@dataclass
class StoreCase:
    """What a contract test gets: the store, one registered session, and a way to make more."""

    kind: str
    store: TaskStore
    session_path: Path
    eid: str
    #: ``new_session(subject)`` -> ``(session_path, eid)``: another session known to the store
    new_session: Callable[[str], tuple[Path, str]] = field(repr=False)


def _sqlite_factory(tmp_path: Path, request) -> Iterator[StoreCase]:
    store = SQLiteStore(tmp_path / "store" / "tasks.sqlite")

    def new_session(subject: str) -> tuple[Path, str]:
        path = make_session(tmp_path / "data" / "lab" / "Subjects" / subject / "2024-05-01" / "001")
        return path, store.session_id(path, create=True)

    session_path, eid = new_session("SW001")
    yield StoreCase("sqlite", store, session_path, eid, new_session)
    store.close()


def _alyx_factory(tmp_path: Path, request, kind: str = "hpcpipe") -> Iterator[StoreCase]:
    """An AlyxStore over HTTP on the Alyx test server (tests/alyx_server), reset for each test.

    ``kind='one'``: through users' ``one.api.ONE`` (its REST cache on), so a cached read that
    decides something fails the contract.
    """
    from hpcpipe.store.alyx import AlyxStore
    from tests.alyx_server.fixtures import admin_client, client_for
    from tests.alyx_server.fixtures import make_session as make_alyx_session

    server = request.getfixturevalue("alyx_server")
    request.getfixturevalue("monkeypatch").setenv("HOME", str(tmp_path / "user-home"))  # ONE's ~/.one
    client = admin_client(server)  # sessions are made by the admin, as on a real Alyx
    store = AlyxStore(client_for(kind, server, tmp_path / "one-cache"))

    def new_session(subject: str) -> tuple[Path, str]:
        path, eid = make_alyx_session(client, tmp_path / "data", subject, "2024-05-01", 1,
                                      create_folder=False)
        make_session(path)
        assert store.session_id(path) == eid
        return path, eid

    session_path, eid = new_session("SW001")
    yield StoreCase("alyx" if kind == "hpcpipe" else "alyx-one", store, session_path, eid, new_session)
    store.close()
    client.close()


def _alyx_one_factory(tmp_path: Path, request) -> Iterator[StoreCase]:
    yield from _alyx_factory(tmp_path, request, kind="one")


#: backend name -> factory
STORE_FACTORIES: dict[str, Callable[[Path, object], Iterator[StoreCase]]] = {
    "sqlite": _sqlite_factory,
    "alyx": _alyx_factory,
    "alyx-one": _alyx_one_factory,
}
#: marks per backend (the Alyx one runs against the HTTP test server: ``-m "not alyx"`` skips it)
_MARKS = {"alyx": [pytest.mark.alyx], "alyx-one": [pytest.mark.alyx]}


@pytest.fixture(params=[pytest.param(name, marks=_MARKS.get(name, [])) for name in sorted(STORE_FACTORIES)])
def store(request, tmp_path) -> Iterator[StoreCase]:
    """A ``StoreCase`` for each backend in ``STORE_FACTORIES``."""
    yield from STORE_FACTORIES[request.param](tmp_path, request)


from tests.alyx_server.fixtures import _alyx_server_session, alyx_server  # noqa: E402,F401
