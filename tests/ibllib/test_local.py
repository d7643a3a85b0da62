"""Unmodified ibllib Task/Pipeline subclasses through ``hpcpipe submit --backend local``, compared
with what ibllib's own ``Pipeline.run`` gives over the same kind of store."""
from __future__ import annotations

import json

import pytest

from tests.ibllib.conftest import REASON, hpcpipe_cmd

pytest.importorskip("ibllib", reason=REASON)

from tests.ibllib.ibl_tasks import IblTestPipeline, make_ibl_session  # noqa: E402

PIPE = "tests.ibllib.ibl_tasks.IblTestPipeline"
EXPECTED = {"Extract": "Complete", "Nothing": "Empty", "Fails": "Errored", "AfterFails": "Held"}


def rows(env, cwd, session) -> dict[str, dict]:
    """``hpcpipe status --json``, as a user reads it."""
    proc = hpcpipe_cmd(env, cwd, "status", "--session", str(session), "--json")
    assert proc.returncode == 0, proc.stderr
    return {r["name"]: r for r in json.loads(proc.stdout)}


def records(home, session) -> dict[str, dict]:
    """The full task records (logs included) in the embedded store."""
    from hpcpipe.store.sqlite import SQLiteStore

    store = SQLiteStore(home / "tasks.sqlite")
    return {t["name"]: t for t in store.list_tasks(session=store.session_id(session))}


def test_ibllib_pipeline_runs_locally_with_ibllib_statuses(env, shadow_dir, tmp_path):
    session = make_ibl_session(tmp_path / "data")
    proc = hpcpipe_cmd(env, shadow_dir, "submit", "--session", str(session), "--pipeline", PIPE, "--backend", "local")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # some task did not complete
    got = rows(env, shadow_dir, session)
    assert {n: r["status"] for n, r in got.items()} == EXPECTED, proc.stdout + proc.stderr
    from hpcpipe.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "home" / "tasks.sqlite")
    first = records(tmp_path / "home", session)
    log = first["Fails"]["log"]
    assert "Traceback" in log and "ValueError: deliberate failure in Fails._run" in log
    assert "Running on machine:" in first["Extract"]["log"] and "running ibllib version" in first["Extract"]["log"]
    assert first["Extract"]["version"].startswith("4.1")
    datasets = store.list_datasets(store.session_id(session))
    assert [(d["collection"], d["name"]) for d in datasets] == [("alf", "_ibl_trials.goCue_times.npy")]

    # a second submit changes nothing: no task is recreated, the done ones are not run again
    again = hpcpipe_cmd(env, shadow_dir, "submit", "--session", str(session), "--pipeline", PIPE)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {n: (r["id"], r["status"]) for n, r in records(tmp_path / "home", session).items()} == \
        {n: (r["id"], r["status"]) for n, r in first.items()}

    # rerun of the Errored task: ibllib's rerun rule, the log keeps the first run
    (shadow_dir / "hpcpipe").rename(shadow_dir / "not-hpcpipe")
    rerun = hpcpipe_cmd(env, shadow_dir, "rerun", "--session", str(session), "--pipeline", PIPE,
                        "--status", "Errored")
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    after = records(tmp_path / "home", session)
    assert after["Fails"]["status"] == "Errored" and after["AfterFails"]["status"] == "Held"
    assert after["Fails"]["log"].count("deliberate failure in Fails._run") >= 1


def test_same_statuses_as_ibllib_own_pipeline_run(env, tmp_path, monkeypatch):
    """ibllib's own ``create_alyx_tasks`` + ``Pipeline.run`` in this process, over the embedded
    store's ONE face: the statuses hpcpipe's submit gives are the ones ibllib gives."""
    monkeypatch.setenv("HPCPIPE_HOME", env["HPCPIPE_HOME"])
    monkeypatch.setenv("HPCPIPE_CONFIG", env["HPCPIPE_CONFIG"])
    from hpcpipe.store.oneface import OneFace
    from hpcpipe.store.sqlite import SQLiteStore

    session = make_ibl_session(tmp_path / "data")
    store = SQLiteStore(tmp_path / "own.sqlite")
    one = OneFace(store)
    pipe = IblTestPipeline(session, one=one)
    assert pipe.eid == store.session_id(session)
    created = pipe.create_alyx_tasks()
    assert [t["name"] for t in created] == list(EXPECTED)
    assert [t["id"] for t in pipe.create_alyx_tasks()] == [t["id"] for t in created]  # idempotent
    deck, datasets = pipe.run(machine="testbox")
    assert {t["name"]: t["status"] for t in store.list_tasks(session=pipe.eid)} == EXPECTED
    assert [d["name"] for d in datasets] == ["_ibl_trials.goCue_times.npy"]


CRASH = "tests.ibllib.ibl_tasks.CrashPipeline"


@pytest.mark.parametrize("broken, expected", [
    ("constructor", "RuntimeError: deliberate crash in CrashesInJob.__init__"),
    ("import", "No module named 'a_module_missing_on_the_compute_node'"),
])
def test_failure_before_reporting_has_its_traceback_in_the_log(env, shadow_dir, tmp_path, broken, expected):
    session = make_ibl_session(tmp_path / "data")
    if broken == "import":
        env = dict(env, IBL_TEST_BREAK_IMPORT="1")
    proc = hpcpipe_cmd(env, shadow_dir, "submit", "--session", str(session), "--pipeline", CRASH)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = records(tmp_path / "home", session)
    assert got["CrashesInJob"]["status"] == "Errored"
    assert "Traceback" in got["CrashesInJob"]["log"] and expected in got["CrashesInJob"]["log"]
    assert got["AfterFails"]["status"] == "Held"
