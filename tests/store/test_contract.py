"""The TaskStore contract, as Alyx defines it (shared/alyx/ALYX-API.md).

Runs against every backend of the ``store`` fixture (tests/store/conftest.py). Where Alyx
silently accepts something that loses data (unknown keys, mismatched register-file lists, a
create without status), the contract is that stores refuse it with ``BadInput``.
"""
from __future__ import annotations

import multiprocessing
import uuid

import pytest

from hpcpipe.errors import BadInput, Conflict, NotFound
from hpcpipe.status import STATUSES
from hpcpipe.store import TASK_FIELDS


def new_task(case, name="TaskA", **fields):
    record = {"name": name, "session": case.eid, "status": "Waiting", "arguments": {}}
    record.update(fields)
    return case.store.create_task(record)


# --------------------------------------------------------------------------- create
def test_create_returns_the_full_record(store):
    rec = new_task(store, priority=40, level=0, cpu=2, ram=3, gpu=0, executable="pkg.mod.TaskA",
                   graph="demo", time_out_secs=600, arguments={"probe": "probe00"})
    assert set(rec) == set(TASK_FIELDS)
    assert uuid.UUID(rec["id"])
    assert rec["parents"] == []
    assert rec["session"] == store.eid
    assert rec["status"] == "Waiting"
    assert (rec["priority"], rec["cpu"], rec["ram"], rec["time_out_secs"]) == (40, 2, 3, 600)
    assert rec["arguments"] == {"probe": "probe00"}
    assert rec["datetime"]
    assert store.store.get_task(rec["id"]) == rec


def test_create_requires_the_session_key(store):
    with pytest.raises(BadInput, match="session"):
        store.store.create_task({"name": "NoSession", "status": "Waiting"})
    # the key is required, a null value is fine (Alyx: "session": null accepted)
    rec = store.store.create_task({"name": "NullSession", "session": None, "status": "Waiting"})
    assert rec["session"] is None


def test_create_requires_status_and_creates_nothing_without_it(store):
    with pytest.raises(BadInput, match="status"):
        store.store.create_task({"name": "NoStatus", "session": store.eid})
    # Alyx creates a corrupt row here; a store must not
    assert store.store.list_tasks(session=store.eid) == []


@pytest.mark.parametrize("status", STATUSES)
def test_every_status_string_is_accepted(store, status):
    rec = new_task(store, status=status)
    assert store.store.get_task(rec["id"])["status"] == status


@pytest.mark.parametrize("bad", ["Running", "waiting", "COMPLETE", "Done", 20, None])
def test_status_must_be_an_exact_string(store, bad):
    with pytest.raises(BadInput):
        new_task(store, status=bad)
    rec = new_task(store, name="Good")
    with pytest.raises(BadInput):
        store.store.update_task(rec["id"], status=bad)
    assert store.store.get_task(rec["id"])["status"] == "Waiting"
    assert [t["name"] for t in store.store.list_tasks(session=store.eid)] == ["Good"]


def test_no_transition_rules(store):
    rec = new_task(store)
    for status in STATUSES[1:] + STATUSES[:1]:  # Held, Started, ..., Complete, Waiting
        assert store.store.update_task(rec["id"], status=status)["status"] == status


@pytest.mark.parametrize("field", ["machine", "job_id", "module", "time_out_sec", "lab"])
def test_unknown_fields_are_refused(store, field):
    with pytest.raises(BadInput, match=field):
        new_task(store, **{field: "x"})
    rec = new_task(store, name="Known")
    with pytest.raises(BadInput, match=field):
        store.store.update_task(rec["id"], **{field: "x"})


def test_read_only_fields_cannot_be_written(store):
    rec = new_task(store)
    with pytest.raises(BadInput):
        store.store.update_task(rec["id"], id=str(uuid.uuid4()))
    with pytest.raises(BadInput):
        store.store.update_task(rec["id"], datetime="2020-01-01T00:00:00")
    assert store.store.get_task(rec["id"])["id"] == rec["id"]


def test_bad_references_and_shapes_are_refused(store):
    with pytest.raises(BadInput):
        new_task(store, session=str(uuid.uuid4()))
    with pytest.raises(BadInput):
        new_task(store, parents=[str(uuid.uuid4())])
    parent = new_task(store, name="Parent")
    with pytest.raises(BadInput):
        new_task(store, name="Child", parents=parent["id"])  # a string, not a list
    with pytest.raises(BadInput):
        new_task(store, name="x" * 65)
    assert [t["name"] for t in store.store.list_tasks(session=store.eid)] == ["Parent"]


@pytest.mark.parametrize("field", ["time_out_secs", "priority", "cpu"])
def test_smallint_fields_are_bounded_like_alyx(store, field):
    # Alyx: "Ensure this value is less than or equal to 32767." for SmallInteger fields
    with pytest.raises(BadInput, match=field):
        new_task(store, **{field: 86400})
    rec = new_task(store, name="Ok", **{field: 32767})
    with pytest.raises(BadInput, match=field):
        store.store.update_task(rec["id"], **{field: -40000})
    assert store.store.get_task(rec["id"])[field] == 32767


def test_log_is_stored_intact(store):
    log = "début → fin ✓\n" * 8000  # > 100 kB, unicode
    rec = new_task(store, log=log)
    assert store.store.get_task(rec["id"])["log"] == log


# --------------------------------------------------------------------------- uniqueness
@pytest.mark.parametrize("arguments", [{}, {"probe": "probe00", "n": 2}])
def test_name_session_arguments_is_unique(store, arguments):
    new_task(store, arguments=arguments)
    with pytest.raises(Conflict):
        new_task(store, arguments=dict(reversed(list(arguments.items()))))  # same dict, other key order
    assert len(store.store.list_tasks(session=store.eid)) == 1


def test_null_arguments_are_distinct(store):
    a = new_task(store, arguments=None)
    b = new_task(store, arguments=None)
    assert a["id"] != b["id"]
    assert len(store.store.list_tasks(session=store.eid, name="TaskA")) == 2


def test_uniqueness_is_per_triple(store):
    _, other_eid = store.new_session("SW002")
    new_task(store, arguments={"probe": "probe00"})
    new_task(store, arguments={"probe": "probe01"})       # other arguments
    new_task(store, name="TaskB", arguments={"probe": "probe00"})  # other name
    new_task(store, session=other_eid, arguments={"probe": "probe00"})  # other session
    assert len(store.store.list_tasks()) == 4


def test_update_into_a_duplicate_is_a_conflict(store):
    new_task(store, name="A")
    b = new_task(store, name="B")
    with pytest.raises(Conflict):
        store.store.update_task(b["id"], name="A")
    assert store.store.get_task(b["id"])["name"] == "B"


# --------------------------------------------------------------------------- update / delete
def test_patch_leaves_other_fields_untouched(store):
    parent = new_task(store, name="Parent")
    rec = new_task(store, parents=[parent["id"]], priority=70, log="old log", graph="demo",
                   executable="pkg.mod.TaskA", arguments={"probe": "probe00"}, version="1.0")
    out = store.store.update_task(rec["id"], status="Complete", time_elapsed_secs=1.5)
    assert out == store.store.get_task(rec["id"])
    for key in TASK_FIELDS:
        if key in ("status", "time_elapsed_secs", "datetime"):
            continue
        assert out[key] == rec[key], key
    assert (out["status"], out["time_elapsed_secs"]) == ("Complete", 1.5)


def test_patch_with_null_clears_a_field(store):
    rec = new_task(store, log="something")
    assert store.store.update_task(rec["id"], log=None)["log"] is None
    assert store.store.update_task(rec["id"], parents=[])["parents"] == []


def test_patch_updates_datetime(store):
    rec = new_task(store)
    out = store.store.update_task(rec["id"], status="Started")
    assert out["datetime"] >= rec["datetime"]


def test_delete_removes_the_task_from_its_childrens_parents(store):
    a = new_task(store, name="A")
    b = new_task(store, name="B")
    child = new_task(store, name="Child", parents=[a["id"], b["id"]])
    store.store.delete_task(a["id"])
    assert store.store.get_task(child["id"])["parents"] == [b["id"]]
    with pytest.raises(NotFound):
        store.store.get_task(a["id"])
    with pytest.raises(NotFound):
        store.store.delete_task(a["id"])  # second DELETE: 404


@pytest.mark.parametrize("call", ["get", "update", "delete"])
def test_unknown_id_is_not_found(store, call):
    missing = str(uuid.uuid4())
    with pytest.raises(NotFound):
        if call == "get":
            store.store.get_task(missing)
        elif call == "update":
            store.store.update_task(missing, status="Complete")
        else:
            store.store.delete_task(missing)


# --------------------------------------------------------------------------- list
def test_list_filters(store):
    _, other = store.new_session("SW002")
    a = new_task(store, name="A", graph="g1", status="Waiting")
    b = new_task(store, name="B", graph="g1", status="Errored")
    c = new_task(store, name="C", graph="g2", status="Waiting")
    d = new_task(store, name="A", graph="g1", session=other, status="Waiting")
    ids = lambda **kw: {t["id"] for t in store.store.list_tasks(**kw)}  # noqa: E731
    assert ids() == {a["id"], b["id"], c["id"], d["id"]}
    assert ids(session=store.eid) == {a["id"], b["id"], c["id"]}
    assert ids(session=other) == {d["id"]}
    assert ids(status="Waiting") == {a["id"], c["id"], d["id"]}
    assert ids(status=["Errored", "Waiting"]) == {a["id"], b["id"], c["id"], d["id"]}
    assert ids(name="A") == {a["id"], d["id"]}
    assert ids(graph="g2") == {c["id"]}
    assert ids(session=store.eid, status="Waiting", graph="g1", name="A") == {a["id"]}
    assert ids(name="a") == set()  # exact, case-sensitive
    with pytest.raises(BadInput):
        store.store.list_tasks(status="Bogus")


def test_list_order_is_level_then_priority_desc(store):
    spec = [("L1p10", 1, 10), ("L0p10", 0, 10), ("Lnone", None, 50), ("L1p90", 1, 90),
            ("L0pnone", 0, None), ("L0p90", 0, 90), ("L2p50", 2, 50)]
    for name, level, priority in spec:
        new_task(store, name=name, level=level, priority=priority)
    names = [t["name"] for t in store.store.list_tasks(session=store.eid)]
    # level ASC with nulls last; priority DESC with nulls first (Alyx's ordering)
    assert names == ["L0pnone", "L0p90", "L0p10", "L1p90", "L1p10", "L2p50", "Lnone"]


# --------------------------------------------------------------------------- sessions
def test_session_lookup(store):
    assert store.store.session_id(store.session_path) == store.eid
    assert store.store.session_path(store.eid).resolve() == store.session_path.resolve()
    with pytest.raises(NotFound):
        store.store.session_id(store.session_path.parent / "002")


# --------------------------------------------------------------------------- datasets
def test_register_files_returns_one_record_per_file_in_order(store):
    files = ["alf/spikes.times.npy", "alf/probe00/clusters.metrics.csv", "trials.table.pqt"]
    out = store.store.register_files(store.session_path, files, hashes=["h1", "h2", None],
                                     filesizes=[10, 20, 30], versions="1.2.3")
    assert [(d["collection"], d["name"]) for d in out] == [
        ("alf", "spikes.times.npy"), ("alf/probe00", "clusters.metrics.csv"), ("", "trials.table.pqt")]
    assert [d["hash"] for d in out] == ["h1", "h2", None]
    assert [d["file_size"] for d in out] == [10, 20, 30]
    assert {d["version"] for d in out} == {"1.2.3"}
    assert len({d["id"] for d in out}) == 3
    assert all(d["revision"] == "" for d in out)


def test_register_same_file_again_gives_the_same_dataset(store):
    first = store.store.register_files(store.session_path, ["alf/spikes.times.npy"], hashes=["h1"],
                                       filesizes=[10], versions=["1.0"])
    again = store.store.register_files(store.session_path, ["alf/spikes.times.npy"], hashes=["h2"],
                                       filesizes=[11])
    assert again[0]["id"] == first[0]["id"]
    assert (again[0]["hash"], again[0]["file_size"]) == ("h2", 11)
    assert again[0]["version"] == "1.0"  # kept when a later registration omits it
    assert len(store.store.list_datasets(store.eid)) == 1


@pytest.mark.parametrize("kwargs", [{"hashes": ["h1"]}, {"filesizes": [1, 2, 3]}, {"versions": ["1"]}])
def test_register_files_refuses_mismatched_lengths(store, kwargs):
    with pytest.raises(BadInput):
        store.store.register_files(store.session_path, ["alf/a.b.npy", "alf/c.d.npy"], **kwargs)
    assert store.store.list_datasets(store.eid) == []  # Alyx would register the first: we refuse all


def test_register_files_parses_revision_folders(store):
    out = store.store.register_files(store.session_path, ["alf/#2024-05-01#/spikes.times.npy",
                                                          "alf/spikes.times.npy"])
    assert (out[0]["collection"], out[0]["revision"], out[0]["name"]) == ("alf", "2024-05-01", "spikes.times.npy")
    assert (out[1]["collection"], out[1]["revision"]) == ("alf", "")
    assert out[0]["id"] != out[1]["id"]


def test_list_datasets_is_per_session(store):
    other_path, other = store.new_session("SW002")
    store.store.register_files(store.session_path, ["alf/spikes.times.npy", "alf/trials.table.pqt"],
                               hashes=["a", "b"], filesizes=[1, 2])
    store.store.register_files(other_path, ["alf/spikes.times.npy"])
    mine = store.store.list_datasets(store.eid)
    assert sorted(d["name"] for d in mine) == ["spikes.times.npy", "trials.table.pqt"]
    assert {d["session"] for d in mine} == {store.eid}
    assert {d["hash"] for d in mine} == {"a", "b"}
    assert [d["session"] for d in store.store.list_datasets(other)] == [other]


def test_register_files_for_an_unknown_session_is_refused(store, tmp_path):
    with pytest.raises(NotFound):
        store.store.register_files(tmp_path / "NOPE" / "2024-05-01" / "001", ["alf/a.b.npy"])


# --------------------------------------------------------------------------- concurrency
N_WRITERS = 6
N_UPDATES = 40


def _writer(store, task_id: str, index: int, barrier) -> None:
    barrier.wait()
    for i in range(N_UPDATES):
        store.update_task(task_id, log=f"writer {index} update {i}", time_elapsed_secs=float(i),
                          status="Started" if i < N_UPDATES - 1 else "Complete")
    store.register_files(store.session_path(store.get_task(task_id)["session"]),
                         [f"alf/writer{index}.out.npy"], hashes=[str(index)], filesizes=[index])


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_concurrent_writers_lose_no_update(store, start_method):
    if store.kind != "sqlite":
        pytest.skip("concurrent processes on one file: the embedded store's promise")
    tasks = [new_task(store, name=f"T{i}", priority=i) for i in range(N_WRITERS)]
    untouched = new_task(store, name="Untouched", log="keep me")
    # the parent has used its connection: forked children inherit it and must not use it,
    # spawned children get a pickled copy of the store
    ctx = multiprocessing.get_context(start_method)
    barrier = ctx.Barrier(N_WRITERS)
    procs = [ctx.Process(target=_writer, args=(store.store, t["id"], i, barrier)) for i, t in enumerate(tasks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * N_WRITERS  # no "database is locked" in any writer
    for i, t in enumerate(tasks):
        rec = store.store.get_task(t["id"])
        assert rec["log"] == f"writer {i} update {N_UPDATES - 1}"
        assert rec["status"] == "Complete"
        assert rec["time_elapsed_secs"] == N_UPDATES - 1
        assert rec["priority"] == i  # PATCH did not clobber it
    assert store.store.get_task(untouched["id"])["log"] == "keep me"
    assert sorted(d["hash"] for d in store.store.list_datasets(store.eid)) == [str(i) for i in range(N_WRITERS)]


def _uses_inherited_connection(store, queue) -> None:
    inherited = store._local.db
    queue.put(store._db is inherited)


def test_sqlite_does_not_reuse_a_connection_across_fork(store):
    if store.kind != "sqlite":
        pytest.skip("SQLite connections must not cross fork()")
    new_task(store)  # the parent's connection is open
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_uses_inherited_connection, args=(store.store, queue))
    proc.start()
    reused = queue.get(timeout=30)
    proc.join(30)
    assert reused is False
    assert len(store.store.list_tasks()) == 1  # the parent's connection still works


# --------------------------------------------------------------------------- bulk (backfills)
def _template():
    base = {"status": "Waiting", "arguments": {"probe": "p0"}, "graph": "g", "executable": "pkg.mod.T",
            "priority": 30, "cpu": 1, "ram": 2, "level": 0}
    return [dict(base, name="A", parents=[]), dict(base, name="B", parents=["A"], level=1),
            dict(base, name="C", parents=["A", "B"], level=2, status="Held")]


def test_stamp_tasks_creates_the_graph_in_every_session(store):
    other_path, other = store.new_session("SW002")
    made = store.store.stamp_tasks(_template(), [store.eid, other])
    assert [[r["name"] for r in recs] for recs in made] == [["A", "B", "C"]] * 2
    ids = [r["id"] for recs in made for r in recs]
    assert len(set(ids)) == 6 and all(uuid.UUID(i) for i in ids)
    for eid, (a, b, c) in zip([store.eid, other], made):
        assert (a["session"], b["parents"], c["parents"], c["status"]) == (eid, [a["id"]], [a["id"], b["id"]], "Held")
        assert {t["id"]: t for t in store.store.list_tasks(session=eid)} == {t["id"]: t for t in (a, b, c)}
    with pytest.raises(Conflict):  # the same graph again: (name, session, arguments) is taken
        store.store.stamp_tasks(_template(), [other])


def test_session_ids_and_tasks_by_session_answer_for_many(store, tmp_path):
    other_path, other = store.new_session("SW003")
    from hpcpipe.session import parse_session_paths

    refs = parse_session_paths([store.session_path, other_path])
    assert store.store.session_ids(refs) == [store.eid, other]
    unknown = str(uuid.uuid4())
    assert store.store.session_paths([store.eid, other, unknown]) == {
        store.eid: str(store.session_path), other: str(other_path), unknown: None}
    store.store.stamp_tasks(_template()[:1], [other])
    found = store.store.tasks_by_session([store.eid, other], graph="g")
    assert found[store.eid] == [] and [t["name"] for t in found[other]] == ["A"]
    assert store.store.tasks_by_session([other], graph="nope") == {other: []}


def test_get_tasks_and_append_logs_answer_for_many(store):
    """What a refresh closing a cancelled backfill uses: every task in one read, every log line
    in one write; a missing id is NotFound and the write changes nothing then."""
    a, b, c = (new_task(store, name=n) for n in "ABC")
    got = store.store.get_tasks([a["id"], c["id"], a["id"]], fields=("id", "status"))
    assert set(got) == {a["id"], c["id"]} and got[c["id"]]["status"] == "Waiting"
    with pytest.raises(NotFound):
        store.store.get_tasks([a["id"], str(uuid.uuid4())])
    store.store.append_logs([(a["id"], "first", {"status": "Held"}), (b["id"], "second", {}),
                             (a["id"], "third", {"status": "Errored"})])
    after = {t["id"]: t for t in store.store.list_tasks(session=store.eid)}
    assert after[a["id"]]["status"] == "Errored" and after[a["id"]]["log"].split() == ["first", "third"]
    assert after[b["id"]]["status"] == "Waiting" and after[b["id"]]["log"].split() == ["second"]
    with pytest.raises(BadInput):
        store.store.append_logs([(c["id"], "x", {"status": "Held"}), (c["id"], "y", {"status": "Finished"})])
    assert store.store.get_task(c["id"])["log"] in (None, "")
