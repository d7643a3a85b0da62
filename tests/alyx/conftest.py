"""Fixtures for the Alyx tests: the HTTP test server (tests/alyx_server) and clean credentials."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: tests.alyx_server

from tests.alyx_server.fixtures import (  # noqa: E402,F401
    _alyx_server_session,
    admin_client,
    alyx_client_kind,
    alyx_empty_server,
    alyx_fresh_server,
    alyx_server,
    make_session,
)


@pytest.fixture(autouse=True)
def _no_user_credentials(tmp_path, monkeypatch):
    """No ~/.one of the developer, no HPCPIPE_ALYX_* from the shell."""
    home = tmp_path / "user-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith("HPCPIPE_ALYX_"):
            monkeypatch.delenv(name)
    from hpcpipe.store import alyx as alyx_store

    alyx_store._CATALOGS.clear()
    return home


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/alyx/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.alyx)
