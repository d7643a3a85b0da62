"""Pytest fixtures for the Alyx test server (import them into a conftest.py).

* ``alyx_server``: one server process per test session (throttle off-limits high so suites are
  not slowed), reset before each test that uses it (empty sessions/tasks/datasets).
* ``alyx_fresh_server``: a server of its own for a test that stops, restarts or throttles it.
* ``alyx_empty_server``: a server as a fresh Alyx is (migrations and init fixtures only: no
  lab ``hpclab``, no repository ``hpc_server``, none of the demo pipeline's dataset types).
* the world of the other two: lab ``hpclab`` with repository ``hpc_server``, and the dataset
  types the demo and sample pipelines write, created over REST as a lab would (``make_session``).
* ``alyx_client_kind``: ``hpcpipe`` and ``one``, for tests run through hpcpipe's own client and
  through users' ``one.api.ONE`` (REST cache on, as users have it); ``client_for`` makes one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from . import PASSWORD, USERNAME, AlyxServerProcess

REPOSITORY = {"name": "hpc_server", "data_url": "http://example.org/hpc/", "globus_is_personal": False,
              "repository_type": "Fileserver", "hostname": "hpc.example.org", "globus_path": "/mnt/hpc"}
LAB = "hpclab"
#: dataset types the demo and the sample pipelines write that a fresh Alyx lacks
PIPELINE_DATASET_TYPES = ("sync.times", "qc.metrics", "summary.table", "raw.ephys", "raw.sync",
                          "raw.timestamps", "raw.behaviour", "raw.meta", "hpcpipe.output")
CLIENT_KINDS = ("hpcpipe", "one")


@pytest.fixture(scope="session")
def _alyx_server_session(tmp_path_factory) -> Iterator[AlyxServerProcess]:
    server = AlyxServerProcess(tmp_path_factory.mktemp("alyx") / "alyx.sqlite", throttle="100000/min")
    server.start()
    _setup_world(server)
    yield server
    server.stop()


@pytest.fixture
def alyx_server(_alyx_server_session) -> AlyxServerProcess:
    _alyx_server_session.reset()
    return _alyx_server_session


@pytest.fixture
def alyx_fresh_server(tmp_path) -> Iterator[AlyxServerProcess]:
    server = AlyxServerProcess(tmp_path / "alyx-fresh.sqlite", throttle="100000/min")
    server.start()
    _setup_world(server)
    yield server
    server.stop()


@pytest.fixture
def alyx_empty_server(tmp_path) -> Iterator[AlyxServerProcess]:
    server = AlyxServerProcess(tmp_path / "alyx-empty.sqlite", throttle="100000/min")
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=CLIENT_KINDS)
def alyx_client_kind(request) -> str:
    """Run the test through hpcpipe's client and through one.api.ONE."""
    return request.param


def one_client(server: AlyxServerProcess, cache_dir: Path):
    """Users' client: ``one.api.ONE`` on the test server, its REST cache left on (5 minutes).

    ONE writes its settings under ``~/.one``: callers point ``$HOME`` at a temporary folder.
    """
    from one.api import ONE

    Path.home().mkdir(parents=True, exist_ok=True)
    ONE.cache_clear()  # ONE() returns its last instance for the same arguments
    return ONE(base_url=server.url, username=USERNAME, password=PASSWORD, silent=True,
               cache_dir=str(cache_dir))


def client_for(kind: str, server: AlyxServerProcess, cache_dir: Path, **kw):
    """An hpcpipe ``AlyxClient`` (``kind='hpcpipe'``) or a ONE (``'one'``) on ``server``."""
    return one_client(server, cache_dir) if kind == "one" else admin_client(server, **kw)


def admin_client(server: AlyxServerProcess, **kw):
    from hpcpipe.alyx.client import AlyxClient

    kw.setdefault("retries", 2)
    kw.setdefault("retry_budget", 5.0)
    kw.setdefault("backoff", 0.05)
    kw.setdefault("timeout", 10.0)
    return AlyxClient(server.url, USERNAME, PASSWORD, use_one_params=False, cache_token=False, **kw)


def _setup_world(server: AlyxServerProcess) -> None:
    client = admin_client(server)
    if not client.get("data-repository", name=REPOSITORY["name"]):
        client.post("data-repository", REPOSITORY)
    if not [lab for lab in client.get("labs") if lab["name"] == LAB]:
        client.post("labs", {"name": LAB})
        client.patch(f"labs/{LAB}", {"repositories": [REPOSITORY["name"]]})
    known = {t["name"] for t in client.get("dataset-types")}
    for name in PIPELINE_DATASET_TYPES:
        if name not in known:
            client.post("dataset-types", {"name": name, "filename_pattern": "",
                                          "description": "written by the hpcpipe demo and test pipelines"})
    client.close()


def make_session(client, root: Path, subject: str, date: str = "2024-05-01", number: int = 1,
                 create_folder: bool = True) -> tuple[Path, str]:
    """Create subject (if new) and session on the server; return (local session path, eid)."""
    if not client.get("subjects", nickname=subject):
        client.post("subjects", {"nickname": subject, "lab": LAB})
    rec = client.post("sessions", {"subject": subject, "number": number, "lab": LAB,
                                   "start_time": f"{date}T10:00:00", "task_protocol": "hpcpipe_test"})
    path = Path(root) / LAB / "Subjects" / subject / date / f"{number:03d}"
    if create_folder:
        path.mkdir(parents=True, exist_ok=True)
    return path, rec["id"]
