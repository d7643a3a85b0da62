"""The local engine, driven through the real CLI in subprocesses (as a user runs it)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from hpcpipe.demo.session import make_session
from hpcpipe.ledger import Ledger
from tests.cliutil import concurrent_cancels, run_hpcpipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, HPCPIPE_HOME=str(tmp_path / "home"), HPCPIPE_GPU_LOCK_DIR=str(tmp_path / "locks"),
             PYTHONPATH=str(REPO))
    e.pop("HPCPIPE_CONFIG", None)
    return e


@pytest.fixture
def session(tmp_path):
    return make_session(tmp_path / "data" / "lab" / "Subjects" / "S1" / "2026-11-20" / "001")


hp = partial(run_hpcpipe, timeout=120, check=False)


def status(env, session) -> dict[str, dict]:
    out = hp(env, "status", "--session", str(session), "--json", check=True).stdout
    return {r["name"]: r for r in json.loads(out)}


def task_processes(marker: str) -> list[int]:
    """Pids of live job-side processes whose command line mentions ``marker`` (e.g. the home folder,
    under which every run folder of a test lives)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmdline = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and b"hpcpipe.jobside" in cmdline:
                pids.append(int(d.name))
    return pids


def test_demo_pipeline_completes_with_outputs(env, session):
    proc = hp(env, "submit", "--session", str(session), "--pipeline", "demo", check=True)
    rows = status(env, session)
    assert {r["status"] for r in rows.values()} == {"Complete"}, proc.stdout
    assert len(rows) == 5 and all(r["backend"] == "local" and r["job_id"] for r in rows.values())
    for name in ("_demo_sync.times.npy", "spikes.times.npy", "trials.intervals.npy", "_demo_qc.metrics.json",
                 "_demo_summary.table.csv"):
        assert (session / "alf" / name).stat().st_size > 0
    # submitting again runs nothing: every task is Complete
    again = hp(env, "submit", "--session", str(session), "--pipeline", "demo", check=True)
    assert "nothing to run" in again.stdout


def starts(session) -> list[str]:
    return [line.split()[0] for line in (session / "order.txt").read_text().splitlines() if not line.startswith("end ")]


def test_priority_order_under_a_one_cpu_budget(env, session):
    env["HPCPIPE_LOCAL_CPUS"] = "1"
    hp(env, "submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.ThreeIndependent", check=True)
    lines = (session / "order.txt").read_text().splitlines()
    assert starts(session) == ["B", "C", "A"]
    # one at a time: each task ends before the next starts
    assert [ln.split()[0] for ln in lines] == ["B", "end", "C", "end", "A", "end"]


def test_parallel_when_the_budget_allows(env, session):
    env["HPCPIPE_LOCAL_CPUS"] = "3"
    env["HPCPIPE_LOCAL_RAM"] = "8"
    hp(env, "submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.ThreeTogether",
       check=True, timeout=400)
    lines = (session / "order.txt").read_text().splitlines()
    assert len({ln.split()[1] for ln in lines if not ln.startswith("end ")}) == 3  # one process per task
    assert not any(ln.startswith("end ") for ln in lines[:3])  # all three started before any ended


def test_task_bigger_than_the_machine_is_refused_before_running(env, session):
    env["HPCPIPE_LOCAL_RAM"] = "0.5"
    proc = hp(env, "submit", "--session", str(session), "--pipeline", "demo")
    assert proc.returncode == 2
    assert "ram=1" in proc.stderr and "budget" in proc.stderr
    assert not (session / "alf").exists()


def test_timeout_kills_the_task_and_holds_its_child(env, session):
    # Slow sleeps 120 s: only the engine's kill ends it before hp()'s own 120 s limit
    proc = hp(env, "submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.TimeoutPipeline")
    assert proc.returncode == 1
    rows = status(env, session)
    assert rows["Slow"]["status"] == "Errored"
    assert rows["Child"]["status"] == "Held"
    from hpcpipe.store.sqlite import SQLiteStore

    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    slow = store.list_tasks(name="Slow")[0]
    assert "time_out_secs=2" in slow["log"]
    assert not task_processes(env["HPCPIPE_HOME"])
    assert starts(session) == ["Slow"]  # Child never ran


def test_failed_parent_holds_children_only(env, session):
    proc = hp(env, "submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.FailingParent")
    assert proc.returncode == 1
    rows = status(env, session)
    assert (rows["A"]["status"], rows["B"]["status"], rows["C"]["status"]) == ("Errored", "Complete", "Held")


def _wait_started(env, session, n, deadline=30):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        order = session / "order.txt"
        if order.exists() and len(order.read_text().splitlines()) >= n:
            return
        time.sleep(0.1)
    raise AssertionError("tasks did not start")


def _spawn_submit(env, session, pipeline):
    return subprocess.Popen([sys.executable, "-m", "hpcpipe.cli", "submit", "--session", str(session),
                             "--pipeline", pipeline], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_sigint_stops_children_and_leaves_nothing_started(env, session):
    proc = _spawn_submit(env, session, "tests.sample_pipelines.LongPipeline")
    _wait_started(env, session, 2)
    assert len(task_processes(env["HPCPIPE_HOME"])) == 2
    # another terminal looking at the status meanwhile does not take running tasks for dead ones
    assert {r["status"] for r in status(env, session).values()} == {"Started", "Waiting"}
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert not task_processes(env["HPCPIPE_HOME"])
    rows = status(env, session)
    assert "Started" not in {r["status"] for r in rows.values()}
    assert rows["A"]["status"] == rows["B"]["status"] == "Waiting"


def test_cancel_from_another_shell_stops_a_local_run_as_ctrl_c_would(env, session):
    """``hpcpipe cancel`` reaches the local engine through the same Backend interface as SLURM:
    the engine is stopped (its running tasks back to Waiting, the child never started)."""
    proc = _spawn_submit(env, session, "tests.sample_pipelines.LongPipeline")
    _wait_started(env, session, 2)
    out = hp(env, "cancel", "--session", str(session), check=True).stdout
    assert "cancelled 3 job(s)" in out, out  # A and B running, Child recorded as an intent
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert not task_processes(env["HPCPIPE_HOME"])
    assert {r["status"] for r in status(env, session).values()} == {"Waiting"}
    assert "no live job matches" in hp(env, "cancel", "--session", str(session), check=True).stdout


def test_two_concurrent_cancels_stop_each_job_once(env, session):
    """Two ``hpcpipe cancel`` of one run at the same moment: the lock orders them, the first stops
    the engine and returns once it has ended, so the second finds nothing live to signal again."""
    proc = _spawn_submit(env, session, "tests.sample_pipelines.LongPipeline")
    _wait_started(env, session, 2)
    (run,) = {j.run_id for j in Ledger(Path(env["HPCPIPE_HOME"]) / "jobs.sqlite").live("local")}
    assert concurrent_cancels(env, run) == ["cancelled 3 job(s)", "no live job matches"]
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.count("stopped by signal") <= 1, err
    assert not task_processes(env["HPCPIPE_HOME"])
    assert {r["status"] for r in status(env, session).values()} == {"Waiting"}


def test_sigkill_of_a_task_process_is_recorded_errored(env, session):
    proc = _spawn_submit(env, session, "tests.sample_pipelines.LongPipeline")
    _wait_started(env, session, 2)
    victim = int((session / "order.txt").read_text().splitlines()[0].split()[1])
    os.kill(victim, signal.SIGKILL)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    rows = status(env, session)
    statuses = {r["status"] for r in rows.values()}
    assert "Started" not in statuses and "Errored" in statuses
    assert not task_processes(env["HPCPIPE_HOME"])


def test_sigkill_of_the_engine_leaves_no_orphan_and_status_sweeps(env, session):
    proc = _spawn_submit(env, session, "tests.sample_pipelines.LongPipeline")
    _wait_started(env, session, 2)
    proc.kill()
    proc.communicate(timeout=30)
    assert len(task_processes(env["HPCPIPE_HOME"])) == 2  # the marker finds the orphan candidates
    end = time.monotonic() + 15
    while task_processes(env["HPCPIPE_HOME"]) and time.monotonic() < end:
        time.sleep(0.2)
    assert not task_processes(env["HPCPIPE_HOME"])  # PR_SET_PDEATHSIG took them down
    rows = status(env, session)  # status sweeps the dead local jobs
    assert "Started" not in {r["status"] for r in rows.values()}
