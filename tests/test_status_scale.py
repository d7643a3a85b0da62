"""What makes ``hpcpipe status`` of a whole backfill cheap, pinned as mechanisms (the timings are
printed by scripts/bench/backfill.py, never asserted): a refresh that learns nothing builds no
ledger record and opens no result file, a pending array range is one state for its elements,
and news about one element loads that element's record alone.

SLURM's side is recorded text in SLURM's own formats (tests/slurm/test_parsers.py pins the
parsers against output of the real test cluster); the run folder, the ledger and the store are
the real ones.
"""
from __future__ import annotations

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
    for array in ARRAYS:
        ledger.record_array({"run_id": RUN, "backend": "slurm", "job_id": array, "task_name": f"T{array}",
                             "state": "PENDING", "reason": "Priority", "run_dir": str(run_dir), "chunk": "c0",
                             "script": f"s{array}"},
                            [f"t{array}-{i}" for i in range(N)], [f"eid-{i}" for i in range(N)], list(range(N)))
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
    assert cluster.commands == ["sacct", "squeue"]  # one batched query each, not one per array


def test_news_about_one_element_loads_that_element_alone(backfilled):
    backend, cluster, ledger, records, run_dir = backfilled
    cluster.rows = {"500_[0-6,8-999]": ("PENDING", "Priority"), "500_7": ("RUNNING", "None"),
                    "501_[0-999]": ("PENDING", "Priority"), "502_[0-999]": ("PENDING", "Priority")}
    backend.refresh()
    assert sum(records) == 1, records
    assert {(j.backend_id, j.state) for j in ledger.live("slurm") if j.state != "PENDING"} == {("500_7", "RUNNING")}
    # its result appears: exactly that file is read (the 2,999 others have none)
    result = runfolder.result_path(run_dir, "t500-7")
    Path(result).write_text('{"task_id": "t500-7", "ops": [], "final": false}')
    cluster.reads.clear()
    backend.refresh()
    assert cluster.reads == [str(result)]


def test_a_whole_array_changing_state_is_written_once_per_element(backfilled):
    """SLURM's reason changes for all 1,000 elements of one array: each of its rows is loaded and
    written once, the other arrays' rows not at all."""
    backend, cluster, ledger, records, _ = backfilled
    cluster.rows["501_[0-999]"] = ("PENDING", "Resources")
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    backend.refresh()
    ledger._db.set_trace_callback(None)
    assert sum(records) == N
    assert {j.reason for j in ledger.live("slurm") if j.job_id == "501"} == {"Resources"}
    assert sum(s.startswith("UPDATE jobs SET state") for s in statements) == N


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
