"""Remote submission over SSH: a ``Transport`` to a cluster login node (paramiko),
workstation -> cluster path mapping, ``--remote`` targets, and once-only ``sbatch``.

See docs/SSH.md.
"""
from .pathmap import PathMap
from .submit import new_token, submit_once, submit_script_once
from .target import RemoteTarget, parse_spec, resolve_remote
from .transport import AuthFailed, ConnectionLost, HostKeyRejected, HostUnreachable, SSHTransport, fingerprint

__all__ = [
    "SSHTransport", "HostKeyRejected", "AuthFailed", "HostUnreachable", "ConnectionLost",
    "fingerprint", "PathMap", "RemoteTarget", "resolve_remote", "parse_spec",
    "submit_once", "submit_script_once", "new_token",
]
