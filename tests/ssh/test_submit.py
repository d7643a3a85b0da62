"""sbatch through SSH against the real test SLURM cluster: complete, inert injection, and no
duplicate job when the connection is cut mid-submission.

The transport runs whatever it is given; the once-only protocol is ``hpcpipe.slurm.submit``'s:
``submit`` (the SLURM backend's path) sends sbatch through ``submit_once`` because an
``SSHTransport`` is ``lossy``."""
from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hpcpipe.errors import BackendError
from hpcpipe.slurm.submit import submit, submit_once
from hpcpipe.ssh import ConnectionLost, SSHTransport

ROOT = Path(__file__).resolve().parents[2]


SCRIPT = "#!/bin/sh\n#SBATCH --time=1\n#SBATCH --mem=50M\ntrue\n"


def _wait_state(t, job_id: str, want: set[str], timeout: float = 60) -> str:
    end = time.monotonic() + timeout
    state = ""
    while time.monotonic() < end:
        r = t.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"], repeatable=True)
        state = r.stdout.strip().split("\n")[0].split(" ")[0] if r.returncode == 0 else ""
        if state in want:
            return state
        time.sleep(1)
    raise AssertionError(f"job {job_id} is {state or 'unknown'} after {timeout} s, expected {want}")


def _jobs_named(t, name: str) -> set[str]:
    q = t.run(["squeue", "-h", "-t", "all", "--name", name, "-o", "%i"], repeatable=True).check()
    ids = set(q.stdout.split())
    a = t.run(["sacct", "-X", "-n", "-P", "--name", name, "-S", "now-1hours", "-o", "JobID"], repeatable=True)
    if a.returncode == 0:
        ids |= set(a.stdout.split())
    return ids


def test_sbatch_over_ssh_completes(transport, slurm_remote, tmp_path, token):
    if not slurm_remote["sacct"]:
        pytest.skip("the test cluster runs without accounting: no sacct")
    script = tmp_path / "job.sh"
    job_id = submit(transport, SCRIPT, str(script), ["-J", f"hp-{token}", "-o", str(tmp_path / "out.log")])
    assert job_id.isdigit() and script.read_text() == SCRIPT
    assert _wait_state(transport, job_id, {"COMPLETED", "FAILED", "CANCELLED"}) == "COMPLETED"
    assert transport.connect_count == 1
    # the wrapper gives back sbatch's own result, its trailer taken off
    r = submit_once(transport, ["sbatch", "--parsable", "-J", f"hp-{token}-w", "-o", "/dev/null", str(script)])
    assert r.check().stdout.strip().isdigit() and r.stderr == ""
    # script on stdin works too (saved whole on the cluster side before sbatch reads it)
    r = submit_once(transport, ["sbatch", "--parsable", "-J", f"hp-{token}-stdin", "-o", "/dev/null"], input=SCRIPT)
    assert r.check().stdout.strip().isdigit()
    # a failing sbatch keeps its own exit code and message
    r = submit_once(transport, ["sbatch", "--parsable", "--partition", "no-such-partition", str(script)])
    assert r.returncode != 0 and "partition" in r.stderr.lower() and "@@hpcpipe" not in r.stderr
    with pytest.raises(BackendError, match="partition"):
        submit(transport, SCRIPT, str(script), ["--partition", "no-such-partition"])


def test_injection_inert(transport, slurm_remote, tmp_path, token):
    pwned = tmp_path / "pwned"
    evil = (f"sess 'q\" $(touch {pwned}1) `touch {pwned}2` ;touch {pwned}3; "
            f"$HOME ${{IFS}} | > & * ? ~")  # no backslash: SLURM treats it as an escape in -o
    session = tmp_path / "Subjects" / evil / "2024-01-01" / "001"
    r = transport.run(["mkdir", "-p", str(session)])
    assert r.returncode == 0, r.stderr
    assert session.is_dir()  # created with its literal name
    transport.write_file(str(session / "job.sh"), SCRIPT, 0o755)
    assert transport.run(["cat", str(session / "job.sh")]).stdout == SCRIPT
    assert transport.run(["ls", str(session)]).stdout == "job.sh\n"
    tricky = evil + "\\ \n$(touch x)"
    assert transport.run(["printf", "%s", tricky]).stdout == tricky
    job_id = submit(transport, SCRIPT, str(session / "job.sh"),
                    ["-J", f"hp-{token} $(touch {pwned}4)", "-o", str(session / "slurm.log")])
    if slurm_remote["sacct"]:
        assert _wait_state(transport, job_id, {"COMPLETED", "FAILED"}) == "COMPLETED"
    else:
        time.sleep(3)
    assert (session / "slurm.log").exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("pwned"))
    assert leftovers == []
    assert not (Path.home() / "x").exists()


def test_same_token_submits_once(transport, slurm_remote, tmp_path, token):
    script = tmp_path / "job.sh"
    transport.write_file(str(script), SCRIPT, 0o755)
    argv = ["sbatch", "--parsable", "-J", f"hp-{token}", "-o", "/dev/null", str(script)]
    first = submit_once(transport, argv, token=token, marker_dir=str(tmp_path / "m"))
    again = submit_once(transport, argv, token=token, marker_dir=str(tmp_path / "m"))
    assert first.check().stdout == again.stdout and first.stdout.strip().isdigit()
    assert _jobs_named(transport, f"hp-{token}") == {first.stdout.strip()}
    # the backend's form: write the script, submit once, get the id; the same token, the same job
    args = (transport, SCRIPT, str(tmp_path / "b" / "job.sh"), ["-J", f"hp-{token}-b", "-o", "/dev/null"])
    jid = submit(*args, token=token + "b", marker_dir=str(tmp_path / "b" / ".submissions"))
    assert jid == submit(*args, token=token + "b", marker_dir=str(tmp_path / "b" / ".submissions"))
    assert jid.isdigit() and (tmp_path / "b" / ".submissions" / f"{token}b.rc").read_text() == "0\n"
    assert _jobs_named(transport, f"hp-{token}-b") == {jid}


class _CutMidSbatch(SSHTransport):
    """Cuts the connection once the remote side has claimed the submission token
    (sbatch running or done), before its output is read."""

    action = "socket"
    wait_for_lock = True

    def _after_exec(self, chan, argv):
        if "hpcpipe-submit" not in argv or getattr(self, "_done", False):
            return
        self._done = True
        if not self.wait_for_lock:  # cut at once: the remote wrapper has barely started
            self._client.get_transport().sock.close()
            return
        marker_dir = argv[4] or os.path.expanduser("~/.cache/hpcpipe/submissions")
        lock = Path(marker_dir) / f"{argv[5]}.lock"
        end = time.monotonic() + 20
        while not lock.exists() and time.monotonic() < end:
            time.sleep(0.02)
        assert lock.exists(), "the submission never started"
        if self.action == "socket":
            self._client.get_transport().sock.close()
        else:  # stop sshd with its sessions; bring it back a moment later
            env = self.sshd_env
            subprocess.run(["bash", str(ROOT / "scripts" / "sshd-down"), "--sessions"], env=env,
                           capture_output=True, timeout=30)

            def restart():
                time.sleep(1.0)
                subprocess.run(["bash", str(ROOT / "scripts" / "sshd-up")], env=env,
                               capture_output=True, timeout=120)

            threading.Thread(target=restart, daemon=True).start()


class _CutAfterSend(SSHTransport):
    """Cuts the connection once, a moment after the first command was sent."""

    def _after_exec(self, chan, argv):
        if not getattr(self, "_done", False):
            self._done = True
            time.sleep(0.5)
            self._client.get_transport().sock.close()


def test_cut_right_after_sending_sbatch(make_transport, slurm_remote, tmp_path, token):
    """The path the SLURM backend takes, ``slurm.submit.submit``: one job despite the cut."""
    t = make_transport(cls=_CutMidSbatch)
    t.wait_for_lock = False
    name = f"hp-{token}"
    job_id = submit(t, SCRIPT, str(tmp_path / "job.sh"), ["-J", name, "-o", "/dev/null"])
    assert job_id.isdigit()
    assert t.connect_count == 2  # the cut happened and a new connection was made
    assert _jobs_named(t, name) == {job_id}  # exactly one job


def _slow_sbatch(t, tmp_path, token: str, secs: int) -> tuple[list[str], str]:
    """The job script written through ``t``, and an sbatch of it that answers after ``secs``."""
    script = tmp_path / "job.sh"
    t.write_file(str(script), SCRIPT, 0o755)
    name = f"hp-{token}"
    return ["sh", "-c", f'sleep {secs}; exec sbatch "$@"', "sbatch", "--parsable", "-J", name, "-o", "/dev/null",
            str(script)], name


def test_plain_sbatch_cut_is_not_repeated_by_the_transport(make_transport, slurm_remote, tmp_path, token):
    """Without the protocol, the transport does not send sbatch again on its own: it says the
    command may have run (the transport knows no command by name)."""
    t = make_transport(cls=_CutAfterSend)
    # a slow sbatch (2 s), so the cut (0.5 s after sending) always comes before its answer
    argv, name = _slow_sbatch(t, tmp_path, token, 2)
    with pytest.raises(ConnectionLost) as ei:
        t.run(argv)
    assert ei.value.sent
    time.sleep(3)  # let sbatch, if it started, finish
    assert len(_jobs_named(t, name)) <= 1  # sent at most once; never twice


def test_cut_while_sbatch_runs_socket_closed(make_transport, slurm_remote, tmp_path, token, caplog):
    t = make_transport(cls=_CutMidSbatch)
    # a slow sbatch (1 s), so the connection is cut while it runs, before its output is read
    argv, name = _slow_sbatch(t, tmp_path, token, 1)
    with caplog.at_level(logging.WARNING, logger="hpcpipe.slurm.submit"):
        r = submit_once(t, argv, marker_dir=str(tmp_path / "markers"))
    job_id = r.check().stdout.strip()
    assert job_id.isdigit()
    assert t.connect_count == 2
    assert "already run" in caplog.text  # the retry found the first submission and waited for it
    assert _jobs_named(t, name) == {job_id}  # exactly one job


def test_cut_mid_submission_sshd_stopped(make_transport, private_sshd, slurm_remote, tmp_path, token, caplog):
    # a private sshd (own port and keys): stopping it does not disturb anyone else
    t = make_transport(cls=_CutMidSbatch, port=int(private_sshd["HPCPIPE_SSHD_PORT"]),
                       key_filename=private_sshd["HPCPIPE_SSHD_KEY"],
                       known_hosts=private_sshd["HPCPIPE_SSHD_KNOWN_HOSTS"])
    t.action = "sshd"
    t.sshd_env = private_sshd["_env"]
    script = tmp_path / "job.sh"
    t.write_file(str(script), SCRIPT, 0o755)
    name = f"hp-{token}"
    # a slow sbatch (1 s) so that it is still running when sshd and the session die
    argv = ["sh", "-c", 'sleep 1; exec sbatch "$@"', "sbatch", "--parsable", "-J", name, "-o", "/dev/null",
            str(script)]
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="hpcpipe.slurm.submit"):
        r = submit_once(t, argv, marker_dir=str(tmp_path / "markers"))
    job_id = r.check().stdout.strip()
    assert job_id.isdigit() and time.monotonic() - t0 < 30
    assert t.connect_count == 2 and "already run" in caplog.text
    assert _jobs_named(t, name) == {job_id}


def test_gives_up_clearly_when_host_stays_down(make_transport, tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t = make_transport(port=port, connect_attempts=1)
    with pytest.raises(BackendError, match=r"connection failed 2 times.*submission token tok1"):
        submit_once(t, ["sbatch", "x"], token="tok1", attempts=2)
