"""A new user and an empty Alyx: one `hpcpipe alyx check` says everything missing, `--create`
adds what a user may add, and the demo pipeline then runs Complete with its datasets registered."""
from __future__ import annotations

from tests.alyx.test_cli_alyx import cli_env, hp
from tests.alyx_server.fixtures import REPOSITORY, admin_client


def test_empty_alyx_told_in_one_go_then_demo_complete(alyx_empty_server, alyx_client_kind, tmp_path):
    server = alyx_empty_server
    env = cli_env(tmp_path, server, alyx_client_kind)
    session = hp(env, "demo-session", str(tmp_path / "data")).stdout.strip()  # demolab/Subjects/DEMO001/...
    before = server.stats(reset=True)

    check = hp(env, "alyx", "check", "--session", session, "--pipeline", "demo")
    assert check.returncode == 2, check.stdout + check.stderr
    err = check.stderr.strip()
    assert len(err.splitlines()) == 1  # one message
    for needed in ("lab 'demolab'", "subject 'DEMO001'", "session 'DEMO001/", "data repository 'hpc_server'",
                   "dataset type 'sync.times'", "dataset type 'qc.metrics'", "dataset type 'summary.table'",
                   "hpcpipe alyx check --create"):
        assert needed in err, err
    assert "dataset type 'spikes.times'" not in err  # a fresh Alyx has the IBL types
    # submit says the same before recording anything
    sub = hp(env, "submit", "--session", session, "--pipeline", "demo")
    assert sub.returncode == 2 and "dataset type 'sync.times'" in sub.stderr
    stats = server.stats()
    assert not any(k.startswith(("POST", "PATCH")) for k in stats if k != "POST auth-token"), stats
    assert server.sql("SELECT id FROM tasks") == [] and before is not None

    # what only an administrator does: the lab and the data repository (README, "With Alyx")
    admin = admin_client(server)
    admin.post("data-repository", REPOSITORY)
    admin.post("labs", {"name": "demolab"})
    admin.patch("labs/demolab", {"repositories": [REPOSITORY["name"]]})

    create = hp(env, "alyx", "check", "--session", session, "--pipeline", "demo", "--create")
    assert create.returncode == 0, create.stdout + create.stderr
    assert "created session DEMO001/" in create.stdout and "created dataset type sync.times" in create.stdout
    again = hp(env, "alyx", "check", "--session", session, "--pipeline", "demo")
    assert again.returncode == 0 and "has everything" in again.stdout

    run = hp(env, "submit", "--session", session, "--pipeline", "demo")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("Complete") == 5
    eid = admin.get("sessions", subject="DEMO001")[0]["id"]
    names = {d["name"] for d in admin.get("datasets", session=eid)}
    assert {"_demo_sync.times.npy", "spikes.times.npy", "trials.intervals.npy", "_demo_qc.metrics.json",
            "_demo_summary.table.csv"} <= names
