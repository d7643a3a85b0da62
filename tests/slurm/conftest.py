"""Fixtures for the SLURM client tests.

Tests marked ``slurm`` submit real jobs to the test cluster started by ``scripts/slurm-up``
(``eval "$(bash scripts/slurm-up)"`` exports SLURM_CONF). Without a reachable cluster they are
skipped with the reason. Every job a test submits is cancelled at teardown, by id.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from hpcpipe.slurm import cancel as slurm_cancel
from hpcpipe.slurm.profiles import Profile
from hpcpipe.slurm.render import JobSpec, job_script
from hpcpipe.slurm.submit import submit
from hpcpipe.transport import LocalTransport
from tests.alyx_server.fixtures import alyx_client_kind, alyx_fresh_server  # noqa: F401 (test_alyx_backfill)

_CONFIG_KEYS = ("PROFILE", "PROFILE_DIRS", "PARTITION", "ACCOUNT", "QOS", "CONSTRAINT")


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch, tmp_path_factory):
    """No user config or HPCPIPE_SLURM_* overrides leak into rendering tests."""
    monkeypatch.setenv("HPCPIPE_CONFIG", str(tmp_path_factory.getbasetemp() / "no-config.toml"))
    for key in _CONFIG_KEYS:
        monkeypatch.delenv(f"HPCPIPE_SLURM_{key}", raising=False)


def _cluster_problem() -> str | None:
    if not os.environ.get("SLURM_CONF"):
        return 'SLURM_CONF is not set: start the test cluster with eval "$(bash scripts/slurm-up)"'
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except FileNotFoundError:
        return "scontrol is not installed (run scripts/slurm-up)"
    except subprocess.TimeoutExpired:
        return "scontrol ping did not answer within 15 s"
    if "is UP" not in out.stdout:
        return f"slurmctld is not reachable: {(out.stdout + out.stderr).strip()}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> dict:
    """Skip unless the test cluster answers; returns what the tests need to know about it."""
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    return {
        "sacct": os.environ.get("HPCPIPE_SLURM_SACCT", "1") == "1",
        "gpus": int(os.environ.get("HPCPIPE_SLURM_GPUS", "0") or 0),
    }


@pytest.fixture
def env(tmp_path, slurm_cluster):
    """The environment of an ``hpcpipe`` command run by a test: its own home, config and GPU
    locks, no HPCPIPE_SLURM_* overrides; jobs a failing test left queued are cancelled."""
    e = dict(os.environ, HPCPIPE_HOME=str(tmp_path / "home"), HPCPIPE_GPU_LOCK_DIR=str(tmp_path / "locks"),
             PYTHONPATH=str(Path(__file__).resolve().parents[2]), HPCPIPE_CONFIG=str(tmp_path / "config.toml"))
    for key in list(e):
        if key.startswith("HPCPIPE_SLURM_") and key not in ("HPCPIPE_SLURM_BASE", "HPCPIPE_SLURM_SACCT"):
            e.pop(key)
    yield e
    from tests.cliutil import cancel_left_jobs

    cancel_left_jobs(e["HPCPIPE_HOME"])


@pytest.fixture
def transport(slurm_cluster) -> LocalTransport:
    return LocalTransport()


@pytest.fixture
def test_profile(tmp_path) -> Profile:
    """A neutral profile: default partition, gres GPUs, an IO license named like the cluster's."""
    return Profile(name="test", scratch=str(tmp_path / "scratch"), io_license="io", gpu_partition="gpu")


class Jobs:
    """Render + submit helper that remembers every id, for teardown."""

    def __init__(self, transport: LocalTransport, profile: Profile, folder: Path) -> None:
        self.transport = transport
        self.profile = profile
        self.folder = folder
        self.tag = f"hpt{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.ids: list[str] = []

    def submit(self, spec: JobSpec) -> str:
        path = self.folder / "scripts" / f"{len(self.ids):03d}.sh"
        job_id = submit(self.transport, job_script(spec, self.profile), str(path))
        self.ids.append(job_id)
        return job_id

    def spec(self, suffix: str, command: list[str], **kw) -> JobSpec:
        pattern = "%A_%a" if kw.get("array") else "%j"
        kw.setdefault("output", str(self.folder / "logs" / f"{suffix}_{pattern}.out"))
        return JobSpec(name=f"{self.tag}_{suffix}", command=command, **kw)


@pytest.fixture
def jobs(transport, test_profile, tmp_path):
    helper = Jobs(transport, test_profile, tmp_path)
    (tmp_path / "logs").mkdir()
    yield helper
    if helper.ids:
        slurm_cancel.cancel(transport, helper.ids)


@pytest.fixture
def wait_until():
    """The deadline helper, as a fixture (test modules here are not a package)."""
    return _wait_until


def _wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.25,
               what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
