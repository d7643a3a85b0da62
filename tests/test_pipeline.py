"""Pipeline graph checks, create_alyx_tasks, run_alyx_task's dependency rules, registration,
Pipeline.run/rerun_failed/rerun, and the outbox when the store cannot be reached."""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import pytest

from hpcpipe.errors import BadInput, PipelineError, Unreachable
from hpcpipe.pipeline import Pipeline, release_held_children, run_alyx_task
from hpcpipe.status import STATUSES
from hpcpipe.store import SQLiteStore, outbox
from hpcpipe.task import Task


# --------------------------------------------------------------------------- a small pipeline
class Step(Task):
    """Writes ``alf/<name>.out.npy`` and appends its name to ``runs.txt``.

    A file ``_do_<Name>`` in the session changes what it does: ``error``, ``empty``,
    ``incomplete``, or ``down`` (the store becomes unreachable while it runs).
    """

    cpu = 1
    ram = 1

    @property
    def signature(self):
        return {"input_files": [], "output_files": [(f"{self.name}.out.npy", "alf", True)]}

    def _run(self, overwrite=False):
        with open(self.session_path / "runs.txt", "a") as fh:
            fh.write(self.name + "\n")
        marker = self.session_path / f"_do_{self.name}"
        action = marker.read_text().strip() if marker.exists() else ""
        if action == "error":
            raise RuntimeError(f"{self.name} failed on purpose")
        if action == "empty":
            return None
        if action == "down":
            self.one.down = True
        out = self.session_path / "alf" / f"{self.name}.out.npy"
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(self.name.encode() * 1000)
        if action == "incomplete":
            self.status = -3
        return [out]


class StepA(Step):
    priority = 90


class StepB(Step):
    priority = 40


class StepC(Step):
    priority = 50


class StepD(Step):
    priority = 30


class Bare(Pipeline):
    """A pipeline whose tasks a test assigns."""

    _name = "bare"


class Small(Pipeline):
    """A -> C -> D <- B"""

    _name = "small"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        a = StepA(self.session_path)
        b = StepB(self.session_path)
        c = StepC(self.session_path, parents=[a])
        d = StepD(self.session_path, parents=[c, b])
        self.tasks = OrderedDict((t.name, t) for t in (a, b, c, d))


@pytest.fixture
def session(tmp_path):
    path = tmp_path / "data" / "lab" / "Subjects" / "SW001" / "2024-05-01" / "001"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "tasks.sqlite")
    yield s
    s.close()


@pytest.fixture
def small(session, store):
    pipe = Small(session, one=store)
    pipe.create_alyx_tasks()
    return pipe


def by_name(store, eid):
    return {t["name"]: t for t in store.list_tasks(session=eid)}


def runs(session):
    f = session / "runs.txt"
    return f.read_text().split() if f.exists() else []


def set_status(store, eid, **statuses):
    recs = by_name(store, eid)
    for name, status in statuses.items():
        store.update_task(recs[name]["id"], status=status)
    return by_name(store, eid)


# --------------------------------------------------------------------------- graph checks
def test_cycle_made_after_construction_is_refused_naming_the_tasks(session):
    a = StepA(session)
    b = StepB(session, parents=[a])
    c = StepC(session, parents=[b])
    a.parents = [c]
    pipe = Bare(session)
    with pytest.raises(PipelineError) as err:
        pipe.tasks = OrderedDict((t.name, t) for t in (a, b, c))
    assert "cycle" in str(err.value)
    assert all(name in str(err.value) for name in ("StepA", "StepB", "StepC"))
    assert pipe.tasks == OrderedDict()  # nothing assigned


def test_task_that_is_its_own_parent_is_a_cycle(session):
    a = StepA(session)
    a.parents = [a]
    with pytest.raises(PipelineError, match="StepA -> StepA"):
        Bare(session).tasks = {"StepA": a}


def test_parent_outside_the_pipeline_is_refused(session):
    a = StepA(session)
    c = StepC(session, parents=[a])
    with pytest.raises(PipelineError, match="StepC.*StepA"):
        Bare(session).tasks = {"StepC": c}


def test_duplicate_names_are_refused(session):
    with pytest.raises(PipelineError, match="StepA"):
        Bare(session).tasks = OrderedDict([("first", StepA(session)), ("second", StepA(session))])


def test_valid_graph_keeps_order_and_levels(session):
    pipe = Small(session)
    assert list(pipe.tasks) == ["StepA", "StepB", "StepC", "StepD"]
    assert {n: t.level for n, t in pipe.tasks.items()} == {"StepA": 0, "StepB": 0, "StepC": 1, "StepD": 2}


def test_pipeline_needs_a_session():
    with pytest.raises(BadInput):
        Bare()


# --------------------------------------------------------------------------- create_alyx_tasks
def test_create_alyx_tasks_records_the_graph(small, store):
    recs = by_name(store, small.eid)
    assert set(recs) == {"StepA", "StepB", "StepC", "StepD"}
    assert recs["StepC"]["parents"] == [recs["StepA"]["id"]]
    assert recs["StepD"]["parents"] == [recs["StepC"]["id"], recs["StepB"]["id"]]
    assert {n: r["level"] for n, r in recs.items()} == {"StepA": 0, "StepB": 0, "StepC": 1, "StepD": 2}
    assert {r["status"] for r in recs.values()} == {"Waiting"}
    assert {r["graph"] for r in recs.values()} == {"small"}
    assert recs["StepA"]["executable"] == f"{__name__}.StepA"
    assert recs["StepA"]["priority"] == 90
    assert recs["StepA"]["arguments"] == {}


def test_create_alyx_tasks_is_idempotent(small, store):
    before = by_name(store, small.eid)
    again = Small(small.session_path, one=store).create_alyx_tasks()
    assert {r["id"] for r in again} == {r["id"] for r in before.values()}
    assert by_name(store, small.eid) == before  # nothing created, nothing touched


def test_tasks_list_round_trip(session, store):
    pipe = Small(session, one=store)
    tasks_list = pipe.create_tasks_list_from_pipeline()
    assert [t["parents"] for t in tasks_list] == [[], [], ["StepA"], ["StepC", "StepB"]]
    recs = pipe.create_alyx_tasks(tasks_list=tasks_list)
    assert [r["name"] for r in recs] == ["StepA", "StepB", "StepC", "StepD"]
    assert recs[3]["parents"] == [recs[2]["id"], recs[1]["id"]]


@pytest.mark.parametrize("rerun, reset", [
    (None, set()),
    (["Errored"], {"StepA"}),
    (["Errored", "Complete", "Held"], {"StepA", "StepB", "StepD"}),
    ("__all__", {"StepA", "StepB", "StepD"}),  # every status but Abandoned
])
def test_rerun_status_in(small, store, rerun, reset):
    statuses = {"StepA": "Errored", "StepB": "Complete", "StepC": "Abandoned", "StepD": "Held"}
    recs = set_status(store, small.eid, **statuses)
    for rec in recs.values():
        store.update_task(rec["id"], log=f"log of {rec['name']}")
    Small(small.session_path, one=store).create_alyx_tasks(rerun__status__in=rerun)
    after = by_name(store, small.eid)
    for name, rec in after.items():
        if name in reset:
            assert (rec["status"], rec["log"]) == ("Waiting", None), name
        else:
            assert (rec["status"], rec["log"]) == (statuses[name], f"log of {name}"), name
        assert rec["id"] == recs[name]["id"]


def test_rerun_with_an_unknown_status_changes_nothing(small, store):
    recs = set_status(store, small.eid, StepA="Errored")
    with pytest.raises(BadInput):
        Small(small.session_path, one=store).create_alyx_tasks(rerun__status__in=["errored"])
    assert by_name(store, small.eid) == recs


# --------------------------------------------------------------------------- run_alyx_task
@pytest.mark.parametrize("parent_status", ["Errored", "Held", "Empty", "Waiting", "Started", "Abandoned"])
def test_child_of_an_unfinished_parent_is_held_and_not_run(small, store, parent_status):
    recs = set_status(store, small.eid, StepA=parent_status)
    tdict, dsets = run_alyx_task(tdict=recs["StepC"], session_path=small.session_path, one=store)
    assert tdict["status"] == "Held"
    assert store.get_task(recs["StepC"]["id"])["status"] == "Held"
    assert runs(small.session_path) == []
    assert dsets == []


@pytest.mark.parametrize("parent_status", ["Complete", "Incomplete"])
def test_child_of_done_parents_runs(small, store, parent_status):
    recs = set_status(store, small.eid, StepA=parent_status)
    tdict, dsets = run_alyx_task(tdict=recs["StepC"], session_path=small.session_path, one=store)
    assert tdict["status"] == "Complete"
    assert runs(small.session_path) == ["StepC"]
    assert [d["name"] for d in dsets] == ["StepC.out.npy"]


@pytest.mark.parametrize("action, status", [("", "Complete"), ("empty", "Empty"), ("error", "Errored"),
                                            ("incomplete", "Incomplete")])
def test_run_result_is_saved(small, store, action, status):
    if action:
        (small.session_path / "_do_StepA").write_text(action)
    recs = by_name(store, small.eid)
    tdict, _ = run_alyx_task(tdict=recs["StepA"], session_path=small.session_path, one=store)
    stored = store.get_task(recs["StepA"]["id"])
    assert tdict == stored
    assert stored["status"] == status
    assert stored["time_elapsed_secs"] is not None
    assert stored["version"] == StepA.version
    assert "Starting job" in stored["log"]
    if action == "error":
        assert "RuntimeError: StepA failed on purpose" in stored["log"]


def test_gpu_lock_held_sends_the_task_back_to_waiting(small, store, monkeypatch):
    import hpcpipe.task as task_mod

    monkeypatch.setattr(StepA, "gpu", 1)
    monkeypatch.setattr(task_mod.Task, "is_locked", lambda self: True)
    recs = by_name(store, small.eid)
    tdict, dsets = run_alyx_task(tdict=recs["StepA"], session_path=small.session_path, one=store)
    assert store.get_task(recs["StepA"]["id"])["status"] == "Waiting"
    assert runs(small.session_path) == [] and dsets == []


def test_outputs_are_registered_with_md5_and_size(small, store):
    recs = by_name(store, small.eid)
    _, dsets = run_alyx_task(tdict=recs["StepA"], session_path=small.session_path, one=store)
    out = small.session_path / "alf" / "StepA.out.npy"
    stored = store.list_datasets(small.eid)
    assert [(d["collection"], d["name"]) for d in stored] == [("alf", "StepA.out.npy")]
    assert stored[0]["hash"] == hashlib.md5(out.read_bytes()).hexdigest()
    assert stored[0]["file_size"] == out.stat().st_size == 5000
    assert stored[0]["version"] == StepA.version
    assert [d["id"] for d in dsets] == [stored[0]["id"]]


def test_max_md5_size_skips_the_hash_of_big_files(small, store):
    recs = by_name(store, small.eid)
    run_alyx_task(tdict=recs["StepA"], session_path=small.session_path, one=store, max_md5_size=4999)
    stored = store.list_datasets(small.eid)
    assert (stored[0]["hash"], stored[0]["file_size"]) == (None, 5000)
    run_alyx_task(tdict=recs["StepA"], session_path=small.session_path, one=store, max_md5_size=5000)
    assert store.list_datasets(small.eid)[0]["hash"] is not None


def test_mode_raise_reraises_after_saving_the_status(small, store):
    (small.session_path / "_do_StepA").write_text("error")
    recs = by_name(store, small.eid)
    with pytest.raises(RuntimeError, match="StepA"):
        run_alyx_task(tdict=recs["StepA"], session_path=small.session_path, one=store, mode="raise")
    stored = store.get_task(recs["StepA"]["id"])
    assert stored["status"] == "Errored"
    assert "StepA failed on purpose" in stored["log"]


def test_mode_log_does_not_raise(small, store):
    (small.session_path / "_do_StepA").write_text("error")
    recs = by_name(store, small.eid)
    tdict, _ = run_alyx_task(tdict=recs["StepA"], session_path=small.session_path, one=store, mode="log")
    assert tdict["status"] == "Errored"


def test_session_path_is_found_from_the_store(small, store):
    recs = by_name(store, small.eid)
    tdict, _ = run_alyx_task(tdict=recs["StepA"], one=store)
    assert tdict["status"] == "Complete"
    assert (small.session_path / "alf" / "StepA.out.npy").exists()


# --------------------------------------------------------------------------- Held -> Waiting
def test_held_children_are_released_when_their_parents_are_done(small, store):
    recs = set_status(store, small.eid, StepA="Complete", StepB="Complete", StepD="Held")
    run_alyx_task(tdict=recs["StepC"], session_path=small.session_path, one=store)
    assert store.get_task(recs["StepD"]["id"])["status"] == "Waiting"


def test_held_child_stays_held_while_another_parent_is_not_done(small, store):
    recs = set_status(store, small.eid, StepA="Complete", StepB="Errored", StepD="Held")
    run_alyx_task(tdict=recs["StepC"], session_path=small.session_path, one=store)
    assert store.get_task(recs["StepC"]["id"])["status"] == "Complete"
    assert store.get_task(recs["StepD"]["id"])["status"] == "Held"


def test_release_reads_the_store_afresh_not_the_job_deck(small, store):
    recs = set_status(store, small.eid, StepA="Complete", StepD="Held")
    stale_deck = store.list_tasks(session=small.eid)  # StepB is Waiting here...
    store.update_task(recs["StepB"]["id"], status="Complete")  # ...and finishes in another job
    run_alyx_task(tdict=recs["StepC"], session_path=small.session_path, one=store, job_deck=stale_deck)
    assert store.get_task(recs["StepD"]["id"])["status"] == "Waiting"


def test_failed_parent_releases_nobody(small, store):
    (small.session_path / "_do_StepC").write_text("error")
    recs = set_status(store, small.eid, StepA="Complete", StepB="Complete", StepD="Held")
    run_alyx_task(tdict=recs["StepC"], session_path=small.session_path, one=store)
    assert store.get_task(recs["StepD"]["id"])["status"] == "Held"


def test_release_only_touches_held_children(small, store):
    recs = set_status(store, small.eid, StepA="Complete", StepB="Complete", StepC="Complete",
                      StepD="Errored")
    assert release_held_children(store, store.get_task(recs["StepC"]["id"])) == []
    assert store.get_task(recs["StepD"]["id"])["status"] == "Errored"


# --------------------------------------------------------------------------- Pipeline.run
def test_run_runs_the_whole_graph_in_order(small, store):
    deck, dsets = small.run()
    assert runs(small.session_path) == ["StepA", "StepB", "StepC", "StepD"]
    assert {t["status"] for t in deck} == {"Complete"}
    assert {t["status"] for t in store.list_tasks(session=small.eid)} == {"Complete"}
    assert sorted(d["name"] for d in dsets) == [f"Step{x}.out.npy" for x in "ABCD"]


def test_run_with_a_failing_task_holds_its_descendants(small, store):
    (small.session_path / "_do_StepA").write_text("error")
    small.run()
    statuses = {n: r["status"] for n, r in by_name(store, small.eid).items()}
    assert statuses == {"StepA": "Errored", "StepB": "Complete", "StepC": "Held", "StepD": "Held"}
    assert runs(small.session_path) == ["StepA", "StepB"]


STATUS_OF = {"StepA": "Errored", "StepB": "Complete", "StepC": "Abandoned", "StepD": "Incomplete"}


def _selection(small, store, method, **statuses):
    set_status(store, small.eid, **statuses)
    getattr(small, method)()
    return runs(small.session_path)


def test_run_selects_waiting_only(small, store):
    set_status(store, small.eid, StepA="Complete", StepB="Errored", StepC="Waiting", StepD="Held")
    small.run()
    assert runs(small.session_path) == ["StepC"]


def test_run_status_in(small, store):
    set_status(store, small.eid, StepA="Complete", StepB="Errored", StepC="Complete", StepD="Held")
    small.run(status__in=["Errored"])
    assert runs(small.session_path) == ["StepB"]
    with pytest.raises(BadInput):
        small.run(status__in=["Bogus"])


@pytest.mark.parametrize("status, reruns", [
    ("Waiting", True), ("Held", True), ("Started", True), ("Errored", True), ("Empty", True),
    ("Complete", False), ("Incomplete", False), ("Abandoned", False)])
def test_rerun_failed_selection(small, store, status, reruns):
    set_status(store, small.eid, StepA=status, StepB="Complete", StepC="Complete", StepD="Complete")
    small.rerun_failed()
    assert runs(small.session_path) == (["StepA"] if reruns else [])


@pytest.mark.parametrize("status", STATUSES)
def test_rerun_selection(small, store, status):
    set_status(store, small.eid, StepA=status, StepB="Abandoned", StepC="Abandoned", StepD="Abandoned")
    small.rerun()
    assert runs(small.session_path) == ([] if status == "Abandoned" else ["StepA"])


# --------------------------------------------------------------------------- the outbox
class FlakyStore(SQLiteStore):
    """A real SQLite store that answers ``Unreachable`` to every call while ``down`` is set."""

    down = False

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if (not name.startswith("_") and callable(attr) and name not in ("close",)
                and super().__getattribute__("down")):
            def unreachable(*args, **kwargs):
                raise Unreachable(f"store down ({name})")
            return unreachable
        return attr


def _state(store, eid):
    tasks = {n: (r["status"], r["version"], r["parents"] and len(r["parents"]), bool(r["log"]),
                 r["time_elapsed_secs"] is not None)
             for n, r in by_name(store, eid).items()}
    dsets = [(d["collection"], d["name"], d["hash"], d["file_size"], d["version"])
             for d in store.list_datasets(eid)]
    return tasks, dsets


def test_unreachable_store_queues_the_final_reports_and_sync_replays_them(session, tmp_path):
    def scenario(store):
        pipe = Small(session, one=store)
        pipe.create_alyx_tasks()
        recs = set_status(store, pipe.eid, StepB="Complete", StepC="Held")
        run_alyx_task(tdict=recs["StepA"], session_path=session, one=store)
        return pipe.eid, recs

    calm = SQLiteStore(tmp_path / "calm.sqlite")
    eid, _ = scenario(calm)
    expected = _state(calm, eid)
    assert expected[0]["StepA"][0] == "Complete" and expected[0]["StepC"][0] == "Waiting"
    assert outbox.pending() == []

    (session / "_do_StepA").write_text("down")  # the store goes away while StepA runs
    flaky = FlakyStore(tmp_path / "flaky.sqlite")
    eid, recs = scenario(flaky)
    assert len(outbox.pending()) == 2  # register_files, then the final patch
    flaky.down = False
    assert flaky.get_task(recs["StepA"]["id"])["status"] == "Started"
    assert flaky.list_datasets(eid) == []

    assert outbox.sync(flaky) == 2
    assert outbox.pending() == []
    assert _state(flaky, eid) == expected
    assert "Starting job" in flaky.get_task(recs["StepA"]["id"])["log"]

    assert outbox.sync(flaky) == 0  # nothing left: a second sync does nothing
    assert _state(flaky, eid) == expected


def test_reports_made_while_the_outbox_is_not_empty_keep_their_order(session, tmp_path):
    store = FlakyStore(tmp_path / "flaky.sqlite")
    pipe = Small(session, one=store)
    pipe.create_alyx_tasks()
    a = by_name(store, pipe.eid)["StepA"]
    store.down = True
    assert outbox.deliver(store, "update_task", task_id=a["id"], status="Errored") is None
    store.down = False
    # a later report must not be overwritten by the older queued one replayed after it; the
    # store is still marked down (store.health), so it queues behind, and a sync replays in order
    assert outbox.deliver(store, "update_task", task_id=a["id"], status="Complete") is None
    assert len(outbox.pending()) == 2
    assert outbox.sync(store) == 2 and outbox.pending() == []
    assert store.get_task(a["id"])["status"] == "Complete"


@pytest.mark.parametrize("breakage", ["unknown parent", "parent after child", "bad field"])
def test_bad_tasks_list_records_nothing(session, store, breakage):
    pipe = Small(session, one=store)
    tasks_list = pipe.create_tasks_list_from_pipeline()
    if breakage == "unknown parent":
        tasks_list[2]["parents"] = ["Nope"]
    elif breakage == "parent after child":
        tasks_list = tasks_list[:2] + [tasks_list[3], tasks_list[2]]
    else:
        tasks_list[3]["time_out_secs"] = 86400  # beyond Alyx's SmallInteger
    with pytest.raises(BadInput, match="Nope|StepD|time_out_secs"):
        pipe.create_alyx_tasks(tasks_list=tasks_list)
    assert store.list_tasks() == []
