"""Records of an Alyx backfill made after queueing (``hpcpipe.recorder``), and the batched
lookups that let a backfill queue in a few requests: through hpcpipe's client and users' ONE."""
from __future__ import annotations

import json

import pytest

from hpcpipe import recorder
from hpcpipe.errors import NotFound, StoreError
from hpcpipe.jobside.runfolder import load_session_entry, session_entry, sessions_json
from hpcpipe.session import parse_session_paths
from hpcpipe.store.alyx import SESSIONS_PER_QUERY, AlyxStore
from tests.alyx_server.fixtures import admin_client, client_for, make_session

TEMPLATE = [
    {"name": "Raw", "status": "Waiting", "parents": [], "arguments": {}, "graph": "rec", "executable": "x.Raw", "level": 0,
     "priority": 100, "cpu": 1, "gpu": 0, "ram": 1, "io_charge": 0, "time_out_secs": 600, "version": None},
    {"name": "Sync", "status": "Waiting", "parents": ["Raw"], "arguments": {}, "graph": "rec", "executable": "x.Sync", "level": 1,
     "priority": 100, "cpu": 1, "gpu": 0, "ram": 1, "io_charge": 0, "time_out_secs": 600, "version": None},
]


def _sessions(server, tmp_path, n: int) -> list:
    client = admin_client(server)
    return [make_session(client, tmp_path / "data", f"R{i:03d}", date=f"2026-10-{1 + i % 28:02d}") for i in range(n)]


def _run_folder(tmp_path, made: list[tuple]) -> tuple:
    """A deferred run folder as the SLURM backend writes it: one chunk, provisional records."""
    run = tmp_path / "run"
    (run / "sessions").mkdir(parents=True)
    (run / recorder.RECORDS).mkdir()
    stamped = recorder.stamp(TEMPLATE, [eid for _, eid in made])
    (run / "sessions" / "c0.json").write_text(sessions_json(
        {i: session_entry(eid, str(path), records) for i, ((path, eid), records) in enumerate(zip(made, stamped))}))
    return run, stamped


def _store(server, kind, tmp_path) -> AlyxStore:
    return AlyxStore(client_for(kind, server, tmp_path / "one-cache"))


def test_session_and_task_lookups_of_many_sessions_take_a_few_requests(alyx_fresh_server, alyx_client_kind,
                                                                       tmp_path):
    made = _sessions(alyx_fresh_server, tmp_path, SESSIONS_PER_QUERY + 5)
    store = _store(alyx_fresh_server, alyx_client_kind, tmp_path)
    refs = parse_session_paths([p for p, _ in made])
    alyx_fresh_server.stats(reset=True)
    assert store.session_ids(refs) == [eid for _, eid in made]
    first = store.stamp_tasks(TEMPLATE[:1], [made[0][1]])[0][0]  # one session with a task, the others none
    found = store.tasks_by_session([eid for _, eid in made], "rec")
    stats = alyx_fresh_server.stats()
    assert stats.get("GET sessions") == 1, stats  # one date range for the 85 sessions
    assert stats.get("GET tasks") == 2, stats     # 80 sessions per listing
    assert [t["id"] for t in found[made[0][1]]] == [first["id"]]
    assert all(found[eid] == [] for _, eid in made[1:])
    # a session Alyx lacks: None, or NotFound when it must exist
    lacking = made[0][0].parent / "002"
    lacking.mkdir()
    assert store.session_ids(parse_session_paths([lacking, made[1][0]])) == [None, made[1][1]]
    with pytest.raises(NotFound, match="register the session on Alyx"):
        store.session_ids(parse_session_paths([lacking]), create=True)


def test_recorder_makes_every_record_once_parents_first_and_resumes(alyx_fresh_server, alyx_client_kind, tmp_path):
    made = _sessions(alyx_fresh_server, tmp_path, 3)
    run, stamped = _run_folder(tmp_path, made)
    store = _store(alyx_fresh_server, alyx_client_kind, tmp_path)
    # a recorder killed after the first record: its id file is all that is left of it
    first = recorder.Recorder(store, run, rate=0)
    assert first.run(only={stamped[0][0]["id"]}) == 0 and first.created == 1
    assert not recorder.done(run)
    alyx_fresh_server.stats(reset=True)
    rec = recorder.Recorder(store, run, rate=0)
    assert rec.run() == 0 and rec.created == 5 and recorder.done(run)
    assert alyx_fresh_server.stats().get("POST tasks") == 5  # the one made before is not made again
    ids = recorder.known_ids(run)
    assert set(ids) == {t["id"] for records in stamped for t in records}
    client = admin_client(alyx_fresh_server)
    for (_, eid), records in zip(made, stamped):
        on_alyx = {t["name"]: t for t in client.get("tasks", session=eid)}
        assert {n: t["id"] for n, t in on_alyx.items()} == {t["name"]: ids[t["id"]] for t in records}
        assert on_alyx["Sync"]["parents"] == [on_alyx["Raw"]["id"]] and on_alyx["Raw"]["status"] == "Waiting"
    # an id file lost after its create (killed between the answer and the write): the
    # uniqueness answer is read back, nothing is doubled
    lost = stamped[1][1]["id"]
    (run / recorder.RECORDS / lost).unlink()
    (run / recorder.RECORDS / recorder.DONE_MARK).unlink()
    assert recorder.Recorder(store, run, rate=0).run() == 0
    assert recorder.known_ids(run)[lost] == ids[lost]
    assert len(client.get("tasks", graph="rec")) == 6


def test_a_job_makes_its_own_record_when_the_recorder_has_not(alyx_fresh_server, alyx_client_kind, tmp_path):
    made = _sessions(alyx_fresh_server, tmp_path, 1)
    run, stamped = _run_folder(tmp_path, made)
    store = _store(alyx_fresh_server, alyx_client_kind, tmp_path)
    entry = load_session_entry(run, "c0", 0)
    with pytest.raises(StoreError, match="parents"):  # its parent ran first, always: never guessed
        recorder.claim(store, run, entry, "Sync")
    alyx_fresh_server.stats(reset=True)
    raw = recorder.claim(store, run, entry, "Raw")
    assert alyx_fresh_server.stats().get("POST tasks") == 1
    sync = recorder.claim(store, run, entry, "Sync")
    raw_id = next(t["id"] for t in raw["tasks"] if t["name"] == "Raw")
    assert next(t for t in sync["tasks"] if t["name"] == "Sync")["parents"] == [raw_id]
    # the recorder coming afterwards finds both made: no create
    alyx_fresh_server.stats(reset=True)
    assert recorder.Recorder(store, run, rate=0).run() == 0
    assert alyx_fresh_server.stats().get("POST tasks") is None
    # a job whose record the recorder made (its id file not yet read): no request at all
    alyx_fresh_server.stats(reset=True)
    again = recorder.claim(store, run, entry, "Sync")
    assert alyx_fresh_server.stats().get("total") is None
    assert json.dumps(again) == json.dumps(sync)


def test_a_throttled_recorder_waits_and_fails_nothing(alyx_fresh_server, alyx_client_kind, tmp_path):
    made = _sessions(alyx_fresh_server, tmp_path, 6)
    run, _ = _run_folder(tmp_path, made)
    store = _store(alyx_fresh_server, alyx_client_kind, tmp_path)
    alyx_fresh_server.set_throttle("4/s")
    try:
        alyx_fresh_server.stats(reset=True)
        assert recorder.Recorder(store, run, rate=0).run() == 0  # unpaced: Alyx's throttle answers
        stats = alyx_fresh_server.stats()
    finally:
        alyx_fresh_server.set_throttle("100000/min")
    assert stats.get("throttled 429", 0) > 0, stats
    assert len(recorder.known_ids(run)) == 12 and recorder.done(run)
    assert len(admin_client(alyx_fresh_server).get("tasks", graph="rec")) == 12


def test_a_job_claiming_its_record_during_an_outage_waits_for_nothing(alyx_fresh_server, alyx_client_kind, tmp_path,
                                                                       monkeypatch):
    """Alyx hung when a job starts: its claim tries once within a report's budget, marks the
    store down and goes on with its provisional id; the next job's claim opens no connection."""
    from hpcpipe.jobside.run import _claim
    from hpcpipe.store import health, outbox
    from tests.alyx_server import HangingServer

    monkeypatch.setenv("HPCPIPE_ALYX_REPORT_TIMEOUT", "0.5")
    made = _sessions(alyx_fresh_server, tmp_path, 1)
    run, stamped = _run_folder(tmp_path, made)
    store = AlyxStore(client_for(alyx_client_kind, alyx_fresh_server, tmp_path / "one-cache",
                                 retries=5, retry_budget=60.0))
    entry = load_session_entry(run, "c0", 0)
    alyx_fresh_server.stop()
    with HangingServer(alyx_fresh_server.port) as hung:
        assert _claim(store, run, entry, "Raw") == entry  # provisional ids kept
        tried = hung.accepted
        assert 1 <= tried <= 2 and health.is_down(outbox.store_key(store))
        assert _claim(store, run, entry, "Raw") == entry
        assert hung.accepted == tried
    alyx_fresh_server.start()
