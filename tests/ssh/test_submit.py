"""sbatch through SSH against the real test SLURM cluster: complete, inert injection, and no
duplicate job when the connection is cut mid-submission."""
from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hpcpipe.errors import BackendError
from hpcpipe.ssh import SSHTransport, submit_once, submit_script_once

ROOT = Path(__file__).resolve().parents[2]


SCRIPT = "#!/bin/sh\n#SBATCH --time=1\n#SBATCH --mem=50M\ntrue\n"


def _wait_state(t, job_id: str, want: set[str], timeout: float = 60) -> str:
    end = time.monotonic() + timeout
    state = ""
    while time.monotonic() < end:
        r = t.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"])
        state = r.stdout.strip().split("\n")[0].split(" ")[0] if r.returncode == 0 else ""
        if state in want:
            return state
        time.sleep(1)
    raise AssertionError(f"job {job_id} is {state or 'unknown'} after {timeout} s, expected {want}")


def _jobs_named(t, name: str) -> set[str]:
    q = t.run(["squeue", "-h", "-t", "all", "--name", name, "-o", "%i"]).check()
    ids = set(q.stdout.split())
    a = t.run(["sacct", "-X", "-n", "-P", "--name", name, "-S", "now-1hours", "-o", "JobID"])
    if a.returncode == 0:
        ids |= set(a.stdout.split())
    return ids


def test_sbatch_over_ssh_completes(transport, slurm_remote, tmp_path, token):
    if not slurm_remote["sacct"]:
        pytest.skip("the test cluster runs without accounting: no sacct")
    script = tmp_path / "job.sh"
    transport.write_file(str(script), SCRIPT, 0o755)
    r = transport.run(["sbatch", "--parsable", "-J", f"hp-{token}", "-o", str(tmp_path / "out.log"), str(script)])
    r.check()
    job_id = r.stdout.strip()
    assert job_id.isdigit() and r.stderr == ""
    assert _wait_state(transport, job_id, {"COMPLETED", "FAILED", "CANCELLED"}) == "COMPLETED"
    assert transport.connect_count == 1
    # script on stdin works too (saved whole on the cluster side before sbatch reads it)
    r = transport.run(["sbatch", "--parsable", "-J", f"hp-{token}-stdin", "-o", "/dev/null"], input=SCRIPT)
    assert r.check().stdout.strip().isdigit()
    # a failing sbatch keeps its own exit code and message
    r = transport.run(["sbatch", "--parsable", "--partition", "no-such-partition", str(script)])
    assert r.returncode != 0 and "partition" in r.stderr.lower() and "@@hpcpipe" not in r.stderr


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
    r = transport.run(["sbatch", "--parsable", "-J", f"hp-{token} $(touch {pwned}4)",
                       "-o", str(session / "slurm.log"), str(session / "job.sh")])
    job_id = r.check().stdout.strip()
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
    # the convenience form: write the script, submit once, get the id
    jid = submit_script_once(transport, str(tmp_path / "b" / "job.sh"), SCRIPT,
                             ["-J", f"hp-{token}-b", "-o", "/dev/null"], token=token + "b")
    assert jid.isdigit() and (tmp_path / "b" / ".submissions" / f"{token}b.rc").read_text() == "0\n"


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


def test_cut_right_after_sending_sbatch(make_transport, slurm_remote, tmp_path, token):
    """The plain path the SLURM backend takes: transport.run(["sbatch", ...])."""
    t = make_transport(cls=_CutMidSbatch)
    t.wait_for_lock = False
    script = tmp_path / "job.sh"
    t.write_file(str(script), SCRIPT, 0o755)
    name = f"hp-{token}"
    r = t.run(["sbatch", "--parsable", "-J", name, "-o", "/dev/null", str(script)])
    job_id = r.check().stdout.strip()
    assert job_id.isdigit()
    assert t.connect_count == 2  # the cut happened and a new connection was made
    assert _jobs_named(t, name) == {job_id}  # exactly one job


def test_cut_while_sbatch_runs_socket_closed(make_transport, slurm_remote, tmp_path, token, caplog):
    t = make_transport(cls=_CutMidSbatch)
    script = tmp_path / "job.sh"
    t.write_file(str(script), SCRIPT, 0o755)
    name = f"hp-{token}"
    # a slow sbatch (1 s), so the connection is cut while it runs, before its output is read
    argv = ["sh", "-c", 'sleep 1; exec sbatch "$@"', "sbatch", "--parsable", "-J", name, "-o", "/dev/null",
            str(script)]
    with caplog.at_level(logging.WARNING, logger="hpcpipe.ssh"):
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
    with caplog.at_level(logging.WARNING, logger="hpcpipe.ssh"):
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
