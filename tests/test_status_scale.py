"""What makes ``hpcpipe status`` of a whole backfill cheap, pinned as mechanisms (the timings are
printed by scripts/bench/backfill.py, never asserted): a refresh that learns nothing builds no
ledger record and opens no result file, a pending array range is one state for its elements,
and news about one element loads that element's record alone.

SLURM's side is recorded text in SLURM's own formats (tests/slurm/test_parsers.py pins the
parsers against output of the real test cluster); the run folder, the ledger and the store are
the real ones.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcpipe.jobside import runfolder
from hpcpipe.ledger import Ledger
from hpcpipe.slurm.backend import SlurmBackend
from hpcpipe.store.sqlite import SQLiteStore
from hpcpipe.transport import LocalTransport, Result

RUN = "bf-20261202-000000-abcdef"
ARRAYS = ("500", "501", "502")
N = 1000  # elements per array


class _Cluster(LocalTransport):
    """Files for real (the run folder); squeue and sacct answer with ``self.rows``: one line per
    job id or pending range, in the ``-O``/``--format`` fields hpcpipe asks for."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, str]] = {}  # squeue job id -> (state, reason)
        self.reads: list[str] = []
        self.listings: list[str] = []
        self.commands: list[str] = []

    def run(self, argv, input=None, timeout=120.0, *, repeatable=False):
        self.commands.append(argv[0])
        lines = []
        for job_id, (state, reason) in self.rows.items():
            array = job_id.split("_")[0]
            if argv[0] == "squeue":
                lines.append(f"{job_id}|{array}|{array}|{state}|0|{reason}|0:00||cpu|hpcpipe:s{array}|{RUN}|")
            else:
                lines.append(f"{job_id}|{array}|{state}|0:0|{reason}|00:00:00|None assigned|cpu|{RUN}")
        return Result(list(argv), 0, "\n".join(lines) + "\n", "")

    def read_file(self, path):
        self.reads.append(path)
        return super().read_file(path)

    def list_dir(self, path):
        self.listings.append(path)
        return super().list_dir(path)


@pytest.fixture
def backfilled(tmp_path, monkeypatch):
    """3 arrays of 1,000 pending elements, recorded as a backfill records them."""
    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home"))
    store, ledger = SQLiteStore(tmp_path / "tasks.sqlite"), Ledger(tmp_path / "jobs.sqlite")
    run_dir = tmp_path / "runs" / RUN
    (run_dir / "results").mkdir(parents=True)
    ledger.record_arrays([({"run_id": RUN, "backend": "slurm", "job_id": array, "task_name": f"T{array}",
                            "state": "PENDING", "reason": "Priority", "run_dir": str(run_dir), "chunk": "c0",
                            "script": f"s{array}"},
                           [f"t{array}-{i}" for i in range(N)], [f"eid-{i}" for i in range(N)], list(range(N)))
                          for array in ARRAYS])
    cluster = _Cluster()
    cluster.rows = {f"{a}_[0-{N - 1}]": ("PENDING", "Priority") for a in ARRAYS}
    records: list[int] = []
    select = ledger._select
    monkeypatch.setattr(ledger, "_select", lambda *a, **k: records.append(len(found := select(*a, **k))) or found)
    return SlurmBackend(store, ledger, transport=cluster), cluster, ledger, records, run_dir


def test_a_poll_that_learns_nothing_builds_no_record_and_opens_no_result(backfilled):
    backend, cluster, ledger, records, _ = backfilled
    report = backend.refresh()
    assert report.checked == len(ARRAYS) * N and report.swept == 0
    assert sum(records) == 0, records  # no JobRecord built for 3,000 unchanged elements
    assert cluster.reads == [] and len(cluster.listings) == 1  # one listing of the run's results
    assert cluster.commands == ["squeue"]  # one batched query, not one per array; the controller lists them all


def test_a_poll_that_learns_nothing_parses_no_arrays_elements(backfilled, monkeypatch):
    """Every refresh looks for jobs with provisional ids (a backfill on Alyx whose records are
    made later): only arrays whose elements' text holds one are parsed, and here none does."""
    from hpcpipe import ledger as ledger_module
    from hpcpipe import recorder

    backend, _, ledger, _, run_dir = backfilled
    parsed: list[int] = []
    loads = json.loads
    monkeypatch.setattr(ledger_module.json, "loads",
                        lambda text, **k: (parsed.append(len(text)) if text.startswith('[["t') else None)
                        or loads(text, **k))
    backend.refresh()
    assert parsed == []
    # an array of provisional ids is parsed, and its elements found
    ledger.record_arrays([({"run_id": RUN, "backend": "slurm", "job_id": "600", "task_name": "P", "state": "PENDING",
                            "run_dir": str(run_dir), "chunk": "c0", "script": "s600"},
                           [f"{recorder.PREFIX}{i}" for i in range(3)], ["eid-0"] * 3, [0, 1, 2])])
    found = ledger.provisional("slurm", None, recorder.PREFIX)
    assert sorted(j.task_id for j in found) == [f"{recorder.PREFIX}{i}" for i in range(3)]


def test_news_about_one_element_loads_that_element_alone(backfilled):
    backend, cluster, ledger, records, run_dir = backfilled
    cluster.rows = {"500_[0-6,8-999]": ("PENDING", "Priority"), "500_7": ("RUNNING", "None"),
                    "501_[0-999]": ("PENDING", "Priority"), "502_[0-999]": ("PENDING", "Priority")}
    backend.refresh()
    assert sum(records) == 1, records
    assert {(j.backend_id, j.state) for j in ledger.live("slurm") if j.state != "PENDING"} == {("500_7", "RUNNING")}
    # the array with news became a row per element; the two without are still one row each
    assert [r[0] for r in ledger._db.execute("SELECT job_id FROM arrays ORDER BY job_id")] == ["501", "502"]
    # its result appears: exactly that file is read (the 2,999 others have none)
    result = runfolder.result_path(run_dir, "t500-7")
    Path(result).write_text('{"task_id": "t500-7", "ops": [], "final": false}')
    cluster.reads.clear()
    backend.refresh()
    assert cluster.reads == [str(result)]


def test_a_whole_array_moving_to_one_new_state_is_one_statement(backfilled):
    """SLURM's reason changes for all 1,000 elements of one array (a backfill's first poll: every
    element pending with a reason now): no record is built, one statement writes the array's rows,
    the other arrays' rows are not written. A new state that needs a task record (a parent
    failed: DependencyNeverSatisfied, the tasks Held) is still handled element by element."""
    from hpcpipe.jobside.outcome import pending
    from hpcpipe.slurm.status import JobState

    backend, cluster, ledger, records, _ = backfilled
    cluster.rows["501_[0-999]"] = ("PENDING", "Resources")
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    report = backend.refresh()
    ledger._db.set_trace_callback(None)
    assert sum(records) == 0 and report.checked == len(ARRAYS) * N
    assert {j.reason for j in ledger.live("slurm") if j.job_id == "501"} == {"Resources"}
    assert {j.reason for j in ledger.live("slurm") if j.job_id != "501"} == {"Priority"}
    assert sum(s.startswith("UPDATE arrays SET state") for s in statements) == 1
    assert not any(s.startswith("INSERT") for s in statements)  # no array was split into rows
    # what keeps a state that needs a record off that path (outcome.pending says so without a read)
    held = JobState(job_id="502_[0-999]", array_job_id="502", array_index=None, name=RUN, state="PENDING",
                    reason="DependencyNeverSatisfied",
                    indices=tuple(range(N)))
    assert pending(held, None, False, True) is not None


def test_holding_a_whole_backfill_reads_no_task_from_the_store(backfilled, monkeypatch):
    """``scontrol hold`` of the arrays (reason JobHeldUser, one a requeue may also show): a job
    that never ran cannot have a Started task, so the 3,000 new states are written without a
    store read per element."""
    backend, cluster, ledger, records, _ = backfilled
    reads: list[str] = []
    get_task = backend.store.get_task
    monkeypatch.setattr(backend.store, "get_task", lambda tid: reads.append(tid) or get_task(tid))
    cluster.rows = {f"{a}_[0-{N - 1}]": ("PENDING", "JobHeldUser") for a in ARRAYS}
    backend.refresh()
    assert {j.reason for j in ledger.live("slurm")} == {"JobHeldUser"} and reads == []


# ---------------------------------------------------------------- status --json rendered by SQLite
@pytest.fixture
def varied(tmp_path, monkeypatch):
    """Tasks of every shape a status row has: levels and priorities (and none), statuses, two
    sessions, a task with two jobs (the later one is shown), array elements and plain jobs, local
    and SLURM jobs, a task with no job, resources and elapsed times as floats."""
    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home"))
    store, ledger = SQLiteStore(tmp_path / "tasks.sqlite"), Ledger(tmp_path / "jobs.sqlite")
    from hpcpipe.session import parse_session_path

    paths = []
    for n in (1, 2):
        p = tmp_path / "data" / "lab" / "Subjects" / "S1" / "2026-11-20" / f"00{n}"
        p.mkdir(parents=True)
        paths.append(parse_session_path(p))
    eids = store.session_ids(paths, create=True)
    specs = [  # name, level, priority, status, ram, elapsed
        ("A", 0, None, "Complete", 1, 4.25), ("B", 1, 50, "Errored", 1.5, 0.125), ("C", 1, 90, "Waiting", 2, None),
        ("D", None, None, "Held", 4, None), ("E", 2, 10, "Started", 8, 12.5), ("F", 0, 3, "Empty", 1, 0.0),
        ("G", 1, 20, "Waiting", 1, None)]
    tasks = store.create_tasks([{"session": e, "name": f"{name}", "level": level, "priority": prio, "status": status,
                                 "ram": ram, "cpu": 2, "gpu": 0, "time_elapsed_secs": elapsed, "executable": "x.T"}
                                for e in eids for name, level, prio, status, ram, elapsed in specs])
    jobs = []
    for k, t in enumerate(tasks):
        if t["name"] in ("F", "G"):
            continue  # never submitted; in a live array (below)
        jobs.append({"task_id": t["id"], "session": t["session"], "task_name": t["name"], "run_id": "run-1",
                     "backend": "slurm", "job_id": "700", "array_index": k, "state": "COMPLETED"})
        if t["name"] in ("B", "E"):  # a second attempt, in a later run: the one shown
            jobs.append({"task_id": t["id"], "session": t["session"], "task_name": t["name"], "run_id": "run-2",
                         "backend": "local" if t["name"] == "E" else "slurm", "job_id": f"9{k}", "state": "PENDING"})
    for j in jobs:
        ledger.record([j])
        ledger._write("UPDATE jobs SET submitted=? WHERE task_id=? AND run_id=?",
                      [(f"2026-12-0{j['run_id'][-1]}T10:00:00", j["task_id"], j["run_id"])])
    c = next(t for t in tasks if t["name"] == "C")  # a row of a later run with no time: not shown
    ledger.record([{"task_id": c["id"], "session": c["session"], "task_name": "C", "run_id": "run-3",
                    "backend": "slurm"}])
    ledger._write("UPDATE jobs SET submitted=NULL WHERE run_id=?", [("run-3",)])  # as an old ledger's rows
    gs = [t for t in tasks if t["name"] == "G"]  # a live array: one ledger row for both elements
    ledger.record_arrays([({"run_id": "run-4", "backend": "slurm", "job_id": "800", "task_name": "G",
                            "state": "PENDING", "script": "G.c0"}, [t["id"] for t in gs], [t["session"] for t in gs],
                           [3, 4])])
    return store, ledger, eids


@pytest.mark.parametrize("session, statuses", [(None, []), (0, []), (None, ["Waiting", "Held"]), (1, ["Errored"])])
def test_status_json_rendered_by_sqlite_is_the_rows_json_dumps_writes(varied, session, statuses):
    """The rows SQLite writes are, text for text, what ``json.dumps`` of the CLI's rows writes:
    the same keys in the same order, the same values (the latest job of each task), the same order
    of tasks (level, then priority, then creation), the same filters."""
    from hpcpipe import cli, jsonview

    store, ledger, eids = varied
    sid = None if session is None else eids[session]
    rows = cli._json_rows(cli._rows(store, ledger, sid, statuses, reasons=False), local=False, reasons=False)
    expected = json.dumps(rows, separators=(",", ":"))
    assert jsonview.status_json(store, ledger, cli._ROW_FIELDS, sid, statuses) == expected
    assert rows and {r["job_id"] for r in rows} - {None}  # the comparison saw jobs
    if session is None and not statuses:
        shown = {(r["session"], r["name"]): (r["backend"], r["job_id"]) for r in rows}
        assert shown[eids[0], "E"] == ("local", "94") and shown[eids[0], "F"] == (None, None)
        assert shown[eids[0], "C"] == ("slurm", "700_2")
        assert (shown[eids[0], "G"], shown[eids[1], "G"]) == (("slurm", "800_3"), ("slurm", "800_4"))
        assert [r["name"] for r in rows[:4]] == ["A", "A", "F", "F"]  # level 0: no priority first, then 3


def test_status_json_of_the_embedded_store_builds_no_row_in_python(varied, monkeypatch, capsys):
    """``hpcpipe status --json`` with the embedded store: the rows are SQLite's text, the
    CLI's per-row path is not taken (with ``--reason`` it is: the reason is Python's)."""
    from hpcpipe import cli

    store, ledger, _ = varied
    monkeypatch.setattr(cli, "_store", lambda settings: store)
    monkeypatch.setattr(cli, "_ledger", lambda settings: ledger)
    built = []
    rows = cli._rows
    monkeypatch.setattr(cli, "_rows", lambda *a, **k: built.append(1) or rows(*a, **k))
    assert cli.main(["status", "--json"]) == 0
    assert built == [] and len(json.loads(capsys.readouterr().out)) == 14
    assert cli.main(["status", "--json", "--reason"]) == 0
    assert built == [1] and all("reason" in r for r in json.loads(capsys.readouterr().out))


def test_a_result_reported_under_a_provisional_id_is_folded_in_the_poll_that_adopts_it(tmp_path, monkeypatch):
    """A backfill job whose record was not made yet reports under its provisional id; the poll
    that makes the record moves the result file to the store id and folds it then (its listing
    follows the move), so the sweep never takes the ended job for one that left no result."""
    from hpcpipe import recorder
    from hpcpipe.session import parse_session_path

    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home"))
    store, ledger = SQLiteStore(tmp_path / "tasks.sqlite"), Ledger(tmp_path / "jobs.sqlite")
    path = tmp_path / "data" / "lab" / "Subjects" / "S1" / "2026-11-20" / "001"
    path.mkdir(parents=True)
    eid = store.session_ids([parse_session_path(path)], create=True)[0]
    template = [{"name": "Raw", "status": "Waiting", "parents": [], "arguments": {}, "graph": "rec",
                 "executable": "x.Raw", "level": 0, "priority": 100, "cpu": 1, "gpu": 0, "ram": 1, "io_charge": 0,
                 "time_out_secs": 600, "version": None}]
    deck = recorder.stamp(template, [eid])[0]
    provisional = deck[0]["id"]
    run_dir = tmp_path / "runs" / RUN
    for sub in ("sessions", "results", recorder.RECORDS):
        (run_dir / sub).mkdir(parents=True)
    (run_dir / "sessions" / "c0.json").write_text(runfolder.sessions_json({0: runfolder.session_entry(
        eid, str(path), deck)}))
    ledger.record([{"task_id": provisional, "session": eid, "task_name": "Raw", "run_id": RUN, "backend": "slurm",
                    "job_id": "600", "state": "RUNNING", "run_dir": str(run_dir), "chunk": "c0", "script": "s600"}])
    result = {"task_id": provisional, "final": True,
              "ops": [{"op": "update_task", "payload": {"task_id": provisional, "status": "Complete"}}]}
    Path(runfolder.result_path(run_dir, provisional)).write_text(json.dumps(result))
    cluster = _Cluster()
    cluster.rows = {"600": ("COMPLETED", "None")}
    report = SlurmBackend(store, ledger, transport=cluster).refresh()
    (task,) = store.list_tasks(session=eid)
    assert task["status"] == "Complete" and report.folded == 1, (task, report)
    assert [j.task_id for j in ledger.history()] == [task["id"]] and ledger.history()[0].folded


def test_a_requeued_jobs_earlier_final_report_does_not_close_it(tmp_path, monkeypatch):
    """A job reopened after its final report (SLURM requeued it): a poll that reads the result
    before the next attempt writes, and then finds the job COMPLETED, folds the next attempt's
    report, instead of closing the job on the earlier attempt's final (the task stayed Waiting
    for good, in CI)."""
    from hpcpipe.session import parse_session_path

    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home"))
    store, ledger = SQLiteStore(tmp_path / "tasks.sqlite"), Ledger(tmp_path / "jobs.sqlite")
    path = tmp_path / "data" / "lab" / "Subjects" / "S1" / "2026-11-20" / "001"
    path.mkdir(parents=True)
    eid = store.session_ids([parse_session_path(path)], create=True)[0]
    (task,) = store.create_tasks([{"session": eid, "name": "FailFirst", "status": "Waiting", "executable": "x.F"}])
    tid = task["id"]
    run_dir = tmp_path / "runs" / RUN
    (run_dir / "results").mkdir(parents=True)
    op = lambda status: {"op": "update_task", "payload": {"task_id": tid, "status": status}}  # noqa: E731
    first = {"task_id": tid, "final": True, "ops": [op("Started"), op("Errored")]}
    second = dict(first, ops=first["ops"] + [op("Started"), op("Complete")])
    result = Path(runfolder.result_path(run_dir, tid))
    result.write_text(json.dumps(first))
    ledger.record([{"task_id": tid, "session": eid, "task_name": "FailFirst", "run_id": RUN, "backend": "slurm",
                    "job_id": "700", "state": "PENDING", "run_dir": str(run_dir), "chunk": "c0", "script": "s700"}])
    ledger.set_folded([(tid, RUN, 2, False)])  # reopened: its first report folded, the job pending again

    class NextAttemptWritesAfterTheFold(_Cluster):
        def read_file(self, path):
            text = super().read_file(path)
            if path == str(result) and len(self.reads) == 1:  # the attempt writes its report now
                result.write_text(json.dumps(second))
            return text

    cluster = NextAttemptWritesAfterTheFold()
    cluster.rows = {"700": ("COMPLETED", "None")}
    SlurmBackend(store, ledger, transport=cluster).refresh()
    assert store.get_task(tid)["status"] == "Complete"
    (job,) = ledger.history([tid])
    assert (job.state, job.folded, job.folded_ops) == ("COMPLETED", 1, 4)


# ---------------------------------------------------------------- a whole backfill ended at once
@pytest.fixture
def stored(tmp_path, monkeypatch):
    """The ``backfilled`` arrays, their elements real task records (Waiting) of the store."""
    from hpcpipe.session import parse_session_path

    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home"))
    store, ledger = SQLiteStore(tmp_path / "tasks.sqlite"), Ledger(tmp_path / "jobs.sqlite")
    paths = []
    for i in range(N):
        p = tmp_path / "data" / "lab" / "Subjects" / f"S{i}" / "2026-11-20" / "001"
        p.mkdir(parents=True)
        paths.append(parse_session_path(p))
    eids = store.session_ids(paths, create=True)
    run_dir = tmp_path / "runs" / RUN
    (run_dir / "results").mkdir(parents=True)
    tasks = {a: store.create_tasks([{"session": e, "name": f"T{a}", "status": "Waiting"} for e in eids]) for a in ARRAYS}
    ledger.record_arrays([({"run_id": RUN, "backend": "slurm", "job_id": a, "task_name": f"T{a}", "state": "PENDING",
                            "reason": "Priority", "run_dir": str(run_dir), "chunk": "c0", "script": f"s{a}"},
                           [t["id"] for t in tasks[a]], eids, list(range(N))) for a in ARRAYS])
    return store, ledger, run_dir


class _Counted:
    """Statements and store reads of one refresh or cancel."""

    def __init__(self, store, monkeypatch) -> None:
        self.statements: list[str] = []
        self.reads: list[str] = []
        store._db.set_trace_callback(self.statements.append)
        get_task = store.get_task
        monkeypatch.setattr(store, "get_task", lambda tid: self.reads.append(tid) or get_task(tid))

    @property
    def commits(self) -> int:
        return sum(s == "COMMIT" for s in self.statements)


def test_a_backfill_cancelled_outside_hpcpipe_is_closed_in_one_store_transaction(stored, monkeypatch):
    """``scancel --name RUN``: sacct has each pending array as one CANCELLED record, squeue has
    nothing. The 3,000 tasks are read in one query and their log lines written in one
    transaction (was: two reads and one transaction per task, 40 s for a 60,000-task backfill),
    and no result file is opened: the run's results folder is listed after SLURM's answer."""
    store, ledger, run_dir = stored

    class Cancelled(_Cluster):
        def run(self, argv, input=None, timeout=120.0, *, repeatable=False):
            if argv[0] == "squeue":
                self.commands.append(argv[0])
                return Result(list(argv), 0, "", "")
            return super().run(argv, input, timeout, repeatable=repeatable)

    cluster = Cancelled()
    cluster.rows = {f"{a}_[0-{N - 1}]": ("CANCELLED by 0", "None") for a in ARRAYS}
    counted = _Counted(store, monkeypatch)
    report = SlurmBackend(store, ledger, transport=cluster).refresh()
    assert report.swept == len(ARRAYS) * N
    assert counted.reads == [] and counted.commits == 1, counted.commits
    assert sum(s.startswith("SELECT") and "FROM tasks WHERE id IN" in s for s in counted.statements) == 1
    assert [r for r in cluster.reads if "/results/" in r] == [] and cluster.listings == [str(run_dir / "results")] * 2
    tasks = store.list_tasks()
    assert {t["status"] for t in tasks} == {"Held"} and all(t["log"].count("CANCELLED before it ran") == 1 for t in tasks)
    # each log line names the task's own element, not the range SLURM's row stood for
    by_id = {t["id"]: t for t in tasks}
    assert all(f"SLURM job {j.backend_id} CANCELLED" in by_id[j.task_id]["log"] for j in ledger.history())
    assert ledger.live("slurm") == [] and all(j.folded for j in ledger.history())
    # the next poll has nothing to close, and writes nothing
    counted.statements.clear()
    assert SlurmBackend(store, ledger, transport=cluster).refresh().swept == 0 and counted.commits == 0


def test_hpcpipe_cancel_of_a_run_is_one_scancel_argument_per_array_and_one_store_transaction(stored, monkeypatch):
    """scancel sends one RPC per argument: 60,000 element ids were 60 calls of 1,000 (41 s on the
    test cluster; tests/slurm/test_cluster.py cancels elements as one expression for real)."""
    store, ledger, _ = stored
    argvs: list[list[str]] = []

    class Recording(_Cluster):
        def run(self, argv, input=None, timeout=120.0, *, repeatable=False):
            if argv[0] == "scancel":
                argvs.append(list(argv))
                return Result(list(argv), 0, "", "")
            return super().run(argv, input, timeout, repeatable=repeatable)

    backend = SlurmBackend(store, ledger, transport=Recording())
    jobs = ledger.live("slurm")
    for j in jobs[:5]:  # some of them split out already (SLURM started them): plain jobs rows
        ledger.set_state([(j.task_id, j.run_id, "RUNNING", None)])
    jobs = ledger.live("slurm")
    counted = _Counted(store, monkeypatch)
    assert backend.cancel(jobs) == len(ARRAYS) * N
    assert argvs == [["scancel", *(f"{a}_[0-{N - 1}]" for a in ARRAYS)]]
    assert counted.reads == [] and counted.commits == 1
    assert {t["status"] for t in store.list_tasks()} == {"Errored"} and ledger.live("slurm") == []


def test_a_refresh_killed_between_the_store_and_the_ledger_records_nothing_twice(stored, monkeypatch):
    """The sweep commits the task records, then the ledger's news. A process that dies between
    the two leaves the jobs live in the ledger: the next poll closes them again and finds their
    tasks recorded already, so each task keeps one line."""
    store, ledger, _ = stored

    class Cancelled(_Cluster):
        def run(self, argv, input=None, timeout=120.0, *, repeatable=False):
            if argv[0] == "squeue":
                return Result(list(argv), 0, "", "")
            return super().run(argv, input, timeout, repeatable=repeatable)

    cluster = Cancelled()
    cluster.rows = {f"{a}_[0-{N - 1}]": ("CANCELLED by 0", "None") for a in ARRAYS}

    update = ledger.update

    def killed(**news):
        if news.get("states"):  # the sweep's write: the process stops here, its store batch committed
            raise KeyboardInterrupt
        update(**news)

    with monkeypatch.context() as m:
        m.setattr(ledger, "update", killed)
        with pytest.raises(KeyboardInterrupt):
            SlurmBackend(store, ledger, transport=cluster).refresh()
    assert {t["status"] for t in store.list_tasks()} == {"Held"} and len(ledger.live("slurm")) == len(ARRAYS) * N
    SlurmBackend(store, ledger, transport=cluster).refresh()
    assert ledger.live("slurm") == []
    assert all(t["log"].count("CANCELLED before it ran") == 1 for t in store.list_tasks())
