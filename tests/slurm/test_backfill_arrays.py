"""How a backfill goes out on the real cluster, pinned as mechanisms: sessions stamped from one
template are submitted per task type (one array and one ledger statement each, whatever the
number of sessions), sessions with records of their own per task as before, in the same chunk.
Jobs are submitted held (``--hold``) and cancelled: nothing runs."""
from __future__ import annotations

import subprocess

import pytest

from hpcpipe.ledger import Ledger
from hpcpipe.slurm.backend import SlurmBackend
from hpcpipe.slurm.profiles import Profile
from hpcpipe.store.sqlite import SQLiteStore
from hpcpipe.submission import plan_sessions
from tests.test_backfill_scale import PIPELINE, sessions

pytestmark = pytest.mark.slurm


def test_stamped_sessions_go_out_per_task_type(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home"))
    store, ledger = SQLiteStore(tmp_path / "tasks.sqlite"), Ledger(tmp_path / "jobs.sqlite")
    paths = sessions(tmp_path / "data", 41)
    # one session recorded before, its Raw done: planned by the general rules, its own arrays
    plan_sessions(paths[:1], PIPELINE, store, ledger)
    raw = next(t for t in store.list_tasks() if t["name"] == "Raw")
    store.update_task(raw["id"], status="Complete")
    plans = plan_sessions(paths, PIPELINE, store, ledger, live_backend="slurm")
    assert plans[0].origin is None and all(p.origin is plans[1].origin for p in plans[1:])
    backend = SlurmBackend(store, ledger, profile=Profile(name="held", extra_directives=("--hold",)),
                           run_root=str(tmp_path / "runs"))
    seen: list[str] = []
    ledger._db.set_trace_callback(seen.append)
    try:
        report = backend.backfill(plans, "bf-arrays-test")
    finally:
        ledger._db.set_trace_callback(None)
        subprocess.run(["scancel", "--name", "bf-arrays-test"], capture_output=True)
    # 6 arrays for the 40 stamped sessions, 5 for the recorded one (its Raw is done)
    assert (report.arrays, report.elements) == (11, 40 * 6 + 5)
    # one statement per array, not per task: a call of one session's own is its row, an array
    # of the stamped sessions one row (and its members)
    assert len([s for s in seen if s.startswith(("INSERT INTO arrays", "INSERT OR REPLACE INTO jobs"))]) == report.arrays
    jobs = ledger.run("bf-arrays-test")
    assert len(jobs) == report.elements and len({j.task_id for j in jobs}) == report.elements
    for k in (1, 23, 40):  # each element is its session's index in the chunk, in every array
        mine = [j for j in jobs if j.session == plans[k].session]
        assert {j.array_index for j in mine} == {k} and len({j.job_id for j in mine}) == 6
    scripts = sorted(p.name for p in (tmp_path / "runs" / "bf-arrays-test" / "scripts").iterdir())
    assert "Raw.c0.0.sh" in scripts and "Sync.c0.0.sh" in scripts and "Sync.c0.1.sh" in scripts
    sync = (tmp_path / "runs" / "bf-arrays-test" / "scripts" / "Sync.c0.0.sh").read_text()
    assert "--array=1-40" in sync and "--dependency=aftercorr:" in sync
