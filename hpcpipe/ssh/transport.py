"""``SSHTransport``: the SLURM tools of a login node, reached over one paramiko connection.

One ``SSHTransport`` holds ONE SSH connection, opened on first use and reused for every
``run``/``write_file``/``read_file``/``makedirs`` of an invocation (each command is a new
channel on it, files go over one SFTP session). A dropped connection is noticed and reopened
on the next call.

Safety rules this module keeps:

* Remote command lines are ``shlex.join(argv)``: every argument is single-quoted for the
  remote POSIX shell, so ``$(...)``, backticks, quotes and spaces in a session path stay inert.
* Host keys are checked against ``~/.ssh/known_hosts`` and an explicit ``known_hosts`` file.
  Unknown or changed keys are refused (``HostKeyRejected``, naming host and fingerprint).
  ``accept_new_host_key=True`` accepts an UNKNOWN key once and records it; a CHANGED key is
  always refused.
* Passwords and key passphrases are never logged nor shown in ``repr``.
* A command that may have started when the connection dropped is never re-run blindly:
  ``run`` sends it again only when its caller said ``repeatable=True``; anything else raises
  ``ConnectionLost`` (``.sent`` tells whether the command may have run). The transport knows
  no command by name: a command that must run at most once brings its own protocol
  (``hpcpipe.slurm.submit.submit_once`` for ``sbatch``).
"""
from __future__ import annotations

import logging
import os
import posixpath
import select
import shlex
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paramiko

from ..errors import BackendError
from ..transport import ConnectionLost, HostUnreachable, Result, Transport, timed_out

log = logging.getLogger("hpcpipe.ssh")

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_CONNECT_ATTEMPTS = 3


class HostKeyRejected(BackendError):
    """The server's host key is unknown or differs from the recorded one."""


class AuthFailed(BackendError):
    """The server refused every key/agent identity offered."""


def fingerprint(key: paramiko.PKey) -> str:
    """``ssh-ed25519 SHA256:...``, as ``ssh-keygen -lf`` and OpenSSH's warnings show it."""
    return f"{key.get_name()} {key.fingerprint}"


def _host_id(host: str, port: int) -> str:
    """The name known_hosts files use: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


class _Policy(paramiko.MissingHostKeyPolicy):
    """Unknown key: refuse, or (accept_new) record it in ``record_to`` and go on."""

    def __init__(self, owner: "SSHTransport"):
        self.owner = owner

    def missing_host_key(self, client, hostname, key):  # noqa: D401 - paramiko's API
        o = self.owner
        if not o.accept_new_host_key:
            files = ", ".join(str(f) for f in o._known_hosts_files()) or "none"
            raise HostKeyRejected(
                f"host key of {hostname} is unknown: {fingerprint(key)}; refusing to connect "
                f"(known_hosts files: {files}). Check the fingerprint with the cluster's admins, "
                f"then add it to a known_hosts file or connect once with "
                f"accept_new_host_key=True (--accept-new-host-key)")
        path = o._record_file()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path, "a") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("accepted new host key of %s (%s), recorded in %s",
                    hostname, fingerprint(key), path)


class SSHTransport(Transport):
    """Runs commands and moves files on a cluster login node over one SSH connection.


    Arguments given here win over ``~/.ssh/config`` (``HostName``, ``User``, ``Port``,
    ``IdentityFile``, ``ProxyJump`` are read from it for ``host``), which wins over defaults.
    ``key_filename``: a private key file (or list); without it the agent and the keys from
    ssh config / ``~/.ssh/id_*`` are tried. ``passphrase`` unlocks an encrypted key (never
    logged). ``known_hosts``: an extra known_hosts file (read, and written by
    ``accept_new_host_key``); ``user_known_hosts``: also read ``~/.ssh/known_hosts``.
    ``proxy_jump``: ``[user@]host[:port]`` (comma-separated for several hops) to reach
    ``host`` through a direct-tcpip channel, like OpenSSH's ``-J``.
    """

    #: a dropped connection can hide whether a command ran
    lossy = True

    def __init__(self, host: str, user: str | None = None, port: int | None = None,
                 key_filename: str | list[str] | None = None, known_hosts: str | os.PathLike | None = None,
                 accept_new_host_key: bool = False, proxy_jump: str | None = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, *,
                 passphrase: str | None = None, allow_agent: bool = True,
                 user_known_hosts: bool = True, ssh_config: str | os.PathLike | None = "~/.ssh/config",
                 connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS, keepalive: int = 30):
        cfg = self._ssh_config(host, ssh_config)
        self.alias = host
        self.host = cfg.get("hostname", host)
        self.user = user or cfg.get("user") or _local_user()
        self.port = int(port or cfg.get("port") or 22)
        if key_filename is None and cfg.get("identityfile"):
            key_filename = [os.path.expanduser(k) for k in cfg["identityfile"] if os.path.exists(os.path.expanduser(k))] or None
        self.key_filename = key_filename
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else None
        self.user_known_hosts = user_known_hosts
        self.accept_new_host_key = accept_new_host_key
        pj = proxy_jump if proxy_jump is not None else cfg.get("proxyjump")
        self.proxy_jump = None if (pj or "").lower() in ("", "none") else pj
        self.connect_timeout = connect_timeout
        self.connect_attempts = max(1, int(connect_attempts))
        self.allow_agent = allow_agent
        self.keepalive = keepalive
        self._ssh_config_path = ssh_config
        self.__passphrase = passphrase          # never logged, not in repr
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._jump: SSHTransport | None = None
        self._lock = threading.RLock()
        #: how many SSH connections this transport opened (tests check it stays 1)
        self.connect_count = 0
        self.name = f"ssh://{self.user}@{self.host}" + (f":{self.port}" if self.port != 22 else "")

    def __repr__(self) -> str:
        return (f"SSHTransport({self.user}@{self.host}:{self.port}"
                + (f" via {self.proxy_jump}" if self.proxy_jump else "") + ")")

    # ------------------------------------------------------------------ connection
    @staticmethod
    def _ssh_config(host: str, path: str | os.PathLike | None) -> dict[str, Any]:
        if not path:
            return {}
        p = Path(path).expanduser()
        if not p.is_file():
            return {}
        try:
            return dict(paramiko.SSHConfig.from_path(str(p)).lookup(host))
        except Exception as exc:  # a broken ssh config should not hide the real target
            log.warning("ignoring %s: %s", p, exc)
            return {}

    def _known_hosts_files(self) -> list[Path]:
        files = []
        if self.user_known_hosts:
            files.append(Path("~/.ssh/known_hosts").expanduser())
        if self.known_hosts:
            files.append(self.known_hosts)
        return files

    def _record_file(self) -> Path:
        return self.known_hosts or Path("~/.ssh/known_hosts").expanduser()

    @property
    def connected(self) -> bool:
        c = self._client
        t = c.get_transport() if c else None
        return bool(t and t.is_active())

    def _open_socket(self):
        """A connected socket (or jump-host channel) to host:port, retried a bounded number of times."""
        errors = []
        for attempt in range(1, self.connect_attempts + 1):
            try:
                if self.proxy_jump:
                    return self._jump_channel()
                return socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            except (HostKeyRejected, AuthFailed):
                raise
            except (OSError, paramiko.SSHException, BackendError) as exc:
                errors.append(exc)
                log.info("connect to %s:%s failed (attempt %d/%d): %s",
                         self.host, self.port, attempt, self.connect_attempts, exc)
                if attempt < self.connect_attempts:
                    time.sleep(min(0.5 * 2 ** (attempt - 1), 4.0))
        exc = errors[-1]
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        via = f" via {self.proxy_jump}" if self.proxy_jump else ""
        raise HostUnreachable(
            f"cannot reach SSH host {self.host}:{self.port}{via}: {detail} "
            f"({self.connect_attempts} attempt(s), timeout {self.connect_timeout:g} s)") from exc

    def _jump_channel(self):
        hops = [h.strip() for h in self.proxy_jump.split(",") if h.strip()]
        last = hops[-1]
        if self._jump is None or not self._jump.connected:
            if self._jump is not None:
                self._jump.close()
            juser, jhost, jport = _split_user_host_port(last)
            # the jump host's own ssh config entry decides its key; else try ours
            jcfg = self._ssh_config(jhost, self._ssh_config_path)
            jkeys = None if jcfg.get("identityfile") else self.key_filename
            self._jump = SSHTransport(
                jhost, user=juser, port=jport, key_filename=jkeys, known_hosts=self.known_hosts,
                accept_new_host_key=self.accept_new_host_key,
                proxy_jump=",".join(hops[:-1]) or "none", connect_timeout=self.connect_timeout,
                allow_agent=self.allow_agent, user_known_hosts=self.user_known_hosts,
                ssh_config=self._ssh_config_path, connect_attempts=1, keepalive=self.keepalive)
        t = self._jump._ensure().get_transport()
        return t.open_channel("direct-tcpip", (self.host, self.port), ("127.0.0.1", 0),
                              timeout=self.connect_timeout)

    def _ensure(self) -> paramiko.SSHClient:
        """The live connection, opened (or reopened after a drop) when needed."""
        with self._lock:
            if self.connected:
                return self._client
            if self._client is not None:
                log.info("connection to %s dropped; reconnecting", self.name)
                self._drop()
            self._client = self._connect()
            return self._client

    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.user_known_hosts:
            client.load_system_host_keys()  # ~/.ssh/known_hosts when it exists
        if self.known_hosts and self.known_hosts.is_file():
            client.get_host_keys().load(str(self.known_hosts))
        client.set_missing_host_key_policy(_Policy(self))
        sock = self._open_socket()
        try:
            client.connect(
                self.host, port=self.port, username=self.user, key_filename=self.key_filename,
                passphrase=self.__passphrase, timeout=self.connect_timeout, sock=sock,
                allow_agent=self.allow_agent, look_for_keys=self.key_filename is None,
                banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout)
        except HostKeyRejected:
            _close_quietly(client, sock)
            raise
        except paramiko.BadHostKeyException as exc:
            _close_quietly(client, sock)
            raise HostKeyRejected(
                f"host key of {_host_id(self.host, self.port)} has CHANGED: the server offers "
                f"{fingerprint(exc.key)}, known_hosts has {fingerprint(exc.expected_key)}. "
                f"Refusing to connect (this can be a man-in-the-middle attack). If the admins "
                f"changed the key, remove the old entry (ssh-keygen -R '{_host_id(self.host, self.port)}'"
                f" -f <known_hosts>) and verify the new one") from None
        except paramiko.PasswordRequiredException:
            _close_quietly(client, sock)
            raise AuthFailed(f"the key for {self.user}@{self.host}:{self.port} is encrypted: "
                             f"give its passphrase or load it into ssh-agent") from None
        except paramiko.AuthenticationException as exc:
            _close_quietly(client, sock)
            keys = self.key_filename if self.key_filename else "agent/default keys"
            raise AuthFailed(f"authentication as {self.user} on {self.host}:{self.port} failed "
                             f"(tried {keys}): {exc}") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            _close_quietly(client, sock)
            raise HostUnreachable(f"SSH handshake with {self.host}:{self.port} failed: "
                                  f"{exc or type(exc).__name__}") from None
        t = client.get_transport()
        if self.keepalive:
            t.set_keepalive(self.keepalive)
        self.connect_count += 1
        log.debug("connected to %s (connection #%d)", self.name, self.connect_count)
        return client

    def _drop(self) -> None:
        c, s = self._client, self._sftp
        self._client = self._sftp = None
        _close_quietly(s, c)

    def close(self) -> None:
        with self._lock:
            self._drop()
            if self._jump is not None:
                self._jump.close()
                self._jump = None

    # ------------------------------------------------------------------ commands
    def run(self, argv: list[str], input: str | None = None, timeout: float = 120.0, *,
            repeatable: bool = False) -> Result:
        """Run ``argv`` on the login node (every argument quoted); never raises on exit codes.

        A command that never started (no channel) is tried once more on a new connection; one
        the connection dropped under is sent again only when ``repeatable``, else
        ``ConnectionLost(sent=True)`` is raised: it may have run.
        """
        argv = [str(a) for a in argv]
        if not argv:
            raise BackendError("empty command")
        try:
            return self._run_once(argv, input, timeout)
        except ConnectionLost as exc:
            if exc.sent and not repeatable:
                raise
            log.info("%s: %s; retrying on a new connection", argv[0], exc)
            return self._run_once(argv, input, timeout)

    def _run_once(self, argv: list[str], input: str | None, timeout: float) -> Result:
        """Run once, no retry after the command was sent (``ConnectionLost.sent`` says so)."""
        command = shlex.join(argv)
        chan = self._open_channel()
        try:
            try:
                chan.settimeout(timeout)
                chan.exec_command(command)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise ConnectionLost(f"connection to {self.name} lost starting {argv[0]}: {exc}",
                                     sent=True) from None
            self._after_exec(chan, argv)
            return self._collect(chan, argv, input, timeout)
        finally:
            _close_quietly(chan)

    def _after_exec(self, chan: paramiko.Channel, argv: list[str]) -> None:
        """Hook called once the command was sent (tests cut the connection here)."""

    def _open_channel(self) -> paramiko.Channel:
        for attempt in (1, 2):
            client = self._ensure()
            try:
                return client.get_transport().open_session(timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if attempt == 2:
                    raise ConnectionLost(f"cannot open a channel on {self.name}: {exc}") from None
                with self._lock:
                    self._drop()

    def _collect(self, chan: paramiko.Channel, argv: list[str], input: str | None, timeout: float) -> Result:
        out: list[bytes] = []
        err: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            if input is not None:
                chan.sendall(input.encode())
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionLost(f"connection to {self.name} lost sending input to {argv[0]}: {exc}",
                                 sent=True) from None
        fd = chan.fileno()
        while True:
            while chan.recv_ready():
                out.append(chan.recv(65536))
            while chan.recv_stderr_ready():
                err.append(chan.recv_stderr(65536))
            # the exit status may come before the last data: done only once the remote's EOF
            # (sent after all of both streams) is in and both buffers are drained
            if chan.exit_status_ready() and (chan.eof_received or chan.closed) and not chan.recv_ready() \
                    and not chan.recv_stderr_ready():
                break
            t = chan.get_transport()
            if chan.closed or t is None or not t.is_active():
                raise ConnectionLost(f"connection to {self.name} lost while {argv[0]} was running",
                                     sent=True)
            if time.monotonic() > deadline:
                raise timed_out(f"{argv[0]} on {self.name}", timeout, b"".join(err))
            select.select([fd], [], [], 0.1)
        rc = chan.recv_exit_status()
        if rc == -1:  # paramiko's value when the channel closed without an exit-status
            raise ConnectionLost(f"connection to {self.name} lost: {argv[0]} ended without an exit "
                                 f"status (the session was closed)", sent=True)
        return Result(list(argv), rc, b"".join(out).decode("utf-8", "replace"),
                      b"".join(err).decode("utf-8", "replace"))

    # ------------------------------------------------------------------ files (SFTP)
    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            client = self._ensure()
            if self._sftp is None or self._sftp.get_channel() is None or self._sftp.get_channel().closed:
                self._sftp = client.open_sftp()
            return self._sftp

    def _sftp_call(self, what: str, fn):
        """Run ``fn(sftp)``; on a dropped connection reconnect once and run it again
        (every file operation here is idempotent)."""
        for attempt in (1, 2):
            try:
                return fn(self._sftp_client())
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno is not None and not isinstance(
                        exc, (ConnectionError, socket.timeout)):
                    raise  # a real file error (ENOENT, EACCES...), not the connection
                if attempt == 2:
                    raise ConnectionLost(f"{what} on {self.name} failed: {exc}") from None
                log.info("%s on %s: %s; retrying on a new connection", what, self.name, exc)
                with self._lock:
                    if self.connected:
                        _close_quietly(self._sftp)
                        self._sftp = None
                    else:
                        self._drop()

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Write atomically: a temporary name in the same folder, then ``posix-rename``."""
        path = str(path)
        data = content.encode() if isinstance(content, str) else content
        parent = posixpath.dirname(path)

        def do(sftp: paramiko.SFTPClient) -> None:
            if parent:
                _sftp_makedirs(sftp, parent)
            tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
            try:
                with sftp.open(tmp, "wb") as fh:
                    fh.set_pipelined(True)
                    fh.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, path)
            except BaseException:
                try:
                    sftp.remove(tmp)
                except Exception:
                    pass
                raise

        try:
            self._sftp_call(f"writing {path}", do)
        except PermissionError as exc:
            raise BackendError(f"cannot write {path} on {self.name}: {exc}") from None

    def read_file(self, path: str) -> str | None:
        path = str(path)

        def do(sftp: paramiko.SFTPClient) -> str | None:
            try:
                with sftp.open(path, "rb") as fh:
                    fh.prefetch()
                    return fh.read().decode("utf-8", "replace")
            except FileNotFoundError:
                return None

        return self._sftp_call(f"reading {path}", do)

    def makedirs(self, path: str) -> None:
        self._sftp_call(f"creating {path}", lambda sftp: _sftp_makedirs(sftp, str(path)))

    def list_dir(self, path: str) -> list[str]:
        def do(sftp: paramiko.SFTPClient) -> list[str]:
            try:
                return sftp.listdir(str(path))
            except FileNotFoundError:
                return []

        return self._sftp_call(f"listing {path}", do)


# ---------------------------------------------------------------------- helpers
def _sftp_makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    path = posixpath.normpath(path)
    missing = []
    p = path
    while p not in ("", "/", "."):
        try:
            sftp.stat(p)
            break
        except FileNotFoundError:
            missing.append(p)
            p = posixpath.dirname(p)
    for d in reversed(missing):
        try:
            sftp.mkdir(d)
        except OSError:
            try:  # created meanwhile by someone else is fine
                sftp.stat(d)
            except FileNotFoundError:
                raise BackendError(f"cannot create directory {d}") from None


def _close_quietly(*things) -> None:
    for t in things:
        if t is None:
            continue
        try:
            t.close()
        except Exception:
            pass


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def _split_user_host_port(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (also ``[v6addr]:port``) -> (user, host, port)."""
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port = None
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":") and rest[1:]:
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, p = spec.split(":")
        port = int(p) if p else None  # ValueError for a bad port: callers turn it into BadInput
    else:
        host = spec
    return user or None, host, port
