"""Remote submission over SSH: a ``Transport`` to a cluster login node (paramiko),
workstation -> cluster path mapping and ``--remote`` targets. It knows no SLURM command:
once-only ``sbatch`` is ``hpcpipe.slurm.submit``'s.

See docs/SSH.md.
"""
from ..transport import ConnectionLost, HostUnreachable
from .pathmap import PathMap
from .target import RemoteTarget, parse_spec, resolve_remote
from .transport import AuthFailed, HostKeyRejected, SSHTransport, fingerprint

__all__ = [
    "SSHTransport", "HostKeyRejected", "AuthFailed", "HostUnreachable", "ConnectionLost",
    "fingerprint", "PathMap", "RemoteTarget", "resolve_remote", "parse_spec",
]
