"""Fixtures for the SSH tests: a real sshd on loopback (scripts/sshd-up), and the SLURM test
cluster behind it when one is running (never started or stopped here)."""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SSHD_UP = ROOT / "scripts" / "sshd-up"


def _parse_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export "):].split("=", 1)
            env[k] = v
    return env


def _slurm_env() -> dict[str, str]:
    if os.environ.get("SLURM_CONF"):
        return {"SLURM_CONF": os.environ["SLURM_CONF"]}
    f = Path(os.environ.get("HPCPIPE_SLURM_BASE", "/tmp/hpcpipe-slurm")) / "env.sh"
    return _parse_exports(f.read_text()) if f.is_file() else {}


@pytest.fixture(scope="session")
def sshd() -> dict[str, str]:
    """Start (or find) the loopback sshd; skip the test with the reason when it cannot run."""
    if os.geteuid() != 0:
        pytest.skip("scripts/sshd-up needs root")
    env = dict(os.environ)
    env.update({k: v for k, v in _slurm_env().items() if k == "SLURM_CONF"})
    try:
        proc = subprocess.run(["bash", str(SSHD_UP)], capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"scripts/sshd-up could not run: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"scripts/sshd-up failed: {proc.stderr.strip()[-400:]}")
    info = _parse_exports(proc.stdout)
    info["HPCPIPE_SSHD_PORT"] = info.get("HPCPIPE_SSHD_PORT", "2222")
    return info


def _pub_key(info: dict[str, str]):
    import paramiko

    line = (Path(info["HPCPIPE_SSHD_BASE"]) / "etc" / "ssh_host_ed25519_key.pub").read_text().split()
    return paramiko.Ed25519Key(data=__import__("base64").b64decode(line[1]))


@pytest.fixture(scope="session")
def host_key(sshd):
    """The test server's host key (a paramiko PKey)."""
    return _pub_key(sshd)


@pytest.fixture
def make_transport(sshd):
    """Factory for ``SSHTransport`` to the test sshd, isolated from ~/.ssh (config and
    known_hosts) unless asked; every transport made is closed after the test."""
    from hpcpipe.ssh import SSHTransport

    made = []

    def make(cls=SSHTransport, **kw):
        kw.setdefault("user", sshd["HPCPIPE_SSHD_USER"])
        kw.setdefault("port", int(sshd["HPCPIPE_SSHD_PORT"]))
        kw.setdefault("key_filename", sshd["HPCPIPE_SSHD_KEY"])
        kw.setdefault("known_hosts", sshd["HPCPIPE_SSHD_KNOWN_HOSTS"])
        kw.setdefault("user_known_hosts", False)
        kw.setdefault("ssh_config", None)
        kw.setdefault("allow_agent", False)
        kw.setdefault("connect_timeout", 5)
        t = cls(kw.pop("host", sshd["HPCPIPE_SSHD_HOST"]), **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


@pytest.fixture
def transport(make_transport):
    return make_transport()


@pytest.fixture(scope="session")
def slurm_remote(sshd):
    """Skip unless the SLURM test cluster answers through the sshd (sinfo over SSH)."""
    from hpcpipe.ssh import SSHTransport

    if not _slurm_env().get("SLURM_CONF"):
        pytest.skip("no SLURM test cluster (run scripts/slurm-up; /tmp/hpcpipe-slurm/env.sh missing)")
    t = SSHTransport(sshd["HPCPIPE_SSHD_HOST"], user=sshd["HPCPIPE_SSHD_USER"],
                     port=int(sshd["HPCPIPE_SSHD_PORT"]), key_filename=sshd["HPCPIPE_SSHD_KEY"],
                     known_hosts=sshd["HPCPIPE_SSHD_KNOWN_HOSTS"], user_known_hosts=False,
                     ssh_config=None, allow_agent=False)
    try:
        r = t.run(["sinfo", "-h", "-o", "%P %a"], timeout=20)
        acct = t.run(["sacct", "-n", "-X", "-o", "JobID", "-S", "now-1minutes"], timeout=20)
    finally:
        t.close()
    if r.returncode != 0:
        pytest.skip(f"SLURM test cluster not reachable through sshd: {r.stderr.strip()}")
    return {"sacct": acct.returncode == 0}


@pytest.fixture
def token() -> str:
    return "t" + uuid.uuid4().hex[:16]


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def private_sshd(sshd):
    """A second sshd of our own (own base dir and port), for tests that stop sshd: the shared
    one stays up for everybody else. Yields its env lines plus the env to restart it with."""
    import shutil
    import tempfile

    base = tempfile.mkdtemp(prefix="hpcpipe-sshd-", dir="/tmp")
    env = dict(os.environ, HPCPIPE_SSHD_BASE=base, HPCPIPE_SSHD_PORT=str(_free_port()))
    env.update({k: v for k, v in _slurm_env().items() if k == "SLURM_CONF"})
    proc = subprocess.run(["bash", str(SSHD_UP)], capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"a second sshd could not start: {proc.stderr.strip()[-300:]}")
    info = _parse_exports(proc.stdout)
    info["_env"] = env
    try:
        yield info
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "sshd-down"), "--sessions", base],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """A test that needs the loopback sshd is an ``ssh`` test, however it gets it (directly or
    through ``make_transport``/``slurm_remote``...): ``scripts/test`` runs those after starting the
    servers, not in the fast phase where they would only skip."""
    for item in items:
        if "sshd" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ssh)
