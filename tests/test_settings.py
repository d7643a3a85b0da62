"""Settings: read once (environment over config file over defaults), checked once, and what a
job uses comes from its run.json, never from the machine it runs on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpipe import cli
from hpcpipe.errors import BadInput
from hpcpipe.jobside import runfolder
from hpcpipe.settings import Settings
from hpcpipe.store.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[1]


def test_environment_overrides_the_config_file_which_overrides_defaults(tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[slurm]\nlost_after_secs = 60\nprofile = "site"\n\n[local]\ncpus = 2\n')
    monkeypatch.setenv("HPCPIPE_CONFIG", str(cfg))
    s = Settings.load()
    assert (s.slurm.lost_after_secs, s.slurm.profile, s.local.cpus, s.alyx.retries) == (60.0, "site", 2.0, 5)
    monkeypatch.setenv("HPCPIPE_SLURM_LOST_AFTER_SECS", "7")
    monkeypatch.setenv("HPCPIPE_LOCAL_CPUS", "3")
    monkeypatch.setenv("HPCPIPE_ALYX_CREATE_MISSING", "yes")
    monkeypatch.setenv("HPCPIPE_SLURM_PROFILE_DIRS", os.pathsep.join(["/a", "/b"]))
    s = Settings.load()
    assert (s.slurm.lost_after_secs, s.local.cpus, s.alyx.create_missing) == (7.0, 3.0, True)
    assert s.slurm.profile_dirs == ["/a", "/b"]
    assert s.home == Path(os.environ["HPCPIPE_HOME"])


@pytest.mark.parametrize("name, value, says", [
    ("HPCPIPE_ALYX_RETRIES", "many", "[alyx] retries = 'many' ($HPCPIPE_ALYX_RETRIES) is not an integer"),
    ("HPCPIPE_ALYX_RETRIES", "2.5", "is not an integer"),
    ("HPCPIPE_SUBMIT_LOCK_WAIT_SECS", "soon", "[submit] lock_wait_secs = 'soon'"),
    ("HPCPIPE_RESOURCES_APPLY", "maybe", "[resources] apply = 'maybe' ($HPCPIPE_RESOURCES_APPLY) is not a boolean"),
])
def test_a_bad_value_is_one_line_naming_the_setting(monkeypatch, capsys, name, value, says):
    monkeypatch.setenv(name, value)
    with pytest.raises(BadInput) as err:
        Settings.load()
    assert says in str(err.value) and "\n" not in str(err.value)
    assert cli.main(["status"]) == cli.EXIT_BAD_INPUT  # the edge reads it first: one line, exit 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and says in err_text


def test_a_bad_value_in_the_config_file_names_the_file(tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[store]\ndown_secs = "long"\n')
    monkeypatch.setenv("HPCPIPE_CONFIG", str(cfg))
    with pytest.raises(BadInput, match=rf"\[store\] down_secs = 'long' \({cfg}\) is not a number"):
        Settings.load()


def test_run_json_never_carries_a_secret(monkeypatch):
    for name in ("HPCPIPE_ALYX_PASSWORD", "HPCPIPE_ALYX_TOKEN", "HPCPIPE_REMOTE_HTTP_PASSWORD"):
        monkeypatch.setenv(name, "s3cr3t-value")
    monkeypatch.setenv("HPCPIPE_ALYX_USERNAME", "alice")
    job = Settings.load().for_job()
    assert "s3cr3t-value" not in json.dumps(job)
    assert job["alyx"]["username"] == "alice"  # the token cache is found by the login
    assert Settings.from_run({"settings": job}).alyx.password is None


def test_a_run_json_of_an_older_hpcpipe_runs_its_job_as_that_version_did(monkeypatch, caplog):
    """A job queued before an upgrade (no settings in run.json) reads its node's configuration,
    as jobs then did, and says so; settings that are not a table are refused in one line."""
    monkeypatch.setenv("HPCPIPE_STORE_PATH", "/node/tasks.sqlite")
    with caplog.at_level("WARNING", logger="hpcpipe"):
        assert Settings.from_run({"run_id": "r1"}).store.path == "/node/tasks.sqlite"
    assert "run r1: run.json carries no settings" in caplog.text
    assert Settings.from_run({"run_id": "r2", "settings": {}}).store.path is None  # the submitter's: defaults
    with pytest.raises(BadInput, match="run 'r3': run.json's settings are not a table"):
        Settings.from_run({"run_id": "r3", "settings": ["x"]})


def test_a_job_uses_the_submitting_sides_settings_not_its_nodes(tmp_path, monkeypatch):
    """The submitting side's store and home reach the job through run.json; the compute node's
    environment and config file name others, and the job does not look at them."""
    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home-submit"))
    monkeypatch.setenv("HPCPIPE_STORE_PATH", str(tmp_path / "submit.sqlite"))
    submitting = Settings.load()
    store = SQLiteStore(submitting.store.path)
    session = tmp_path / "data" / "lab" / "Subjects" / "S1" / "2026-01-01" / "001"
    session.mkdir(parents=True)
    eid = store.session_id(session, create=True)
    rec = store.create_task({"name": "LongSleep", "session": eid, "status": "Waiting", "level": 0,
                             "executable": "tests.jobside.sample_tasks.LongSleep", "arguments": {"seconds": 0}})
    run = tmp_path / "run"
    (run / "sessions").mkdir(parents=True)
    (run / "run.json").write_text(runfolder.run_json("r1", "sqlite", "server", upstream=True,
                                                     settings=submitting.for_job()))
    (run / "sessions" / "c0.json").write_text(runfolder.sessions_json(
        {0: runfolder.session_entry(eid, str(session), [rec])}))
    node_config = tmp_path / "node.toml"
    node_config.write_text(f'[store]\npath = "{tmp_path / "node-file.sqlite"}"\n')
    node = dict(os.environ, PYTHONPATH=str(REPO), HPCPIPE_HOME=str(tmp_path / "home-node"),
                HPCPIPE_STORE_PATH=str(tmp_path / "node-env.sqlite"), HPCPIPE_CONFIG=str(node_config))
    job = subprocess.run([sys.executable, "-m", "hpcpipe.jobside", "--run-dir", str(run), "--chunk", "c0",
                          "--index", "0", "--task-name", "LongSleep"], env=node, cwd=run,
                         capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stdout + job.stderr
    assert store.get_task(rec["id"])["status"] == "Complete"  # reported to the submitting side's store
    assert not (tmp_path / "node-env.sqlite").exists() and not (tmp_path / "node-file.sqlite").exists()
    assert not (tmp_path / "home-node").exists()  # nothing written under the node's own home


def test_settings_are_read_when_built_not_when_used(tmp_path, monkeypatch):
    """Constructors read their settings once (a later change of the environment is not seen)."""
    from hpcpipe.ledger import Ledger

    monkeypatch.setenv("HPCPIPE_SUBMIT_LOCK_WAIT_SECS", "3")
    ledger = Ledger(tmp_path / "jobs.sqlite", settings=Settings.load())
    monkeypatch.setenv("HPCPIPE_SUBMIT_LOCK_WAIT_SECS", "9")
    assert ledger.lock_wait == 3.0


def test_a_configured_token_reaches_jobs_through_the_token_cache(monkeypatch):
    """``[alyx] token`` is a secret run.json never carries: the submitting side puts it in the
    0600 token cache of the home its jobs use, where their client looks."""
    from hpcpipe.alyx import params

    monkeypatch.setenv("HPCPIPE_ALYX_URL", "https://alyx.example.org")
    monkeypatch.setenv("HPCPIPE_ALYX_USERNAME", "alice")
    monkeypatch.setenv("HPCPIPE_ALYX_TOKEN", "f" * 40)
    submitting = Settings.load()
    params.cache_for_jobs(submitting)
    job = Settings.from_run({"settings": submitting.for_job()})
    assert "f" * 40 not in json.dumps(submitting.for_job())
    found = params.resolve(job)
    assert (found["token"], found["token_source"]) == ("f" * 40, "cache")
