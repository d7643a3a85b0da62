"""Alyx down in the middle of a task: reports wait in the outbox and a sync brings Alyx to the
state of an undisturbed run -- nothing lost, nothing doubled; through hpcpipe's client and
through users' one.api.ONE. An outage is found once: later reports make no request."""
from __future__ import annotations

import json

import pytest

from hpcpipe.alyx.register import describe_files
from hpcpipe.jobside.runfolder import RunFolderStore, result_path, session_entry
from hpcpipe.store import health, outbox
from hpcpipe.store.alyx import AlyxStore
from hpcpipe.store.sqlite import SQLiteStore
from tests.alyx_server import HangingServer
from tests.alyx_server.fixtures import admin_client, client_for, make_session

OUTPUTS = {"T1": ["alf/spikes.times.npy", "alf/spikes.clusters.npy"], "T2": ["alf/trials.intervals.npy"]}


def lifecycle(store, path, eid, outage=None):
    """What run_alyx_task does per task: Started, run, register outputs, final patch."""
    t1 = store.create_task({"name": "T1", "session": eid, "status": "Waiting", "arguments": {}, "level": 0})
    t2 = store.create_task({"name": "T2", "session": eid, "status": "Waiting", "arguments": {}, "level": 1,
                            "parents": [t1["id"]]})
    delivered = []
    for rec in (t1, t2):
        store.update_task(rec["id"], status="Started")
        if outage and rec["name"] == "T2":
            outage()  # Alyx goes down while T2 runs
        for rel in OUTPUTS[rec["name"]]:
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(f"{rec['name']}:{rel}".encode())
        payload = describe_files(path, OUTPUTS[rec["name"]])
        delivered.append(outbox.deliver(store, "register_files", session_path=str(path), versions="1.0",
                                        **payload))
        delivered.append(outbox.deliver(store, "update_task", task_id=rec["id"], status="Complete",
                                        log=f"{rec['name']} ran", time_elapsed_secs=1.5, version="1.0"))
    return delivered


def snapshot(store, eid):
    tasks = store.list_tasks(session=eid)
    names = {t["id"]: t["name"] for t in tasks}
    return ([(t["name"], t["status"], t["log"], t["time_elapsed_secs"], t["version"],
              sorted(names[p] for p in t["parents"])) for t in tasks],
            sorted((d["collection"], d["name"], d["hash"], d["file_size"], d["version"], d["data_repository"])
                   for d in store.list_datasets(eid)))


def test_outage_mid_task_then_sync_equals_an_undisturbed_run(alyx_fresh_server, alyx_client_kind, tmp_path):
    server = alyx_fresh_server
    client = admin_client(server, retries=2, retry_budget=2.0, backoff=0.05)
    store = AlyxStore(client_for(alyx_client_kind, server, tmp_path / "one-cache", retries=2, retry_budget=2.0,
                                 backoff=0.05), repository="hpc_server")
    calm_path, calm_eid = make_session(client, tmp_path / "data", "CALM01", "2026-11-20")
    storm_path, storm_eid = make_session(client, tmp_path / "data", "STORM01", "2026-11-20")

    assert all(x is not None for x in lifecycle(store, calm_path, calm_eid))
    assert outbox.pending(store) == []

    out = lifecycle(store, storm_path, storm_eid, outage=server.stop)
    assert out[:2] != [None, None] and out[2:] == [None, None]  # T1 delivered, T2's reports queued
    queued = outbox.pending(store)
    assert len(queued) == 2
    assert [json.loads(p.read_text())["op"] for p in queued] == ["register_files", "update_task"]

    # another store (the embedded one) never replays Alyx's reports
    assert outbox.sync(SQLiteStore(tmp_path / "other.sqlite")) == 0
    assert outbox.sync(store) == 0  # still down: nothing delivered, nothing dropped
    assert len(outbox.pending(store)) == 2

    server.start()  # same port, same database
    assert outbox.sync(store, force=False) == 0  # still marked down: not even tried
    assert outbox.sync(store) == 2
    assert outbox.pending(store) == [] and not (outbox.outbox_dir() / "failed").exists()
    assert outbox.sync(store) == 0

    calm, storm = snapshot(store, calm_eid), snapshot(store, storm_eid)
    assert storm == calm
    assert [t[1] for t in storm[0]] == ["Complete", "Complete"]
    assert len(storm[1]) == 3

    # replaying the same reports again changes nothing (idempotent): same datasets, no doubles
    before = {d["id"] for d in store.list_datasets(storm_eid)}
    payload = describe_files(storm_path, OUTPUTS["T2"])
    outbox.queue("register_files", {"session_path": str(storm_path), "versions": "1.0", **payload},
                 outbox.store_key(store))
    assert outbox.sync(store) == 1
    assert {d["id"] for d in store.list_datasets(storm_eid)} == before
    assert snapshot(store, storm_eid) == calm
    assert len(server.sql("SELECT id FROM tasks")) == 4


def test_a_report_made_while_older_ones_wait_goes_behind_them(alyx_fresh_server, tmp_path):
    server = alyx_fresh_server
    client = admin_client(server, retries=1, retry_budget=1.0, backoff=0.05)
    store = AlyxStore(client)
    _, eid = make_session(client, tmp_path / "data", "ORDER01")
    rec = store.create_task({"name": "T", "session": eid, "status": "Waiting", "arguments": {}})
    server.stop()
    assert outbox.deliver(store, "update_task", task_id=rec["id"], status="Started") is None
    server.start()
    # Alyx is back (still marked down for a while): the new report must not overtake the queued one
    assert outbox.deliver(store, "update_task", task_id=rec["id"], status="Complete") is None
    assert len(outbox.pending(store)) == 2
    assert outbox.sync(store) == 2
    assert store.get_task(rec["id"])["status"] == "Complete"
    assert outbox.pending(store) == []
    # once the mark is gone, a report made while older ones wait replays them first, then goes
    health.mark_up(outbox.store_key(store))
    outbox.queue("update_task", {"task_id": rec["id"], "status": "Started"}, outbox.store_key(store))
    out = outbox.deliver(store, "update_task", task_id=rec["id"], status="Complete")
    assert out["status"] == "Complete" and outbox.pending(store) == []


def test_an_outage_is_found_once_then_reports_make_no_request(alyx_fresh_server, tmp_path, monkeypatch):
    server = alyx_fresh_server
    client = admin_client(server, retries=5, retry_budget=60.0, backoff=0.05)  # a patient client
    store = AlyxStore(client)
    key = outbox.store_key(store)
    _, eid = make_session(client, tmp_path / "data", "DOWN01")
    rec = store.create_task({"name": "T", "session": eid, "status": "Waiting", "arguments": {}})
    server.stop()
    client.reset_counters()
    assert outbox.deliver(store, "update_task", task_id=rec["id"], status="Started") is None
    first = client.n_requests
    assert first == 2  # a report's budget (one retry), not the client's five
    assert health.is_down(key)
    for status in ("Started", "Errored", "Waiting", "Started", "Complete"):
        assert outbox.deliver(store, "update_task", task_id=rec["id"], status=status) is None
    assert client.n_requests == first  # straight to the outbox
    # a job process on this home (another process: no memory of it) reads the mark, sends nothing
    health._down.clear()
    job = RunFolderStore(tmp_path / "run", session_entry(eid, str(tmp_path), [rec]), rec["id"], upstream=store)
    job.update_task(rec["id"], status="Started")
    job.update_task(rec["id"], status="Complete")
    job.finish("Complete", 0)
    assert client.n_requests == first
    ops = json.loads(result_path(tmp_path / "run", rec["id"]).read_text())["ops"]
    assert [op["delivered"] for op in ops] == [False, False]
    # back, and the stated interval over: the queue replays in order, the mark is cleared
    server.start()
    later = health.time.time() + health.down_secs() + 1
    monkeypatch.setattr(health.time, "time", lambda: later)
    assert not health.is_down(key)
    assert outbox.sync(store, force=False) == 6
    assert store.get_task(rec["id"])["status"] == "Complete" and not health.is_down(key)
    assert not (outbox.outbox_dir() / ".down" / key.replace(":", "_")).exists()


def test_the_started_report_does_not_hold_the_work_back(alyx_fresh_server, tmp_path):
    server = alyx_fresh_server
    client = admin_client(server)
    store = AlyxStore(client)
    _, eid = make_session(client, tmp_path / "data", "SLOW01")
    rec = store.create_task({"name": "T", "session": eid, "status": "Waiting", "arguments": {}})
    server.fault(path="^tasks/", method="PATCH", delay=3, times=1)  # Alyx slow to take the Started
    job = RunFolderStore(tmp_path / "run", session_entry(eid, str(tmp_path), [rec]), rec["id"], upstream=store)
    job.update_task(rec["id"], status="Started")
    thread = job._inflight[0]
    assert thread.is_alive()  # returned while the request is still on its way: the work goes on
    assert json.loads(result_path(tmp_path / "run", rec["id"]).read_text())["ops"][0]["delivered"] is False
    job.update_task(rec["id"], status="Complete")  # waits for the Started first: order kept
    assert not thread.is_alive()
    job.finish("Complete", 0)
    ops = json.loads(result_path(tmp_path / "run", rec["id"]).read_text())["ops"]
    assert [(op["payload"]["status"], op["delivered"]) for op in ops] == [("Started", True), ("Complete", True)]
    assert store.get_task(rec["id"])["status"] == "Complete"


def test_a_hung_alyx_costs_one_timeout_then_reports_make_no_request(alyx_fresh_server, alyx_client_kind, tmp_path,
                                                                     monkeypatch):
    """Alyx accepts connections and never answers: a report gives up on the report timeout
    (ONE sends no timeout of its own), within the report's retries, and marks the store down;
    later reports, a job's included, open no connection at all."""
    server = alyx_fresh_server
    monkeypatch.setenv("HPCPIPE_ALYX_REPORT_TIMEOUT", "0.5")
    admin = admin_client(server)
    _, eid = make_session(admin, tmp_path / "data", "HUNG01")
    kind_client = client_for(alyx_client_kind, server, tmp_path / "one-cache", retries=5, retry_budget=60.0)
    store = AlyxStore(kind_client)
    rec = store.create_task({"name": "T", "session": eid, "status": "Waiting", "arguments": {}})
    server.stop()
    with HangingServer(server.port) as hung:
        assert outbox.deliver(store, "update_task", task_id=rec["id"], status="Started") is None
        first = hung.accepted
        # one connection per attempt: hpcpipe's client retries an idempotent PATCH once; ONE never retries
        assert first == (2 if alyx_client_kind == "hpcpipe" else 1)
        assert health.is_down(outbox.store_key(store))
        assert outbox.deliver(store, "update_task", task_id=rec["id"], status="Complete") is None
        health._down.clear()  # a job process on this home: the mark file tells it
        job = RunFolderStore(tmp_path / "run", session_entry(eid, str(tmp_path), [rec]), rec["id"], upstream=store)
        job.update_task(rec["id"], status="Started")
        job.finish("Complete", 0)
        # and a report that reaches the store's own request path anyway is refused there
        with health.reporting(store), pytest.raises(health.MarkedDown):
            store.get_task(rec["id"])
        assert hung.accepted == first
    server.start()
    assert outbox.sync(store) == 2
    assert store.get_task(rec["id"])["status"] == "Complete"


def test_a_503_storm_keeps_to_the_report_budget(alyx_fresh_server, alyx_client_kind, tmp_path):
    """A proxy answering 503 (Alyx's app down behind it): ONE alone would retry 8 times with
    growing jitter; a report through either client tries once more, then is queued."""
    server = alyx_fresh_server
    admin = admin_client(server)
    _, eid = make_session(admin, tmp_path / "data", "BUSY01")
    store = AlyxStore(client_for(alyx_client_kind, server, tmp_path / "one-cache", retries=5, retry_budget=60.0))
    rec = store.create_task({"name": "T", "session": eid, "status": "Waiting", "arguments": {}})
    server.fault(path="^tasks/", method="PATCH", status=503, body="<h1>Service Unavailable</h1>", times=20)
    server.stats(reset=True)
    assert outbox.deliver(store, "update_task", task_id=rec["id"], status="Started") is None
    assert server.stats()["PATCH tasks"] == 2  # a report's one retry
    assert health.is_down(outbox.store_key(store))
    server.fault(clear=True)
    assert outbox.sync(store) == 1 and store.get_task(rec["id"])["status"] == "Started"
