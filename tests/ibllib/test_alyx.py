"""ibllib's pipeline over the real ONE client (``one.api.ONE``, PyPI one-api) and the Alyx test
server: ``create_alyx_tasks`` twice changes nothing (ibllib reads with ``no_cache=True``), and the
same pipeline recorded by hpcpipe over that ONE (``AlyxStore(one)``) finds the tasks ibllib made."""
from __future__ import annotations

import pytest

from tests.ibllib.conftest import REASON

pytest.importorskip("ibllib", reason=REASON)

from tests.alyx_server import PASSWORD, USERNAME  # noqa: E402
from tests.alyx_server.fixtures import admin_client, alyx_fresh_server, make_session  # noqa: E402,F401
from tests.ibllib.ibl_tasks import IblTestPipeline  # noqa: E402
from tests.ibllib.test_local import EXPECTED  # noqa: E402

pytestmark = pytest.mark.alyx


@pytest.fixture
def one(alyx_fresh_server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    (tmp_path / "user-home").mkdir()
    from one.api import ONE

    return ONE(base_url=alyx_fresh_server.url, username=USERNAME, password=PASSWORD, silent=True,
               mode="remote", cache_dir=tmp_path / "one-cache")


def test_create_alyx_tasks_twice_through_real_one_changes_nothing(one, alyx_fresh_server, tmp_path):  # noqa: F811
    client = admin_client(alyx_fresh_server)
    session, eid = make_session(client, tmp_path / "data", "KS001", date="2024-01-02")
    pipe = IblTestPipeline(session, one=one)
    assert str(pipe.eid) == eid  # the real ONE answers path2eid with a UUID object
    first = pipe.create_alyx_tasks()
    assert [t["name"] for t in first] == list(EXPECTED)
    again = IblTestPipeline(session, one=one).create_alyx_tasks()
    assert [t["id"] for t in again] == [t["id"] for t in first]
    assert len(client.get("tasks", session=eid)) == len(EXPECTED)

    # hpcpipe over the same ONE: the records ibllib made are the pipeline's records, none added
    from hpcpipe.ibl import face_of, ibllib_template
    from hpcpipe.store.alyx import AlyxStore

    store = AlyxStore(one)
    face = face_of(store, create_sessions=False)
    assert str(face.path2eid(session)) == eid
    listed = face.alyx.rest("tasks", "list", session=eid, graph="IblTestPipeline", no_cache=True)
    assert sorted(t["id"] for t in listed) == sorted(t["id"] for t in first)
    template = ibllib_template(IblTestPipeline(session, one=face))
    assert [t["name"] for t in template] == list(EXPECTED)
    client.close()
