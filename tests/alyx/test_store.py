"""AlyxStore over HTTP, through hpcpipe's client and through users' one.api.ONE (REST cache on):
bad inputs named clearly, registration, bulk reads, round trips, no cached read deciding anything."""
from __future__ import annotations

import hashlib
import uuid

import pytest

from hpcpipe.alyx.register import describe_files, md5
from hpcpipe.errors import BadInput, NotFound
from hpcpipe.store.alyx import AlyxStore, RegistrationError
from tests.alyx_server.fixtures import admin_client, client_for, make_session


@pytest.fixture
def world(alyx_server, alyx_client_kind, tmp_path):
    """(server, admin client, store over the client under test, session path, eid)."""
    client = admin_client(alyx_server)
    store = AlyxStore(client_for(alyx_client_kind, alyx_server, tmp_path / "one-cache"), repository="hpc_server")
    path, eid = make_session(client, tmp_path / "data", "SW100", "2026-11-20", 1)
    assert store.session_id(path) == eid
    return alyx_server, client, store, path, eid


def task(eid, name="A", **kw):
    return {"name": name, "session": eid, "status": "Waiting", "arguments": {}, **kw}


def test_bad_inputs_name_what_is_wrong(world, tmp_path):
    server, client, store, path, eid = world
    sent = server.stats()["total"]
    with pytest.raises(BadInput, match="unknown status 'Running'"):
        store.create_task(task(eid, status="Running"))
    with pytest.raises(BadInput, match="longer than 64"):
        store.create_task(task(eid, name="x" * 65))
    with pytest.raises(BadInput, match="executable .* longer than 128"):
        store.create_task(task(eid, executable="m." * 70))
    with pytest.raises(BadInput, match="time_out_secs=86400 is out of range"):
        store.create_task(task(eid, time_out_secs=86400))
    with pytest.raises(BadInput, match="status"):
        store.create_task({"name": "NoStatus", "session": eid})  # never sent: it would corrupt the list
    with pytest.raises(BadInput, match="2 filenames but 1 hashes"):
        store.register_files(path, ["alf/spikes.times.npy", "alf/trials.table.pqt"], hashes=["h"])
    with pytest.raises(BadInput, match="unknown status 'Bogus'"):
        store.list_tasks(status="Bogus")
    assert server.stats()["total"] == sent  # all refused before any request
    with pytest.raises(NotFound, match="no session NOPE/2026-11-20/001 on Alyx"):
        store.session_id(tmp_path / "NOPE" / "2026-11-20" / "001")
    with pytest.raises(NotFound, match='subject with nickname "NOPE" does not exist'):
        store.register_files(tmp_path / "NOPE" / "2026-11-20" / "001", ["alf/spikes.times.npy"])
    with pytest.raises(BadInput, match="parents.*does not exist"):
        store.create_task(task(eid, parents=[str(uuid.uuid4())]))
    assert store.list_tasks(session=eid) == []


def test_unknown_dataset_types_are_reported_and_the_others_kept(world):
    server, client, store, path, eid = world
    foo = f"foo{uuid.uuid4().hex[:8]}"  # dataset types outlive the per-test reset: a new one each run
    files = ["alf/spikes.times.npy", f"alf/{foo}.bar.npy", "alf/trials.intervals.npy", "alf/spikes.times.xyz"]
    with pytest.raises(RegistrationError) as err:
        store.register_files(path, files, hashes=["a", "b", "c", "d"], filesizes=[1, 2, 3, 4], versions="1.0")
    msg = str(err.value)
    assert "2 of 4" in msg and f'no dataset type on Alyx matches "{foo}.bar.npy"' in msg
    assert 'no data format on Alyx has the extension ".xyz"' in msg
    assert set(err.value.failed) == {f"alf/{foo}.bar.npy", "alf/spikes.times.xyz"}
    assert [d["name"] for d in err.value.registered] == ["spikes.times.npy", "trials.intervals.npy"]
    assert sorted(d["name"] for d in store.list_datasets(eid)) == ["spikes.times.npy", "trials.intervals.npy"]
    # a type created on Alyx since is picked up (the cached catalogue is refreshed on a miss)
    client.post("dataset-types", {"name": f"{foo}.bar", "filename_pattern": "", "description": "test"})
    out = store.register_files(path, [f"alf/{foo}.bar.npy"], hashes=["b"], filesizes=[2], versions="1.0")
    assert out[0]["dataset_type"] == f"{foo}.bar"


def test_server_side_500_mid_list_is_recovered(world, monkeypatch):
    """If the pre-check misses (catalogue stale), the non-atomic 500 is still handled."""
    server, client, store, path, eid = world
    monkeypatch.setattr(store, "check_files", lambda names: {})
    with pytest.raises(RegistrationError) as err:
        store.register_files(path, ["alf/spikes.times.npy", "alf/nope.nope.npy", "alf/trials.choice.npy"])
    assert list(err.value.failed) == ["alf/nope.nope.npy"]
    assert 'No dataset type found for filename "nope.nope.npy"' in err.value.failed["alf/nope.nope.npy"]
    assert [d["name"] for d in err.value.registered] == ["spikes.times.npy", "trials.choice.npy"]
    assert len(store.list_datasets(eid)) == 2


def test_registration_of_real_files_and_md5(world, tmp_path):
    server, client, store, path, eid = world
    (path / "alf").mkdir()
    data = b"x" * (3 * 1024 * 1024 + 17)
    (path / "alf" / "spikes.times.npy").write_bytes(data)
    (path / "alf" / "trials.table.pqt").write_bytes(b"small")
    files = sorted((path / "alf").iterdir())
    desc = describe_files(path, files, max_md5_size=1024 * 1024)
    assert desc["filenames"] == ["alf/spikes.times.npy", "alf/trials.table.pqt"]
    assert desc["hashes"] == [None, hashlib.md5(b"small").hexdigest()]  # too big: no hash
    assert md5(files[0]) == hashlib.md5(data).hexdigest()
    out = store.register_files(path, **desc, versions="0.1.0")
    assert [d["file_size"] for d in out] == [len(data), 5]
    assert out[0]["file_records"][0]["relative_path"] == "SW100/2026-11-20/001/alf/spikes.times.npy"
    assert out[0]["data_repository"] == "hpc_server"
    with pytest.raises(BadInput, match="not inside the session folder"):
        store.register_files(path, [tmp_path / "elsewhere.npy"])


def test_pagination_over_1000_tasks_is_one_query(world):
    server, client, store, path, eid = world
    server.seed_tasks(eid, 1100, status="Waiting")
    server.stats(reset=True)
    rows = store.list_tasks(session=eid)
    assert len(rows) == 1100 and len({r["id"] for r in rows}) == 1100
    assert server.stats()["GET tasks"] == 2  # limit=1000, then the rest
    assert len(store.list_tasks(session=eid, status=["Waiting", "Held"])) == 1100
    assert store.list_tasks(session=eid, status="Complete") == []


def test_round_trips_per_task_lifecycle(world):
    server, client, store, path, eid = world
    rec = store.create_task(task(eid, name="Spikes"))
    store.register_files(path, ["alf/spikes.times.npy"], versions="1")  # warms the type catalogue
    server.stats(reset=True)
    store.update_task(rec["id"], status="Started")
    store.register_files(path, ["alf/spikes.times.npy", "alf/spikes.clusters.npy"], hashes=["a", "b"],
                         filesizes=[1, 2], versions="1")
    store.update_task(rec["id"], status="Complete", log="done", time_elapsed_secs=1.0, version="1")
    assert server.stats()["total"] == 3  # Started, one register-file, the final patch


def test_time_out_secs_at_the_cap(world):
    server, client, store, path, eid = world
    rec = store.create_task(task(eid, time_out_secs=32767))
    assert store.get_task(rec["id"])["time_out_secs"] == 32767


def test_create_alyx_tasks_twice_changes_nothing(world):
    """ibllib's idempotence through users' ONE: the second run must see the first one's tasks.

    Through ONE with its REST cache on, a task list read before the tasks existed is answered
    again from the cache for 5 minutes: the second ``create_alyx_tasks`` would create every
    task again and fail on Alyx's uniqueness rule. The store reads with ``no_cache=True``.
    """
    from hpcpipe.demo.pipeline import DemoPipeline

    server, client, store, path, eid = world
    pipe = DemoPipeline(path, one=store)
    first = pipe.create_alyx_tasks()
    again = DemoPipeline(path, one=store).create_alyx_tasks()
    assert [t["id"] for t in again] == [t["id"] for t in first]
    assert len(client.get("tasks", session=eid)) == 5
    rerun = DemoPipeline(path, one=store).create_alyx_tasks(rerun__status__in=["Waiting"])
    assert [t["id"] for t in rerun] == [t["id"] for t in first] and len(client.get("tasks", session=eid)) == 5
    if store.round_trips is None:  # a real ONE, its REST cache on as users have it
        assert store.alyx.cache_mode == "GET" and store.alyx.default_expiry.total_seconds() >= 300


def test_a_user_one_works_as_the_store(world, alyx_client_kind):
    server, client, store, path, eid = world
    if alyx_client_kind != "one":
        pytest.skip("the ONE face of the store")
    from hpcpipe.store import open_store

    ostore = open_store(store.alyx)  # ONE's AlyxClient, as ibllib code passes it around
    assert isinstance(ostore, AlyxStore) and ostore.round_trips is None
    assert ostore.session_id(path) == eid
    rec = ostore.create_task(task(eid))
    assert ostore.update_task(rec["id"], status="Complete")["status"] == "Complete"
    assert ostore.get_task(rec["id"])["name"] == "A"  # PATCH: name kept
    with pytest.raises(NotFound):
        ostore.get_task(str(uuid.uuid4()))
    with pytest.raises(BadInput, match="does not exist"):
        ostore.create_task(task(eid, name="B", parents=[str(uuid.uuid4())]))
    out = ostore.register_files(path, ["alf/spikes.times.npy"], versions="1")
    assert out[0]["name"] == "spikes.times.npy"
    assert [t["id"] for t in ostore.list_tasks(session=eid, status="Complete")] == [rec["id"]]


def test_429_storm_through_the_store(alyx_fresh_server, alyx_client_kind, tmp_path):
    """Alyx's throttle (429 + Retry-After) through either client: every read and write lands once."""
    server = alyx_fresh_server
    client = admin_client(server)
    path, eid = make_session(client, tmp_path / "data", "SW429", "2026-11-20", 1)
    store = AlyxStore(client_for(alyx_client_kind, server, tmp_path / "one-cache", retries=10, retry_budget=60.0),
                      repository="hpc_server")
    server.set_throttle("4/s")
    try:
        created = [store.create_task(task(eid, name=f"T{i}")) for i in range(6)]
        for rec in created:
            store.update_task(rec["id"], status="Complete")
        rows = store.list_tasks(session=eid)
        stats = server.stats()
    finally:
        server.set_throttle("100000/min")
    assert sorted(r["name"] for r in rows) == [f"T{i}" for i in range(6)]
    assert {r["status"] for r in rows} == {"Complete"}
    assert len(server.sql("SELECT id FROM tasks")) == 6  # nothing doubled by a retried create
    assert stats["POST tasks"] >= 6 and stats["total"] > 13  # throttled requests were sent again
