"""SSHTransport against the real loopback sshd (scripts/sshd-up)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import paramiko
import pytest

from hpcpipe.errors import BackendError
from hpcpipe.ssh import AuthFailed, ConnectionLost, HostKeyRejected, HostUnreachable, SSHTransport
from tests.ssh.conftest import _free_port

pytestmark = pytest.mark.ssh


# ---------------------------------------------------------------- commands
def test_run_commands(transport):
    r = transport.run(["echo", "hello", "two words"])
    assert (r.returncode, r.stdout, r.stderr) == (0, "hello two words\n", "")
    r = transport.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    with pytest.raises(BackendError, match="exit code 3|err"):
        r.check()
    r = transport.run(["cat"], input="from stdin\n")
    assert r.stdout == "from stdin\n"
    r = transport.run(["definitely-not-a-command-xyz"])
    assert r.returncode == 127


def test_large_output_both_streams(transport):
    # 2 MB on stdout and 1 MB on stderr at once must not deadlock on channel windows
    r = transport.run(["sh", "-c", "head -c 2000000 /dev/zero | tr '\\0' a; head -c 1000000 /dev/zero | tr '\\0' b >&2"],
                      timeout=60)
    assert r.returncode == 0 and len(r.stdout) == 2_000_000 and len(r.stderr) == 1_000_000


def test_timeout(transport):
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"did not answer within 1 s \(it said: busy, retrying\)"):
        transport.run(["sh", "-c", "echo starting >&2; echo busy, retrying >&2; sleep 5"], timeout=1)
    assert time.monotonic() - t0 < 4
    assert transport.run(["true"]).returncode == 0  # the connection is still usable


def test_slurm_conf_reaches_remote_shell(transport):
    conf = (Path(transport.known_hosts).parents[1] / "etc" / "sshd_config").read_text()
    expected = next((l.split("=", 1)[1] for l in conf.splitlines() if l.startswith("SetEnv SLURM_CONF=")), None)
    if expected is None:
        pytest.skip("sshd was started without a SLURM_CONF")
    assert transport.run(["sh", "-c", 'printf %s "$SLURM_CONF"']).stdout == expected


# ---------------------------------------------------------------- files
def test_sftp_write_read_makedirs(transport, tmp_path):
    target = tmp_path / "deep" / "er" / "job.sh"
    transport.write_file(str(target), "#!/bin/sh\necho hi\n", 0o750)
    assert target.read_text() == "#!/bin/sh\necho hi\n"
    assert target.stat().st_mode & 0o777 == 0o750
    assert transport.read_file(str(target)) == "#!/bin/sh\necho hi\n"
    transport.write_file(str(target), "v2\n")  # replace atomically
    assert transport.read_file(str(target)) == "v2\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["job.sh"]  # no temp files left
    assert transport.read_file(str(tmp_path / "missing.txt")) is None
    transport.makedirs(str(tmp_path / "a" / "b" / "c"))
    transport.makedirs(str(tmp_path / "a" / "b" / "c"))  # exists: fine
    assert (tmp_path / "a" / "b" / "c").is_dir()
    assert transport.run(["cat", str(target)]).stdout == "v2\n"


# ---------------------------------------------------------------- one connection
def test_one_connection_reused(transport, tmp_path):
    assert transport.connect_count == 0  # lazy
    for i in range(15):
        assert transport.run(["echo", str(i)]).stdout == f"{i}\n"
        transport.write_file(str(tmp_path / f"f{i}"), str(i))
        assert transport.read_file(str(tmp_path / f"f{i}")) == str(i)
    transport.makedirs(str(tmp_path / "d"))
    assert transport.connect_count == 1


def test_reconnects_after_drop(transport):
    assert transport.run(["true"]).returncode == 0
    transport._client.get_transport().sock.close()  # the network goes away under us
    time.sleep(0.2)
    assert transport.run(["echo", "back"]).stdout == "back\n"
    assert transport.read_file("/etc/hostname") is not None
    assert transport.connect_count == 2


class _CutAfterExec(SSHTransport):
    """Closes its own socket right after the first command was sent."""

    cuts = 1
    delay = 0.3

    def _after_exec(self, chan, argv):
        if self.cuts:
            self.cuts -= 1
            time.sleep(self.delay)
            self._client.get_transport().sock.close()


def test_cut_during_command_not_rerun(make_transport, tmp_path):
    t = make_transport(cls=_CutAfterExec)
    counter = tmp_path / "runs"
    with pytest.raises(ConnectionLost) as ei:
        t.run(["sh", "-c", 'echo x >> "$1"; sleep 1', "sh", str(counter)])
    assert ei.value.sent
    time.sleep(1.2)
    assert counter.read_text() == "x\n"  # ran once, not repeated behind our back
    assert t.run(["echo", "ok"]).stdout == "ok\n"  # next call reconnects


class _CutOnceStarted(SSHTransport):
    """Closes its own socket once the first command has visibly started (``started`` exists)."""

    started: Path

    def _after_exec(self, chan, argv):
        if not getattr(self, "_done", False):
            self._done = True
            end = time.monotonic() + 20
            while not self.started.exists() and time.monotonic() < end:
                time.sleep(0.02)
            self._client.get_transport().sock.close()


def test_cut_during_repeatable_command_sent_again(make_transport, tmp_path):
    t = make_transport(cls=_CutOnceStarted)
    counter = t.started = tmp_path / "runs"
    # the caller says the command may run twice: it is sent again on a new connection
    r = t.run(["sh", "-c", 'echo x >> "$1"; sleep 1; echo done', "sh", str(counter)], repeatable=True)
    assert r.stdout == "done\n" and t.connect_count == 2
    assert counter.read_text() == "x\nx\n"  # the cut one had started: it ran, then ran again


def test_transport_knows_no_command_by_name(make_transport):
    # a SLURM query is not repeated unless its caller says so: the transport has no list of commands
    t = make_transport(cls=_CutAfterExec)
    t.delay = 0  # cut before any answer can arrive
    with pytest.raises(ConnectionLost) as ei:
        t.run(["sinfo", "--version"])
    assert ei.value.sent and t.connect_count == 1


# ---------------------------------------------------------------- host keys
def test_unknown_host_key_refused(make_transport, host_key, tmp_path, sshd):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    t = make_transport(known_hosts=kh)
    with pytest.raises(HostKeyRejected) as ei:
        t.run(["true"])
    msg = str(ei.value)
    assert f"[127.0.0.1]:{sshd['HPCPIPE_SSHD_PORT']}" in msg
    assert host_key.fingerprint in msg and "unknown" in msg
    assert kh.read_text() == ""  # nothing added silently


def test_missing_known_hosts_file_refused(make_transport, tmp_path):
    t = make_transport(known_hosts=tmp_path / "nope")
    with pytest.raises(HostKeyRejected, match="unknown"):
        t.run(["true"])
    assert not (tmp_path / "nope").exists()


def test_changed_host_key_refused(make_transport, host_key, tmp_path, sshd):
    other = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else None
    if other is None:
        other = _other_ed25519(tmp_path)
    kh = tmp_path / "known_hosts"
    line = f"[127.0.0.1]:{sshd['HPCPIPE_SSHD_PORT']} {other.get_name()} {other.get_base64()}\n"
    kh.write_text(line)
    for accept in (False, True):  # accept-new never accepts a CHANGED key
        t = make_transport(known_hosts=kh, accept_new_host_key=accept)
        with pytest.raises(HostKeyRejected) as ei:
            t.run(["true"])
        msg = str(ei.value)
        assert "CHANGED" in msg and "127.0.0.1" in msg
        assert host_key.fingerprint in msg and other.fingerprint in msg
    assert kh.read_text() == line


def _other_ed25519(tmp_path: Path) -> paramiko.PKey:
    import subprocess

    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return paramiko.Ed25519Key(filename=str(key))


def test_accept_new_host_key_once_records_it(make_transport, host_key, tmp_path):
    kh = tmp_path / "sub" / "known_hosts"
    t = make_transport(known_hosts=kh, accept_new_host_key=True)
    assert t.run(["echo", "hi"]).stdout == "hi\n"
    recorded = paramiko.HostKeys(str(kh))
    assert recorded.lookup(f"[127.0.0.1]:{t.port}")[host_key.get_name()] == host_key
    t.close()
    # from now on the recorded key is simply known, without the option
    t2 = make_transport(known_hosts=kh)
    assert t2.run(["true"]).returncode == 0
    assert kh.read_text().count("\n") == 1


# ---------------------------------------------------------------- auth, config
def test_wrong_key_refused(make_transport, tmp_path):
    import subprocess

    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    t = make_transport(key_filename=str(key))
    with pytest.raises(AuthFailed, match="authentication as root on 127.0.0.1"):
        t.run(["true"])


def test_passphrase_never_logged(make_transport, sshd, tmp_path, caplog):
    secret = "pa55-Phrase-xyzzy"
    key = paramiko.Ed25519Key(filename=sshd["HPCPIPE_SSHD_KEY"])
    enc = tmp_path / "enc_key"
    import subprocess

    subprocess.run(["cp", sshd["HPCPIPE_SSHD_KEY"], str(enc)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-p", "-N", secret, "-f", str(enc)], check=True,
                   capture_output=True)
    assert key  # the plain key loads; the copy is now encrypted
    with caplog.at_level(logging.DEBUG):
        t = make_transport(key_filename=str(enc), passphrase=secret)
        assert t.run(["echo", "ok"]).stdout == "ok\n"
        assert secret not in repr(t) and secret not in t.name
        no = make_transport(key_filename=str(enc))
        with pytest.raises(AuthFailed, match="encrypted|passphrase|failed"):
            no.run(["true"])
    assert secret not in caplog.text


def test_settings_from_ssh_config(make_transport, sshd, tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host testcluster\n  HostName 127.0.0.1\n  Port {sshd['HPCPIPE_SSHD_PORT']}\n"
                   f"  User root\n  IdentityFile {sshd['HPCPIPE_SSHD_KEY']}\n")
    t = make_transport(host="testcluster", user=None, port=None, key_filename=None, ssh_config=cfg)
    assert (t.host, t.port, t.user) == ("127.0.0.1", int(sshd["HPCPIPE_SSHD_PORT"]), "root")
    assert t.run(["whoami"]).stdout == "root\n"


def test_proxy_jump(make_transport, sshd, tmp_path):
    # jump through the test sshd to itself: the target connection rides a direct-tcpip channel
    port = sshd["HPCPIPE_SSHD_PORT"]
    t = make_transport(proxy_jump=f"root@127.0.0.1:{port}")
    assert t.run(["echo", "via jump"]).stdout == "via jump\n"
    assert t._jump is not None and t._jump.connect_count == 1
    assert isinstance(t._client.get_transport().sock, paramiko.Channel)
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host inner\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
                   f"  ProxyJump root@127.0.0.1:{port}\n  IdentityFile {sshd['HPCPIPE_SSHD_KEY']}\n")
    t2 = make_transport(host="inner", user=None, port=None, key_filename=None, ssh_config=cfg)
    assert t2.proxy_jump == f"root@127.0.0.1:{port}"
    assert t2.run(["true"]).returncode == 0 and t2._jump.connect_count == 1


# ---------------------------------------------------------------- unreachable
def test_unreachable_host_clear_error_quickly(make_transport):
    port = _free_port()
    t = make_transport(port=port, connect_attempts=3)
    t0 = time.monotonic()
    with pytest.raises(HostUnreachable) as ei:
        t.run(["true"])
    took = time.monotonic() - t0
    msg = str(ei.value)
    assert f"127.0.0.1:{port}" in msg and "refused" in msg.lower() and "3 attempt" in msg
    assert took < 5


def test_unresolvable_host_clear_error(make_transport):
    t = make_transport(host="no-such-host.invalid", connect_attempts=1)
    with pytest.raises(HostUnreachable, match="no-such-host.invalid:"):
        t.run(["true"])
