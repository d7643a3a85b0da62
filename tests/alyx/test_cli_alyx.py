"""The CLI with Alyx as the task store, through hpcpipe's client and through users' one.api.ONE
(``[alyx] client = "one"``, REST cache on): the demo end to end, and an outage healed by
`hpcpipe sync`."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from hpcpipe.demo.session import make_session as make_demo_data
from tests.alyx_server import PASSWORD, USERNAME
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
