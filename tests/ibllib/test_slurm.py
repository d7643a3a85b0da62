"""Unmodified ibllib Task/Pipeline subclasses through ``hpcpipe submit --backend slurm`` on the
real test cluster: the statuses ibllib gives, datasets registered, early failures with their
traceback, jobs unharmed by a shadowing folder in the submitting directory."""
from __future__ import annotations

import os

import pytest

from tests.ibllib.conftest import REASON, hpcpipe_cmd

pytest.importorskip("ibllib", reason=REASON)

from tests.cliutil import cancel_left_jobs  # noqa: E402
from tests.ibllib.ibl_tasks import make_ibl_session  # noqa: E402
from tests.ibllib.test_local import EXPECTED, PIPE, records  # noqa: E402
from tests.slurm.conftest import slurm_cluster  # noqa: E402,F401
from tests.slurm.test_backend import wait_until_settled  # noqa: E402

pytestmark = pytest.mark.slurm


@pytest.fixture
def slurm_env(env, slurm_cluster):  # noqa: F811
    e = {k: v for k, v in env.items()
         if not k.startswith("HPCPIPE_SLURM_") or k in ("HPCPIPE_SLURM_BASE", "HPCPIPE_SLURM_SACCT")}
    yield e
    cancel_left_jobs(e["HPCPIPE_HOME"])


def test_ibllib_pipeline_on_slurm(slurm_env, shadow_dir, tmp_path):
    env = slurm_env
    ok = make_ibl_session(tmp_path / "data")
    crash = make_ibl_session(tmp_path / "data", subject="KS002")
    for session, pipe in ((ok, PIPE), (crash, "tests.ibllib.ibl_tasks.CrashPipeline")):
        proc = hpcpipe_cmd(env, shadow_dir, "submit", "--session", str(session), "--pipeline", pipe,
                           "--backend", "slurm")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_until_settled(env, 6, timeout=300)
    home = tmp_path / "home"
    got = records(home, ok)
    assert {n: r["status"] for n, r in got.items()} == EXPECTED, {n: r["log"] for n, r in got.items()}
    assert "ValueError: deliberate failure in Fails._run" in got["Fails"]["log"]
    assert "Running on machine:" in got["Extract"]["log"]
    from hpcpipe.store.sqlite import SQLiteStore

    store = SQLiteStore(home / "tasks.sqlite")
    assert [d["name"] for d in store.list_datasets(store.session_id(ok))] == ["_ibl_trials.goCue_times.npy"]
    crashed = records(home, crash)
    assert crashed["CrashesInJob"]["status"] == "Errored"
    assert "RuntimeError: deliberate crash in CrashesInJob.__init__" in crashed["CrashesInJob"]["log"]
    assert crashed["AfterFails"]["status"] == "Held"
    assert os.path.isdir(shadow_dir / "hpcpipe")  # it was there all along
