"""The CLI's contract: bad input gets one clear line and exit 2, and changes no record."""
from __future__ import annotations

import json

import pytest

from hpcpipe.cli import main
from hpcpipe.demo.session import make_session
from hpcpipe.store.sqlite import SQLiteStore


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HPCPIPE_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("HPCPIPE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path / "home"


@pytest.fixture
def session(tmp_path):
    return make_session(tmp_path / "data" / "S1" / "2026-11-20" / "001")


def snapshot(home):
    db = home / "tasks.sqlite"
    if not db.exists():
        return []
    return SQLiteStore(db).list_tasks()


@pytest.mark.parametrize("args, message", [
    (["submit", "--session", "/does/not/exist", "--pipeline", "demo"], "does not exist"),
    (["submit", "--session", "{session}", "--pipeline", "nope"], "unknown pipeline 'nope'; registered pipelines: demo"),
    (["submit", "--session", "{session}", "--pipeline", "tests.sample_pipelines.Cyclic"], "cycle in task parents"),
    (["submit", "--session", "{session}", "--pipeline", "tests.sample_pipelines.NonPositiveResource"],
     "ram=0 must be a positive number"),
    (["submit", "--session", "{session}", "--pipeline", "demo", "--status", "Running"], "unknown status 'Running'"),
    (["submit", "--session", "{session}", "--pipeline", "demo", "--backend", "pbs"], "unknown backend 'pbs'"),
    (["status", "--status", "Done"], "valid statuses: Waiting, Held"),
    (["rerun", "--session", "{session}", "--pipeline", "demo", "--status", "complete"], "unknown status 'complete'"),
])
def test_bad_input_one_line_exit_2_no_record_changed(home, session, capsys, args, message):
    assert main(["submit", "--session", str(session), "--pipeline", "demo"]) == 0
    before = snapshot(home)
    capsys.readouterr()
    rc = main([a.replace("{session}", str(session)) for a in args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.startswith("hpcpipe: error:") and err.count("\n") == 1
    assert snapshot(home) == before


def test_no_pipeline_for_a_new_session(home, session, capsys):
    assert main(["submit", "--session", str(session)]) == 2
    assert "pass --pipeline NAME (registered: demo)" in capsys.readouterr().err
    assert snapshot(home) == []


def test_experiment_description_without_ibllib_names_the_package(home, session, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ibllib" else real(name, *a))
    (session / "_ibl_experiment.description.yaml").write_text("version: 1.0.0\n")
    assert main(["submit", "--session", str(session)]) == 2
    err = capsys.readouterr().err
    assert "_ibl_experiment.description.yaml" in err and "pip install ibllib" in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(home) == []


def test_config_rule_chooses_the_pipeline(home, session, tmp_path, monkeypatch):
    cfg = tmp_path / "rules.toml"
    cfg.write_text('[submit]\nrules = [{glob = "*/S1/*", pipeline = "demo"}]\n')
    monkeypatch.setenv("HPCPIPE_CONFIG", str(cfg))
    assert main(["submit", "--session", str(session), "--dry-run"]) == 0


def test_not_a_session_path(home, tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["submit", "--session", str(tmp_path / "plain"), "--pipeline", "demo"]) == 2
    assert "is not a session path" in capsys.readouterr().err
    assert snapshot(home) == []


def test_dry_run_changes_nothing(home, session, capsys):
    assert main(["submit", "--session", str(session), "--pipeline", "demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would run DemoSummary" in out and "after DemoBehaviourQC, DemoSpikeSorting" in out
    assert snapshot(home) == []
    assert not (session / "alf").exists()


def test_status_json_keys(home, session, capsys):
    main(["submit", "--session", str(session), "--pipeline", "demo"])
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5
    for key in ("name", "status", "level", "cpu", "gpu", "ram", "time_elapsed_secs", "backend", "job_id"):
        assert key in rows[0]
    assert main(["status", "--status", "Errored", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_rerun_errored_after_fixing_the_cause(home, tmp_path, capsys):
    session = make_session(tmp_path / "data" / "S2" / "2026-11-20" / "001", fail=("DemoTrials",))
    assert main(["submit", "--session", str(session), "--pipeline", "demo"]) == 1
    store = SQLiteStore(home / "tasks.sqlite")
    by_name = {t["name"]: t["status"] for t in store.list_tasks()}
    assert by_name["DemoTrials"] == "Errored" and by_name["DemoBehaviourQC"] == "Held"
    assert by_name["DemoSummary"] == "Held" and by_name["DemoSync"] == "Complete"
    (session / "_demo_fail_DemoTrials").unlink()
    # the pipeline is found from the records; Held descendants are run along with the rerun
    assert main(["rerun", "--session", str(session), "--status", "Errored", "--status", "Held"]) == 0
    assert {t["status"] for t in store.list_tasks()} == {"Complete"}


def test_graph_writes_the_pipeline(home, session, capsys):
    assert main(["graph", "--session", str(session), "--pipeline", "demo", "--out", str(session.parent)]) == 0
    gv = session.parent / "demo.gv"
    text = gv.read_text()
    assert '"DemoTrials" -> "DemoBehaviourQC"' in text and '"DemoSpikeSorting" -> "DemoSummary"' in text


def test_slurm_backend_without_a_cluster_fails_before_recording(home, session, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(session))  # no sbatch/scontrol on the PATH
    assert main(["submit", "--session", str(session), "--pipeline", "demo", "--backend", "slurm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpcpipe: error: scontrol: command not found") and err.count("\n") == 1
    assert snapshot(home) == []
