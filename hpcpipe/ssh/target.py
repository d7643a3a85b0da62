"""Which cluster ``--remote`` names: a configured cluster, or ``[user@]host[:port]``.

Config (``~/.config/hpcpipe/config.toml``)::

    [clusters.hpc1]
    host = "login.hpc1.example.org"     # required (or an alias from ~/.ssh/config)
    user = "alice"                      # default: ~/.ssh/config's User, then the local user
    port = 22                           # default: ~/.ssh/config's Port, then 22
    key = "~/.ssh/id_ed25519"           # default: agent + ~/.ssh/config's IdentityFile + ~/.ssh/id_*
    known_hosts = "~/.ssh/known_hosts_hpc1"   # extra known_hosts file (also where accept-new writes)
    proxy_jump = "alice@gateway.example.org"  # default: ~/.ssh/config's ProxyJump
    connect_timeout = 10
    run_dir = "/cluster/scratch/alice/hpcpipe/runs"   # default: $HOME/.local/share/hpcpipe/runs there
    path_map = {"/mnt/lab/Subjects" = "/cluster/lab/Subjects"}

    [ssh]                               # defaults for every remote
    known_hosts = "..."
    connect_timeout = 10

``--remote hpc1`` uses that table; ``--remote alice@login.hpc1.example.org:2222`` uses the
table whose ``host`` matches (for its path_map, key, run_dir), with user/port from the spec.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from .. import config
from ..errors import BadInput
from ..settings import Settings, current
from .pathmap import PathMap
from .transport import DEFAULT_CONNECT_TIMEOUT, SSHTransport, _split_user_host_port

_HOST = re.compile(r"[A-Za-z0-9_.:%-]+")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]*")
DEFAULT_RUN_DIR = ".local/share/hpcpipe/runs"


@dataclass
class RemoteTarget:
    """Where and how to reach a cluster login node, and how paths map there."""

    name: str
    host: str
    user: str | None = None
    port: int | None = None
    key: str | None = None
    known_hosts: str | None = None
    proxy_jump: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    run_dir: str | None = None
    path_map: PathMap = field(default_factory=PathMap)
    #: the Python that runs ``hpcpipe.jobside`` on the cluster (None: ``[slurm] python``)
    python: str | None = None
    #: the SLURM site profile for this cluster (None: ``[slurm] profile``)
    profile: str | None = None

    @property
    def label(self) -> str:
        u = f"{self.user}@" if self.user else ""
        p = f":{self.port}" if self.port else ""
        return f"{u}{self.host}{p}"

    def transport(self, accept_new_host_key: bool = False, **kw: Any) -> SSHTransport:
        """A (not yet connected) ``SSHTransport`` to this target."""
        return SSHTransport(self.host, user=self.user, port=self.port, key_filename=self.key,
                            known_hosts=self.known_hosts, accept_new_host_key=accept_new_host_key,
                            proxy_jump=self.proxy_jump, connect_timeout=self.connect_timeout, **kw)

    def remote_run_dir(self, transport) -> str:
        """``run_dir`` as an absolute cluster path (a relative one is under the remote $HOME)."""
        if self.run_dir and self.run_dir.startswith("/"):
            return posixpath.normpath(self.run_dir)
        home = transport.run(["sh", "-c", 'printf %s "$HOME"'], repeatable=True).check().stdout.strip()
        if not home.startswith("/"):
            raise BadInput(f"cannot find the home folder on {self.label}; set run_dir for it")
        rel = self.run_dir or DEFAULT_RUN_DIR
        return posixpath.normpath(posixpath.join(home, rel.removeprefix("~/")))


def _from_table(name: str, t: dict, defaults: dict) -> RemoteTarget:
    if not isinstance(t, dict) or not t.get("host"):
        raise BadInput(f"[clusters.{name}] in {config.config_path()} needs host = \"...\"")
    known = {"host", "user", "port", "key", "known_hosts", "proxy_jump", "connect_timeout", "run_dir", "path_map",
             "python", "profile"}
    unknown = set(t) - known
    if unknown:
        raise BadInput(f"[clusters.{name}]: unknown key(s) {', '.join(sorted(unknown))} "
                       f"(known: {', '.join(sorted(known))})")
    pm = t.get("path_map", {})
    if not isinstance(pm, dict) or not all(isinstance(v, str) for v in pm.values()):
        raise BadInput(f"[clusters.{name}] path_map must be a table of \"workstation prefix\" = \"cluster prefix\"")
    try:
        port = int(t["port"]) if t.get("port") not in (None, "") else None
    except (TypeError, ValueError):
        raise BadInput(f"[clusters.{name}] port must be a number, not {t.get('port')!r}") from None
    return RemoteTarget(
        name=name, host=str(t["host"]), user=t.get("user") or None, port=port,
        key=t.get("key") or None, known_hosts=t.get("known_hosts") or defaults.get("known_hosts"),
        proxy_jump=t.get("proxy_jump") or None,
        connect_timeout=float(t.get("connect_timeout") or defaults.get("connect_timeout") or DEFAULT_CONNECT_TIMEOUT),
        run_dir=t.get("run_dir") or None, path_map=PathMap(pm, name=name),
        python=t.get("python") or None, profile=t.get("profile") or None)


def parse_spec(spec: str) -> tuple[str | None, str, int | None]:
    """``[ssh://][user@]host[:port]`` -> (user, host, port); ``BadInput`` when malformed."""
    s = spec.strip()
    if s.startswith("ssh://"):
        s = s[len("ssh://"):].rstrip("/")
    try:
        user, host, port = _split_user_host_port(s)
    except ValueError:
        raise BadInput(f"--remote {spec!r}: the port must be a number") from None
    if not host or not _HOST.fullmatch(host) or host.startswith("-"):
        raise BadInput(f"--remote {spec!r}: expected a cluster name from config or [user@]host[:port]")
    if user is not None and not _USER.fullmatch(user):
        raise BadInput(f"--remote {spec!r}: bad user name {user!r}")
    if port is not None and not 0 < port < 65536:
        raise BadInput(f"--remote {spec!r}: port {port} is out of range")
    return user, host, port


def resolve_remote(spec: str, settings: Settings | None = None) -> RemoteTarget:
    """A configured cluster by name, or ``[user@]host[:port]`` (with the settings of the
    configured cluster on the same host, if any); ``settings``: default ``settings.current()``."""
    if not spec or not spec.strip():
        raise BadInput("--remote needs a cluster name or [user@]host[:port]")
    settings = settings or current()
    clusters = settings.clusters
    defaults = {"known_hosts": settings.ssh.known_hosts, "connect_timeout": settings.ssh.connect_timeout}
    if spec in clusters:
        return _from_table(spec, clusters[spec], defaults)
    user, host, port = parse_spec(spec)
    for name, t in clusters.items():
        if isinstance(t, dict) and t.get("host") == host and (port is None or int(t.get("port") or 22) == port):
            base = _from_table(name, t, defaults)
            base.user = user or base.user
            base.port = port or base.port
            return base
    return RemoteTarget(name=spec, host=host, user=user, port=port,
                        known_hosts=defaults["known_hosts"],
                        connect_timeout=float(defaults["connect_timeout"]),
                        path_map=PathMap({}, name=spec))
