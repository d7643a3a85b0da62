"""The once-only sbatch protocol (``slurm.submit``) over a real shell on this machine: a stand-in
``sbatch`` on PATH counts its runs, a transport drops "the connection" after the command ran.
The same protocol over the real sshd and cluster is in tests/ssh/test_submit.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcpipe.errors import BackendError
from hpcpipe.slurm.submit import submit, submit_once
from hpcpipe.transport import ConnectionLost, LocalTransport, Result

SCRIPT = "#!/bin/sh\ntrue\n"


@pytest.fixture
def counting_sbatch(tmp_path, monkeypatch) -> Path:
    """An ``sbatch`` that appends a line per run to the returned file and prints a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runs = tmp_path / "sbatch-runs"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {runs}\necho "4242;cluster"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return runs


class _DropsAfterRunning(LocalTransport):
    """A lossy transport whose connection "drops" once, after the command ran to its end."""

    lossy = True

    def __init__(self, drops: int = 1) -> None:
        self.drops = drops
        self.sent: list[list[str]] = []

    def run(self, argv, input=None, timeout=120.0, *, repeatable=False) -> Result:
        self.sent.append(list(argv))
        res = super().run(argv, input=input, timeout=timeout, repeatable=repeatable)
        if self.drops:
            self.drops -= 1
            raise ConnectionLost("connection lost while it ran", sent=True)
        return res


def test_lossy_transport_submits_through_the_protocol_once_despite_a_drop(counting_sbatch, tmp_path):
    t = _DropsAfterRunning()
    job_id = submit(t, SCRIPT, str(tmp_path / "job.sh"), ["-J", "hp-x"])
    assert job_id == "4242"
    assert len(t.sent) == 2 and all(argv[:2] == ["sh", "-c"] for argv in t.sent)  # wrapped, sent twice
    assert counting_sbatch.read_text().splitlines() == [f"--parsable -J hp-x {tmp_path / 'job.sh'}"]  # ran once
    assert (tmp_path / "job.sh").read_text() == SCRIPT


def test_this_machine_runs_sbatch_directly(counting_sbatch, tmp_path):
    t = _DropsAfterRunning(drops=0)
    t.lossy = False
    assert submit(t, SCRIPT, str(tmp_path / "job.sh")) == "4242"
    assert [argv[0] for argv in t.sent] == ["sbatch"]
    assert not (tmp_path / "home" / ".cache").exists()  # no markers


def test_a_token_makes_a_repeated_submission_return_the_first_job(counting_sbatch, tmp_path):
    t = LocalTransport()
    argv = ["sbatch", "--parsable", "x.sh"]
    first = submit_once(t, argv, token="run1-a", marker_dir=str(tmp_path / "m"))
    again = submit_once(t, argv, token="run1-a", marker_dir=str(tmp_path / "m"))
    assert (first.returncode, first.stdout, first.stderr) == (0, "4242;cluster\n", "")
    assert again.stdout == first.stdout and len(counting_sbatch.read_text().splitlines()) == 1


def test_connection_that_never_comes_back_names_the_token(counting_sbatch, tmp_path, monkeypatch):
    monkeypatch.setattr("hpcpipe.slurm.submit.time.sleep", lambda s: None)
    t = _DropsAfterRunning(drops=99)
    with pytest.raises(BackendError, match=r"connection failed 3 times.*may or may not have submitted.*token tk"):
        submit_once(t, ["sbatch", "x.sh"], token="tk", attempts=3, marker_dir=str(tmp_path / "m"))
    assert len(counting_sbatch.read_text().splitlines()) == 1  # the retries waited for the first, ran nothing
