"""What makes a 10,000-session backfill cheap, pinned as mechanisms (the timings themselves are
printed by scripts/bench/backfill.py, never asserted): the store statements of a backfill do not
grow with its sessions, the pipeline's Task objects are built once per class, session paths are
checked in one pass, and a chunk file holds each task type once."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpcpipe.errors import BadInput
from hpcpipe.jobside import runfolder
from hpcpipe.ledger import Ledger
from hpcpipe.session import parse_session_path, parse_session_paths
from hpcpipe.store.sqlite import SQLiteStore
from hpcpipe.submission import plan_sessions
from hpcpipe.task import Task

PIPELINE = "tests.test_backfill_scale.Six"


class _T(Task):
    def _run(self, overwrite=False):
        return []


Raw, Sync, Spikes, Trials, QC, Summary = (type(n, (_T,), {"__module__": __name__})
                                          for n in ("Raw", "Sync", "Spikes", "Trials", "QC", "Summary"))


def _six():
    from collections import OrderedDict

    from hpcpipe.pipeline import Pipeline

    class Six(Pipeline):
        _name = "six"

        def __init__(self, session_path=None, **kwargs):
            super().__init__(session_path, **kwargs)
            raw = Raw(self.session_path)
            sync, spikes = Sync(self.session_path, parents=[raw]), Spikes(self.session_path, parents=[raw])
            trials = Trials(self.session_path, parents=[sync])
            qc = QC(self.session_path, parents=[trials, spikes])
            self.tasks = OrderedDict((t.name, t) for t in (raw, sync, spikes, trials, qc,
                                                           Summary(self.session_path, parents=[qc])))

    Six.__module__ = __name__
    return Six


Six = _six()


def sessions(root: Path, n: int, start: int = 0) -> list[Path]:
    out = []
    for i in range(start, start + n):
        p = root / "lab" / "Subjects" / f"S{i:04d}" / "2026-11-20" / "001"
        p.mkdir(parents=True)
        out.append(p)
    return out


@pytest.fixture()
def stores(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home"))
    store = SQLiteStore(tmp_path / "tasks.sqlite")
    yield store, Ledger(tmp_path / "jobs.sqlite")
    store.close()


def statements(store: SQLiteStore, fn) -> tuple[list[str], object]:
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    try:
        result = fn()
    finally:
        store._db.set_trace_callback(None)
    return seen, result


def test_backfill_store_statements_do_not_grow_with_sessions(stores, tmp_path):
    store, ledger = stores
    few, _ = statements(store, lambda: plan_sessions(sessions(tmp_path / "a", 3), PIPELINE, store, ledger))
    many, plans = statements(store, lambda: plan_sessions(sessions(tmp_path / "b", 300, 3), PIPELINE, store, ledger))
    # a transaction and its pragmas (page cache, checkpoint), 3 for the sessions, 1 for their
    # tasks, 1 check, 6 inserts (one per task type), savepoints
    assert len(many) == len(few) <= 21, many
    assert sum(len(p.items) for p in plans) == 1800
    assert len(store.list_tasks()) == 1800 + 18


def test_backfill_builds_the_task_objects_once_per_pipeline_class(stores, tmp_path, monkeypatch):
    store, ledger = stores
    built = []
    init = Task.__init__
    monkeypatch.setattr(Task, "__init__", lambda self, *a, **k: (built.append(type(self).__name__),
                                                                 init(self, *a, **k))[1])
    plans = plan_sessions(sessions(tmp_path, 50), PIPELINE, store, ledger)
    assert sorted(built) == sorted(["Raw", "Sync", "Spikes", "Trials", "QC", "Summary"])
    assert len(plans) == 50 and all(len(p.items) == 6 for p in plans)


def test_stamped_records_and_plans_are_those_of_the_general_rules(stores, tmp_path):
    """A fresh session gets the same records and plan stamped as one recorded task by task."""
    store, ledger = stores
    (fresh,) = plan_sessions(sessions(tmp_path / "a", 1), PIPELINE, store, ledger, names=["Raw", "Sync", "QC"])
    assert [i.task["name"] for i in fresh.items] == ["Raw", "Sync"]
    assert [(t["name"], t["status"]) for t, _ in fresh.held] == [("QC", "Held")]
    by_id = {t["id"]: t for t in store.list_tasks(session=fresh.session)}
    assert by_id == {t["id"]: t for t in fresh.deck}
    sync = next(i for i in fresh.items if i.task["name"] == "Sync")
    assert sync.parents_in_plan == [fresh.items[0].id] and sync.task["parents"] == [fresh.items[0].id]
    # planning the same session again goes through the general rules (records exist): same plan
    (again,) = plan_sessions([fresh.session_path], PIPELINE, store, ledger, names=["Raw", "Sync", "QC"])
    assert [i.id for i in again.items] == [i.id for i in fresh.items]
    assert again.held == []  # QC is Held already: not requested, as the rules say


def test_a_bad_path_among_many_records_nothing(stores, tmp_path):
    store, ledger = stores
    paths = sessions(tmp_path, 20) + [tmp_path / "lab" / "Subjects" / "S9" / "2026-11-20" / "001"]
    with pytest.raises(BadInput, match="does not exist"):
        plan_sessions(paths, PIPELINE, store, ledger)
    assert store.list_tasks() == [] and store._db.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0


@pytest.mark.parametrize("by_fd", [True, False], ids=["fd", "lstat"])
def test_parse_session_paths_agrees_with_parse_session_path(tmp_path, monkeypatch, by_fd):
    import hpcpipe.session

    if by_fd and not hpcpipe.session._BY_FD:
        pytest.skip("no O_PATH or /proc/self/fd here")
    monkeypatch.setattr(hpcpipe.session, "_BY_FD", by_fd)
    (a, b) = sessions(tmp_path / "real", 2)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    linked = tmp_path / "link" / "lab" / "Subjects" / "S0001" / "2026-11-20" / "001"
    (tmp_path / "sess-link").symlink_to(a)
    monkeypatch.chdir(tmp_path)
    given = [a, f"{b}/", linked, "real/lab/Subjects/S0000/2026-11-20/001"]
    refs = parse_session_paths(given)
    assert refs == list(dict.fromkeys(parse_session_path(p) for p in given))
    assert [r.path for r in refs] == [a.resolve(), b.resolve()]  # duplicates after resolving dropped
    (tmp_path / "f").write_text("")
    for bad, why in ((tmp_path / "nope", "does not exist"), (tmp_path / "f", "not a folder"),
                     (tmp_path / "f" / "2026-11-20" / "001", "does not exist"), (tmp_path / "real", "not a session path")):
        with pytest.raises(BadInput, match=why):
            parse_session_paths([a, bad])


def test_chunk_file_holds_each_task_type_once(stores, tmp_path):
    store, ledger = stores
    plans = plan_sessions(sessions(tmp_path, 40), PIPELINE, store, ledger)
    entries = {i: runfolder.session_entry(p.session, str(p.session_path), p.deck) for i, p in enumerate(plans)}
    text = runfolder.sessions_json(entries)
    assert len(json.loads(text)["types"]) == 6
    run = tmp_path / "run"
    (run / "sessions").mkdir(parents=True)
    (run / "sessions" / "c0.json").write_text(text)
    entry = runfolder.load_session_entry(run, "c0", 7)
    keep = set(runfolder._TYPE_FIELDS) | {"id", "status", "parents", "session"}
    assert entry["eid"] == plans[7].session and entry["path"] == str(plans[7].session_path)
    assert entry["tasks"] == [{k: t[k] for k in keep} for t in plans[7].deck]
    assert os.path.getsize(run / "sessions" / "c0.json") < 40 * 6 * 200  # ids and statuses, not whole records


def test_ledger_records_an_array_in_one_statement(tmp_path):
    ledger = Ledger(tmp_path / "jobs.sqlite")
    rows = [{"task_id": f"t{i}", "session": f"s{i // 6}", "task_name": "Raw", "run_id": "bf-1", "backend": "slurm",
             "job_id": "42", "array_index": i, "state": "PENDING", "run_dir": "/r", "remote": None}
            for i in range(3000)]
    seen: list[str] = []
    ledger._db.set_trace_callback(seen.append)
    ledger.record(rows + [dict(rows[0], task_id="other", job_id="43", remote="hpc")])
    ledger._db.set_trace_callback(None)
    assert len([s for s in seen if s.startswith("INSERT")]) == 1
    jobs = {j.task_id: j for j in ledger.run("bf-1")}
    assert len(jobs) == 3001 and jobs["t7"].backend_id == "42_7" and jobs["t7"].session == "s1"
    assert (jobs["other"].job_id, jobs["other"].remote, jobs["t7"].remote) == ("43", "hpc", None)
    ledger.record([dict(rows[0], run_id="one")])  # a single row: every value is shared
    assert [j.task_id for j in ledger.run("one")] == ["t0"]


def test_chunk_file_of_stamped_sessions_works_out_their_types_once(stores, tmp_path):
    store, ledger = stores
    plans = plan_sessions(sessions(tmp_path, 30), PIPELINE, store, ledger)
    assert all(p.origin is plans[0].origin is not None for p in plans)
    plain = {i: runfolder.session_entry(p.session, str(p.session_path), p.deck) for i, p in enumerate(plans)}
    hinted = {i: dict(e, origin=plans[i].origin) for i, e in plain.items()}
    keyed = []
    real = runfolder._SHARED
    runfolder._SHARED = type("Counting", (tuple,), {"__iter__": lambda self: (keyed.append(1), iter(real))[1]})(real)
    try:
        text = runfolder.sessions_json(hinted)
    finally:
        runfolder._SHARED = real
    assert text == runfolder.sessions_json(plain)
    assert len(keyed) == 6  # the six task types of the first session, none afterwards


def test_stamped_sessions_reach_the_ledger_and_chunk_file_without_a_record_per_task(stores, tmp_path, monkeypatch):
    """The SLURM path of a backfill (layout, ledger columns, chunk file) reads the store's answer by
    task type: no session's records or items are made. A job reads from the chunk file what the
    full records say."""
    from hpcpipe.plan import StampedPlan
    from hpcpipe.slurm import layout as layouts
    from hpcpipe.store.base import StampedRecords

    store, ledger = stores
    plans = plan_sessions(sessions(tmp_path, 40), PIPELINE, store, ledger)
    asked = []
    whole = StampedRecords.__getitem__
    monkeypatch.setattr(StampedRecords, "__getitem__", lambda self, k: (asked.append(k), whole(self, k))[1])
    layout = layouts.arrays(plans, 1000)
    columns = [call.columns() for call in layout.calls]
    text = runfolder.sessions_json({i: runfolder.stamped_entry(p.made, p.index, str(p.session_path))
                                    for i, p in layout.chunks["c0"].items()})
    assert all(type(p) is StampedPlan and not p.built for p in plans) and asked == []
    # the same as the plans' own records and items say, once they are made
    assert [c.task_name for c in layout.calls] == ["Raw", "Sync", "Spikes", "Trials", "QC", "Summary"]
    for call, (indices, task_ids, eids) in zip(layout.calls, columns):
        assert indices == list(range(40)) and len(call.members) == 40
        assert task_ids == [next(i.id for i in p.items if i.task["name"] == call.task_name) for p in plans]
        assert eids == [p.session for p in plans] == [t["session"] for t in (i.task for _, i in call.members)]
    full = runfolder.sessions_json({i: runfolder.session_entry(p.session, str(p.session_path), p.deck)
                                    for i, p in enumerate(plans)})
    assert len(text) < len(full) / 3  # each session's ids follow from its place in the store's answer
    read = {}
    for name, chunk in (("stamped", text), ("full", full)):
        (tmp_path / name / "sessions").mkdir(parents=True)
        (tmp_path / name / "sessions" / "c0.json").write_text(chunk)
        read[name] = runfolder.load_session_entries(tmp_path / name, "c0")
    assert read["stamped"] == read["full"]
    # a chunk file written before stamps were (no "stamps"): a job queued then still reads it
    (tmp_path / "full" / "sessions" / "c0.json").write_text(json.dumps({k: v for k, v in json.loads(full).items()
                                                                         if k != "stamps"}))
    assert runfolder.load_session_entries(tmp_path / "full", "c0") == read["full"]
    assert runfolder.load_session_entry(tmp_path / "stamped", "c0", 7) == read["full"]["7"]
    assert read["full"]["7"] == {"eid": plans[7].session, "path": str(plans[7].session_path),
                                 "tasks": [{**{k: t[k] for k in runfolder._TYPE_FIELDS}, "id": t["id"],
                                            "status": t["status"], "parents": t["parents"], "session": t["session"]}
                                           for t in plans[7].deck]}
    assert {t["id"]: t for p in plans for t in p.deck} == {t["id"]: t for t in store.list_tasks()}


def test_a_stamped_plan_changed_by_its_reader_is_planned_as_changed(stores, tmp_path):
    """Resources applied to a plan's records (``resources.apply``) make it a plan of its own."""
    from hpcpipe.slurm import layout as layouts

    store, ledger = stores
    plans = plan_sessions(sessions(tmp_path, 3), PIPELINE, store, ledger)
    plans[1].items[0].task["cpu"] = 4
    plans[1].origin = None
    layout = layouts.arrays(plans, 1000)
    raws = [c for c in layout.calls if c.task_name == "Raw"]
    assert sorted(c.columns()[0] for c in raws) == [[0, 2], [1]]
    assert next(c for c in raws if c.columns()[0] == [1]).members[0][1].task["cpu"] == 4


def test_ledger_fills_in_one_calls_job_id_through_an_index(tmp_path):
    """``submitted`` finds one call's rows by (run, script) without a scan, and no index is
    rewritten for each row when the job id arrives."""
    ledger = Ledger(tmp_path / "jobs.sqlite")
    plan = " ".join(r[-1] for r in ledger._db.execute(
        "EXPLAIN QUERY PLAN UPDATE jobs SET job_id='1', state='PENDING' WHERE run_id='r' AND script='s'"))
    assert "USING INDEX jobs_call" in plan, plan
    indexed = {r[0] for r in ledger._db.execute("SELECT name FROM pragma_index_info('jobs_call')")}
    on_job_id = [r[0] for r in ledger._db.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='jobs' "
                                                  "AND sql LIKE '%job_id%' AND sql NOT LIKE '%WHERE%'")]
    assert indexed == {"run_id", "script"} and on_job_id == []


def test_backfill_intents_of_every_call_in_one_transaction_job_ids_without_waiting_for_the_disk(tmp_path):
    """A run's intents: one statement per call, one commit for all (durable: before the first
    sbatch); the job id of each call is committed with ``synchronous=NORMAL`` (a power cut that
    loses it leaves the intent, which the next refresh adopts), the connection back to FULL after."""
    ledger = Ledger(tmp_path / "jobs.sqlite")
    seen: list[str] = []
    ledger._db.set_trace_callback(seen.append)
    common = {"run_id": "bf-1", "backend": "slurm", "job_id": "", "run_dir": "/r", "state": "SUBMITTING"}
    ledger.record_arrays([(dict(common, task_name=name, script=f"{name}.c0"), [f"{name}{i}" for i in range(100)],
                           [f"s{i}" for i in range(100)], list(range(100))) for name in ("Raw", "Sync", "QC")])
    assert [s.split()[0] for s in seen] == ["BEGIN", *["INSERT"] * 6, "COMMIT"]  # a row and its members each
    seen.clear()
    ledger.submitted("bf-1", "Sync.c0", "77")
    ledger._db.set_trace_callback(None)
    assert seen[0] == "PRAGMA synchronous=NORMAL" and seen[-1] == "PRAGMA synchronous=FULL"
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    jobs = {j.task_id: j for j in ledger.run("bf-1")}
    assert len(jobs) == 300 and jobs["Sync5"].backend_id == "77_5" and jobs["Raw5"].intent
    # one row per array, not per element: the job id was written once
    count = lambda table: ledger._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: E731
    assert (count("arrays"), count("jobs")) == (3, 0)
    assert sum(s.startswith("UPDATE arrays SET job_id") for s in seen) == 1


def _calls(n: int = 50) -> list[tuple[dict, list[str], list[str], list[int]]]:
    """Two runs' arrays as a backfill records them (one submitted, one still an intent)."""
    common = {"backend": "slurm", "run_dir": "/r", "chunk": "c0", "reason": None}
    return [(dict(common, run_id=run, task_name=name, script=f"{name}.c0", job_id=job, state=state),
             [f"{run}-{name}{i}" for i in range(n)], [f"s{i}" for i in range(n)], list(range(3, n + 3)))
            for run, name, job, state in (("bf-1", "Raw", "40", "PENDING"), ("bf-1", "QC", "41", "PENDING"),
                                          ("bf-2", "Raw", "", "SUBMITTING"))]


def _answers(ledger: Ledger) -> dict:
    """What every reader of the ledger is told (times left out: the two ledgers are written apart;
    records sorted: the order of different tasks' jobs of one second is not kept by a split)."""
    plain = lambda recs: sorted((*(v for k, v in vars_(r).items() if k not in ("submitted", "updated")),)  # noqa: E731
                                for r in recs)
    vars_ = lambda r: {f: getattr(r, f) for f in r.__slots__}  # noqa: E731
    ids = ["bf-1-Raw3", "bf-1-QC7", "bf-2-Raw0", "nothing"]
    watched, groups = ledger.watched("slurm", None)
    return {"run": plain(ledger.run("bf-1")), "live": plain(ledger.live("slurm")), "all": plain(ledger.history()),
            "history": plain(ledger.history(ids)), "latest": {k: plain([v]) for k, v in ledger.latest(ids).items()},
            "shown": ledger.shown(), "shown_some": ledger.shown(ids), "intents": plain(ledger.intents("slurm", None)),
            "watched": sorted(watched), "groups": sorted(groups), "runs": ledger.unfolded_runs("slurm", None),
            "unfolded_in": plain(ledger.unfolded_in("slurm", None, "/r", ids)), "remotes": ledger.remotes("slurm"),
            "provisional": plain(ledger.provisional("slurm", None, "bf-2")), "run_dirs": ledger.run_dirs()}


def test_an_array_is_one_row_until_an_element_parts_ways_and_reads_the_same_either_way(tmp_path):
    """The same calls recorded as arrays rows and as a row per element give every reader the same
    answer; a write about one element splits its array alone (the others stay one row each),
    and the answers stay the same as the per-element ledger's after the same write."""
    arrays, rows = Ledger(tmp_path / "arrays.sqlite"), Ledger(tmp_path / "rows.sqlite")
    arrays.record_arrays(_calls())
    rows.record([dict(common, task_id=t, session=s, array_index=i)
                 for common, tids, sessions, indices in _calls() for t, s, i in zip(tids, sessions, indices)])
    count = lambda led, table: led._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: E731
    assert (count(arrays, "arrays"), count(arrays, "jobs")) == (3, 0)
    assert _answers(arrays) == _answers(rows)
    # an intent has no job id yet: none shown, whatever its array index
    assert arrays.shown(["bf-2-Raw0"])["bf-2-Raw0"][:2] == ("slurm", None)
    assert {j.backend_id for j in arrays.intents("slurm", None)} == {""}
    for led in (arrays, rows):
        led.set_state([("bf-1-QC7", "bf-1", "RUNNING", None)])
        led.set_folded([("bf-1-QC9", "bf-1", 2, False)])
    assert (count(arrays, "arrays"), count(arrays, "jobs")) == (2, 50)  # QC's array alone was split
    assert _answers(arrays) == _answers(rows)
    for led in (arrays, rows):
        led.set_array_state("slurm", None, "40", ("PENDING", None), ("PENDING", "Priority"))
        led.forget([(f"bf-2-Raw{i}", "bf-2") for i in range(10)])
    assert (count(arrays, "arrays"), count(arrays, "jobs")) == (1, 90)
    assert _answers(arrays) == _answers(rows)
    with pytest.raises(ValueError):  # a final state is an element's own, never an array row's
        arrays.set_array_state("slurm", None, "40", ("PENDING", "Priority"), ("CANCELLED", None))
    # news about elements that have their rows already reads no array's members
    seen: list[str] = []
    arrays._db.set_trace_callback(seen.append)
    arrays.set_state([("bf-1-QC8", "bf-1", "RUNNING", None)])
    arrays._db.set_trace_callback(None)
    assert not [q for q in seen if "array_members" in q], seen
    assert arrays._db.execute("SELECT count(*) FROM arrays").fetchone()[0] == 1  # bf-1's Raw array kept whole


def test_limits_read_ahead_on_a_thread_once_and_its_failure_raised_when_asked(tmp_path, monkeypatch):
    """``SlurmBackend.read_limits_ahead`` returns before the cluster answers (a backfill reads
    and checks its session paths meanwhile); ``limits`` waits for that one read, and raises what
    it raised, where the read would have raised without it."""
    import threading

    from hpcpipe.errors import BackendError
    from hpcpipe.slurm.backend import SlurmBackend
    from hpcpipe.transport import LocalTransport, Result

    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home"))
    release = threading.Event()

    class Slow(LocalTransport):
        def __init__(self, fail: bool = False) -> None:
            self.commands: list[str] = []
            self.fail = fail

        def run(self, argv, input=None, timeout=120.0, *, repeatable=False):
            release.wait(10)
            self.commands.append(" ".join(argv[:3]))
            code = 1 if self.fail and argv[:3] == ["scontrol", "show", "config"] else 0
            return Result(list(argv), code, "MaxArraySize = 77\n" if argv[:3] == ["scontrol", "show", "config"]
                          else "", "down" if code else "")

    ledger = Ledger(tmp_path / "jobs.sqlite")
    backend = SlurmBackend(None, ledger, transport=Slow())
    backend.read_limits_ahead()
    backend.read_limits_ahead()  # one read at a time
    assert backend.transport.commands == []  # nothing answered yet, and we are not waiting
    release.set()
    assert backend.limits.max_array_size == 77
    once = list(backend.transport.commands)
    assert backend.limits is backend.limits and backend.transport.commands == once
    assert sum(c.startswith("scontrol show config") for c in once) == 1

    failing = SlurmBackend(None, ledger, transport=Slow(fail=True))
    failing.read_limits_ahead()
    with pytest.raises(BackendError):
        _ = failing.limits


def test_backfill_starts_the_limits_read_before_checking_paths_and_still_reports_a_bad_path(tmp_path, monkeypatch,
                                                                                              capsys):
    """The CLI asks for the limits first (``_slurm_ahead``), then reads and checks the session
    file: a bad path is reported as before, and nothing is written."""
    from hpcpipe import cli, session
    from hpcpipe.slurm.backend import SlurmBackend

    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HPCPIPE_CONFIG", str(tmp_path / "none.toml"))
    events: list[str] = []
    monkeypatch.setattr(SlurmBackend, "read_limits_ahead", lambda self: events.append("ahead"))
    real = session.parse_session_paths
    monkeypatch.setattr(session, "parse_session_paths", lambda paths: (events.append("paths"), real(paths))[1])
    listing = tmp_path / "sessions.txt"
    listing.write_text("\n".join(map(str, sessions(tmp_path / "data", 2))) + f"\n{tmp_path}/nowhere/S1/2026-11-20/001\n")
    assert cli.main(["backfill", "--sessions-file", str(listing), "--pipeline", PIPELINE]) != 0
    assert events == ["ahead", "paths"]
    assert "does not exist" in capsys.readouterr().err
    assert Ledger(tmp_path / "home" / "jobs.sqlite").run_dirs() == []
