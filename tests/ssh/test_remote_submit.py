"""`hpcpipe submit --remote`: the SLURM backend over SSH, through the real loopback sshd."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from hpcpipe.demo.session import make_session
from tests.cliutil import cancel_left_jobs
from tests.cliutil import run_hpcpipe as hp

pytestmark = pytest.mark.ssh
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path, sshd, slurm_remote):
    data = tmp_path / "data"
    config = tmp_path / "config.toml"
    config.write_text(f"""
[clusters.loop]
host = "{sshd['HPCPIPE_SSHD_HOST']}"
port = {sshd['HPCPIPE_SSHD_PORT']}
user = "{sshd['HPCPIPE_SSHD_USER']}"
key = "{sshd['HPCPIPE_SSHD_KEY']}"
known_hosts = "{sshd['HPCPIPE_SSHD_KNOWN_HOSTS']}"
python = "{sys.executable}"
run_dir = "{tmp_path / 'cluster-runs'}"
path_map = {{ "{data}" = "{data}" }}
""")
    e = dict(os.environ, HPCPIPE_HOME=str(tmp_path / "home"), HPCPIPE_CONFIG=str(config), PYTHONPATH=str(REPO))
    e.pop("SLURM_CONF", None)  # the workstation has no SLURM: everything goes through ssh
    yield e
    cancel_left_jobs(e["HPCPIPE_HOME"])  # whatever a failing test left queued



def test_demo_pipeline_completes_through_ssh(env, tmp_path):
    session = make_session(tmp_path / "data" / "lab" / "Subjects" / "R1" / "2026-11-20" / "001", duration=15)
    out = hp(env, "submit", "--session", str(session), "--pipeline", "demo", "--remote", "loop").stdout
    assert "5 task(s) in 5 sbatch call(s)" in out
    deadline = time.monotonic() + 240
    while True:
        rows = json.loads(hp(env, "status", "--json").stdout)  # folds results read over SFTP
        if rows and {r["status"] for r in rows} == {"Complete"}:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(2)
    assert len(rows) == 5 and {r["backend"] for r in rows} == {"slurm"}
    # the scripts and results live in the cluster's run folder, not in the workstation's home
    assert list((tmp_path / "cluster-runs").glob("*/results/*.json"))
    assert not (Path(env["HPCPIPE_HOME"]) / "runs").exists()


def test_unmapped_session_is_refused_before_connecting(env, tmp_path):
    session = make_session(tmp_path / "elsewhere" / "R2" / "2026-11-20" / "001", duration=15)
    proc = hp(env, "submit", "--session", str(session), "--pipeline", "demo", "--remote", "loop", check=False)
    assert proc.returncode == 2
    assert "has no mapping to the cluster" in proc.stderr and str(tmp_path / "data") in proc.stderr
    assert not (tmp_path / "cluster-runs").exists()


def test_unknown_host_key_is_refused(env, tmp_path):
    config = Path(env["HPCPIPE_CONFIG"])
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    config.write_text(config.read_text().replace(
        next(line for line in config.read_text().splitlines() if line.startswith("known_hosts")),
        f'known_hosts = "{empty}"'))
    env = dict(env, HOME=str(tmp_path))  # no ~/.ssh/known_hosts either
    session = make_session(tmp_path / "data" / "R3" / "2026-11-20" / "001", duration=15)
    proc = hp(env, "submit", "--session", str(session), "--pipeline", "demo", "--remote", "loop", check=False)
    assert proc.returncode == 2
    assert "host key" in proc.stderr.lower() and "SHA256:" in proc.stderr
    assert not (tmp_path / "cluster-runs").exists()
