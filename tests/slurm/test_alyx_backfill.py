"""An Alyx-store backfill on the real cluster: queued in a few requests whatever the number of
sessions, its records made afterwards (by the background recorder, by the jobs as they start,
by `hpcpipe sync`), none lost when the submitter or the recorder is killed, a 429 waited out.

Jobs are submitted held (a site profile's ``--hold``) so the test sees the backfill's own
requests alone, then released with ``scontrol release``.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.alyx_server import PASSWORD, USERNAME
from tests.alyx_server.fixtures import admin_client, make_session
from tests.cliutil import run_hpcpipe

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]


def _setup(env, tmp_path, server, kind: str, n: int, **alyx) -> tuple[dict, Path, object]:
    client = admin_client(server)
    paths = [make_session(client, tmp_path / "data", f"B{i:03d}", date=f"2026-09-{1 + i % 28:02d}")[0]
             for i in range(n)]
    listing = tmp_path / "sessions.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "held.toml").write_text('extra_directives = ["--hold"]\n')
    extra = "".join(f"{k} = {v}\n" for k, v in alyx.items())
    Path(env["HPCPIPE_CONFIG"]).write_text(
        f'[store]\nbackend = "alyx"\n\n[alyx]\nurl = "{server.url}"\nusername = "{USERNAME}"\n'
        f'password = "{PASSWORD}"\nclient = "{kind}"\n{extra}\n'
        f'[slurm]\nprofile_dirs = ["{tmp_path / "profiles"}"]\nprofile = "held"\n')
    (tmp_path / "user-home").mkdir()
    env = dict(env, HOME=str(tmp_path / "user-home"),  # ONE's settings and cache: the test's own
               PYTHONPATH=os.pathsep.join([str(REPO / "scripts" / "bench"), str(REPO)]))
    return env, listing, client


def _release_and_wait(run_id: str, timeout: float = 240) -> None:
    ids = subprocess.run(["squeue", "--name", run_id, "--noheader", "--format=%F"], capture_output=True,
                         text=True).stdout.split()
    subprocess.run(["scontrol", "release", *sorted(set(ids))], check=True, capture_output=True)
    deadline = time.time() + timeout
    while subprocess.run(["squeue", "--name", run_id, "--noheader"], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, f"jobs of {run_id} still queued after {timeout} s"
        time.sleep(1)


def _check_records(client, n: int) -> list[dict]:
    tasks = client.get("tasks", graph="bench6")
    assert len(tasks) == 6 * n and len({(t["session"], t["name"]) for t in tasks}) == 6 * n  # none doubled
    by_id = {t["id"]: t for t in tasks}
    assert all(by_id[p]["session"] == t["session"] for t in tasks for p in t["parents"])
    assert Counter(len(t["parents"]) for t in tasks) == {0: n, 1: 4 * n, 2: n}
    return tasks


def test_backfill_queues_in_a_few_requests_and_the_jobs_make_their_records(env, tmp_path, alyx_fresh_server,
                                                                           alyx_client_kind):
    n = 5
    env, listing, client = _setup(env, tmp_path, alyx_fresh_server, alyx_client_kind, n,
                                  background_recorder="false")
    alyx_fresh_server.stats(reset=True)
    proc = run_hpcpipe(env, "backfill", "--sessions-file", str(listing), "--pipeline", "pipelines.SixTasks")
    own = alyx_fresh_server.stats(reset=True)
    # the submitter exits at once, its recorder never started: as if killed right after queueing
    assert "each job makes its own" in proc.stdout
    assert "POST tasks" not in own, own
    assert own.get("GET sessions") == 1 and own.get("GET tasks") == 1, own  # not one per session
    run_id = re.search(r"run (bf-\S+):", proc.stdout).group(1)
    _release_and_wait(run_id)
    jobs = alyx_fresh_server.stats()
    assert jobs.get("POST tasks") == 6 * n and "throttled 429" not in jobs, jobs  # each job made its own
    tasks = _check_records(client, n)
    assert {t["status"] for t in tasks} == {"Complete"}
    status = run_hpcpipe(env, "status")
    # the ledger took the store's ids: every task shows its array job
    assert status.stdout.count("COMPLETED") == 6 * n, status.stdout
    sync = run_hpcpipe(env, "sync")
    assert "all made" in sync.stdout and len(client.get("tasks", graph="bench6")) == 6 * n


def test_a_killed_recorder_loses_nothing_and_a_429_is_waited_out(env, tmp_path, alyx_fresh_server):
    n = 6
    env, listing, client = _setup(env, tmp_path, alyx_fresh_server, "hpcpipe", n, record_rate="60",
                                  retries="1", retry_budget="2")
    proc = run_hpcpipe(env, "backfill", "--sessions-file", str(listing), "--pipeline", "pipelines.SixTasks")
    pid = int(re.search(r"in the background \(pid (\d+)", proc.stdout).group(1))
    run_id = re.search(r"run (bf-\S+):", proc.stdout).group(1)
    records = Path(env["HPCPIPE_HOME"]) / "runs" / run_id / "records"
    deadline = time.time() + 60
    while len([p for p in records.iterdir() if p.name.startswith("new-")]) < 3:
        assert time.time() < deadline, "the background recorder made nothing"
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    made = len(client.get("tasks", graph="bench6"))
    assert 3 <= made < 6 * n
    # sync carries on where the id files end, against a throttle it runs into: its recorder paced
    # at 10/s (a record_rate set above the server's throttle) against 4/s
    config = Path(env["HPCPIPE_CONFIG"])
    config.write_text(config.read_text().replace("record_rate = 60\n", "record_rate = 600\n"))
    alyx_fresh_server.set_throttle("4/s")
    try:
        alyx_fresh_server.stats(reset=True)
        sync = run_hpcpipe(env, "sync")
        stats = alyx_fresh_server.stats(reset=True)
    finally:
        alyx_fresh_server.set_throttle("100000/min")
    assert sync.returncode == 0 and "all made" in sync.stdout, sync.stdout + sync.stderr
    assert stats.get("throttled 429", 0) > 0, stats  # waited out, not failed
    assert stats.get("POST tasks", 0) >= 6 * n - made
    _check_records(client, n)
    # the jobs find their records made: none creates one
    _release_and_wait(run_id)
    assert "POST tasks" not in alyx_fresh_server.stats()
    assert {t["status"] for t in _check_records(client, n)} == {"Complete"}
    status = run_hpcpipe(env, "status")
    assert status.stdout.count("COMPLETED") == 6 * n, status.stdout


def test_a_backfill_with_nothing_to_queue_still_makes_its_records(env, tmp_path, alyx_fresh_server):
    env, listing, client = _setup(env, tmp_path, alyx_fresh_server, "hpcpipe", 2)
    # Summary alone: its parents are not asked for, so it is Held and nothing is queued
    proc = run_hpcpipe(env, "backfill", "--sessions-file", str(listing), "--pipeline", "pipelines.SixTasks",
                       "--task", "Summary")
    assert "nothing to submit" in proc.stdout, proc.stdout + proc.stderr
    tasks = _check_records(client, 2)
    assert Counter(t["status"] for t in tasks) == {"Waiting": 10, "Held": 2}
