"""The CLI with Alyx as the task store, through hpcpipe's client and through users' one.api.ONE
(``[alyx] client = "one"``, REST cache on): the demo end to end, and an outage healed by
`hpcpipe sync`."""
from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

from hpcpipe.demo.session import make_session as make_demo_data
from tests.alyx_server import PASSWORD, USERNAME, HangingServer
from tests.alyx_server.fixtures import admin_client, make_session
from tests.cliutil import run_hpcpipe

REPO = Path(__file__).resolve().parents[2]


def cli_env(tmp_path, server, client: str = "hpcpipe") -> dict:
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nbackend = "alyx"\n\n[alyx]\nurl = "{server.url}"\nusername = "{USERNAME}"\n'
                      f'password = "{PASSWORD}"\nrepository = "hpc_server"\nretries = 1\nretry_budget = 2\n'
                      f'backoff = 0.05\ntimeout = 5\nclient = "{client}"\n')
    env = dict(os.environ, HPCPIPE_CONFIG=str(config), HPCPIPE_HOME=str(tmp_path / "home"),
               HPCPIPE_GPU_LOCK_DIR=str(tmp_path / "locks"), PYTHONPATH=str(REPO), HOME=os.environ["HOME"])
    for key in list(env):
        if key.startswith("HPCPIPE_ALYX_") or key.startswith("HPCPIPE_STORE_"):
            env.pop(key)
    return env


hp = partial(run_hpcpipe, check=False)


def test_demo_submit_with_alyx_configured(alyx_server, alyx_client_kind, tmp_path):
    client = admin_client(alyx_server)
    session, eid = make_session(client, tmp_path / "data", "DEMO001", date="2026-11-20")
    make_demo_data(session, duration=15)
    env = cli_env(tmp_path, alyx_server, alyx_client_kind)
    alyx_server.stats(reset=True)
    proc = hp(env, "submit", "--session", str(session), "--pipeline", "demo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    requests = alyx_server.stats()
    tasks = client.get("tasks", session=eid)
    assert len(tasks) == 5 and {t["status"] for t in tasks} == {"Complete"}
    assert all(t["graph"] == "demo" and t["executable"].startswith("hpcpipe.demo.tasks.") for t in tasks)
    names = {(d["collection"], d["name"]) for d in client.get("datasets", session=eid)}
    assert {("alf", "spikes.times.npy"), ("alf", "trials.intervals.npy"), ("alf", "_demo_summary.table.csv"),
            ("alf", "_demo_qc.metrics.json"), ("alf", "_demo_sync.times.npy")} <= names
    total = requests.get("total", sum(v for v in requests.values() if isinstance(v, int)))
    # a handful of requests per task, including task creation (ONE adds its login and schema per process)
    assert total / 5 <= (12 if alyx_client_kind == "hpcpipe" else 16), requests
    # status reads the same records back; a second submit (ONE's cache would answer the task
    # list of the first) records and runs nothing
    status = hp(env, "status", "--session", str(session))
    assert status.returncode == 0 and status.stdout.count("Complete") == 5
    again = hp(env, "submit", "--session", str(session), "--pipeline", "demo")
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stdout + again.stderr
    assert len(client.get("tasks", session=eid)) == 5


def test_outage_mid_pipeline_then_sync_equals_undisturbed_run(alyx_fresh_server, alyx_client_kind, tmp_path):
    client = admin_client(alyx_fresh_server)
    calm, calm_eid = make_session(client, tmp_path / "data", "CALM01", date="2026-11-20")
    hit, hit_eid = make_session(client, tmp_path / "data", "HIT001", date="2026-11-20")
    env = cli_env(tmp_path, alyx_fresh_server, alyx_client_kind)
    pipeline = "tests.sample_pipelines.Outage"
    assert hp(env, "submit", "--session", str(calm), "--pipeline", pipeline).returncode == 0

    proc = hp(dict(env, HPCPIPE_TEST_STOP_PID=str(alyx_fresh_server.proc.pid)),
              "submit", "--session", str(hit), "--pipeline", pipeline)
    # every task completed, the reports are queued: its own exit code, the table from local results
    assert proc.returncode == 3 and "hpcpipe sync" in proc.stderr, proc.stdout + proc.stderr
    assert proc.stdout.count("Complete") == 2 and "(local" in proc.stderr
    assert list((tmp_path / "home" / "outbox").glob("*.json"))  # the reports waited on disk
    # status with the store down: what this machine knows, marked local, not "bad input"
    status = hp(env, "status")
    assert status.returncode == 3 and status.stdout.count("Complete") == 4, status.stdout + status.stderr
    assert "(local" in status.stderr

    alyx_fresh_server.restart()
    client = admin_client(alyx_fresh_server)
    sync = hp(env, "sync")
    assert sync.returncode == 0 and "0 still queued" in sync.stdout, sync.stdout + sync.stderr

    def state(eid):
        tasks = {t["name"]: (t["status"], t["version"]) for t in client.get("tasks", session=eid)}
        dsets = sorted((d["collection"], d["name"], d["file_size"], d["hash"]) for d in client.get("datasets", session=eid))
        return tasks, dsets

    assert state(hit_eid) == state(calm_eid)
    assert state(hit_eid)[0]["WriteOutput"][0] == "Complete" and len(state(hit_eid)[1]) == 1
    # a second sync has nothing to do and changes nothing
    assert "replayed 0 report(s)" in hp(env, "sync").stdout
    assert state(hit_eid) == state(calm_eid)


def test_a_hung_alyx_mid_run_holds_no_task(alyx_fresh_server, alyx_client_kind, tmp_path):
    """Alyx frozen (its socket accepts, nothing answers) while the first task runs: the run
    still ends, exit 3 with its table from local results, and a sync once Alyx is back leaves
    every task Complete with its dataset. Without a timeout on ONE's requests it never ends."""
    server = alyx_fresh_server
    client = admin_client(server)
    hit, eid = make_session(client, tmp_path / "data", "HUNG01", date="2026-11-20")
    env = dict(cli_env(tmp_path, server, alyx_client_kind), HPCPIPE_ALYX_REPORT_TIMEOUT="1")
    pid = server.proc.pid
    try:
        proc = hp(dict(env, HPCPIPE_TEST_STOP_PID=str(pid), HPCPIPE_TEST_STOP_SIGNAL="SIGSTOP"),
                  "submit", "--session", str(hit), "--pipeline", "tests.sample_pipelines.Outage", timeout=240)
        assert proc.returncode == 3 and proc.stdout.count("Complete") == 2, proc.stdout + proc.stderr
        assert "(local" in proc.stderr and list((tmp_path / "home" / "outbox").glob("*.json"))
    finally:
        os.kill(pid, signal.SIGKILL)
        server.proc.wait()
    server.start()
    sync = hp(env, "sync")
    assert sync.returncode == 0 and "0 still queued" in sync.stdout, sync.stdout + sync.stderr
    client = admin_client(server)
    assert {t["name"]: t["status"] for t in client.get("tasks", session=eid)} == \
        {"StopServer": "Complete", "WriteOutput": "Complete"}
    assert [d["name"] for d in client.get("datasets", session=eid)] == ["_demo_summary.table.csv"]


def test_status_during_an_outage_asks_once_then_answers_locally(alyx_fresh_server, alyx_client_kind, tmp_path):
    """`status` with Alyx hung: one short try (a report's retries, not the user's five), then the
    store is marked down and the next `status` opens no connection at all; both show what this
    machine knows, marked local, exit 3."""
    server = alyx_fresh_server
    client = admin_client(server)
    session, _ = make_session(client, tmp_path / "data", "STAT01", date="2026-11-20")
    env = cli_env(tmp_path, server, alyx_client_kind)
    assert hp(env, "submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.Outage").returncode == 0
    # the user's patient settings for ordinary calls; a 1 s timeout keeps the hung tries short
    patient = dict(env, HPCPIPE_ALYX_RETRIES="5", HPCPIPE_ALYX_RETRY_BUDGET="120", HPCPIPE_ALYX_TIMEOUT="1")
    server.stop()
    with HangingServer(server.port) as hung:
        first = hp(patient, "status")
        assert first.returncode == 3 and first.stdout.count("Complete") == 2, first.stdout + first.stderr
        assert "(local" in first.stderr
        tried = hung.accepted
        assert 1 <= tried <= 2  # one request, retried at most once (hpcpipe's client; ONE never retries)
        again = hp(patient, "status")
        assert again.returncode == 3 and again.stdout.count("Complete") == 2, again.stdout + again.stderr
        assert "marked down" in again.stderr and hung.accepted == tried
    server.start()
