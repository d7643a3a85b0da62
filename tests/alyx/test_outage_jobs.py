"""A task process started while the store is marked down asks Alyx nothing: not a report, not a
login, not ONE's token check -- through hpcpipe's client and through users' ONE
(``[alyx] client = "one"``), whatever credentials it has (ONE's cached token in ``~/.one``,
hpcpipe's token cache only, or only a password). Pinned by counting the connections a hung Alyx
(its port accepts, nothing answers) is offered by a real ``python -m hpcpipe.jobside``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpipe.jobside import runfolder
from hpcpipe.settings import Settings
from hpcpipe.store import health, outbox
from hpcpipe.store.alyx import AlyxStore
from tests.alyx_server import PASSWORD, USERNAME, HangingServer
from tests.alyx_server.fixtures import admin_client, make_session

REPO = Path(__file__).resolve().parents[2]
CREDENTIALS = ("one-token", "hpcpipe-token", "password")


def job_env(tmp_path: Path, server, kind: str) -> dict:
    config = tmp_path / "config.toml"
    config.write_text(f'[store]\nbackend = "alyx"\n\n[alyx]\nurl = "{server.url}"\nusername = "{USERNAME}"\n'
                      f'password = "{PASSWORD}"\nrepository = "hpc_server"\nclient = "{kind}"\n')
    env = dict(os.environ, HPCPIPE_CONFIG=str(config), HPCPIPE_HOME=str(tmp_path / "home"),
               HPCPIPE_GPU_LOCK_DIR=str(tmp_path / "locks"), PYTHONPATH=str(REPO), HPCPIPE_BENCH_TASK_SECS="0")
    for key in [k for k in env if k.startswith(("HPCPIPE_ALYX_", "HPCPIPE_STORE_"))]:
        env.pop(key)
    return env


def _credentials(how: str, env: dict, kind: str) -> None:
    """Leave the credentials a job finds as ``how`` says (HOME is the test's own)."""
    if how == "password":
        return
    # a login as the submitter makes it (hpcpipe's token cache; ONE also caches it in ~/.one)
    code = ("from hpcpipe.store.alyx import AlyxStore; s = AlyxStore.from_config(); "
            "s.rest('dataset-types', 'list')")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    if how == "hpcpipe-token":
        for path in (Path(env["HOME"]) / ".one").glob("*"):
            path.unlink()
        assert json.loads((Path(env["HPCPIPE_HOME"]) / "alyx" / "tokens.json").read_text())
    elif kind == "one":
        assert any((Path(env["HOME"]) / ".one").glob(".127*"))


@pytest.mark.parametrize("how", CREDENTIALS)
def test_a_job_started_while_marked_down_opens_no_connection(alyx_fresh_server, alyx_client_kind, how, tmp_path):
    server = alyx_fresh_server
    admin = admin_client(server)
    session, eid = make_session(admin, tmp_path / "data", "JOBDOWN1", date="2026-11-20")
    rec = AlyxStore(admin).create_task({"name": "Work1", "session": eid, "status": "Waiting", "arguments": {},
                                        "executable": "tests.sample_pipelines.Work1", "level": 0})
    env = job_env(tmp_path, server, alyx_client_kind)
    _credentials(how, env, alyx_client_kind)
    run = tmp_path / "home" / "runs" / "r1"
    (run / "logs").mkdir(parents=True)
    (run / "sessions").mkdir()
    with pytest.MonkeyPatch.context() as mp:  # the submitting side's settings: the job's config file and home
        mp.setenv("HPCPIPE_HOME", env["HPCPIPE_HOME"])
        mp.setenv("HPCPIPE_CONFIG", env["HPCPIPE_CONFIG"])
        settings = Settings.load().for_job()
    (run / "run.json").write_text(runfolder.run_json("r1", "alyx", "server", upstream=True, settings=settings))
    (run / "sessions" / "c0.json").write_text(runfolder.sessions_json({0: runfolder.session_entry(eid, str(session),
                                                                                                   [rec])}))
    server.stop()
    with HangingServer(server.port) as hung:
        # an earlier report of this home met the outage (the engine or another job)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HPCPIPE_HOME", env["HPCPIPE_HOME"])
            health.mark_down(outbox.store_key(AlyxStore(admin)), "test: Alyx down")
        job = subprocess.run([sys.executable, "-m", "hpcpipe.jobside", "--run-dir", str(run), "--chunk", "c0",
                              "--index", "0", "--task-name", "Work1"], env=env, cwd=run, capture_output=True,
                             text=True, timeout=300)
        assert job.returncode == 0, job.stdout + job.stderr
        assert hung.accepted == 0, job.stdout + job.stderr
    # everything it had to say waits in its result file, for the engine's fold and `hpcpipe sync`
    result = json.loads(runfolder.result_path(run, rec["id"]).read_text())
    assert [(op["op"], op["payload"].get("status"), op["delivered"]) for op in result["ops"]] == \
        [("update_task", "Started", False), ("register_files", None, False), ("update_task", "Complete", False)]
