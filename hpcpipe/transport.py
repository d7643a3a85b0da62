"""How commands reach the machine that runs them: a local subprocess, or an SSH connection.

A ``Transport`` runs an argv list (never a shell string) and moves files, and knows nothing of
what the commands mean: the SLURM modules (submit, status, cancel, limits) pass it their argv,
so remote submission is the same backend over another transport. A caller says whether its
command may be repeated (``repeatable``); a command that must run at most once over a
connection that can drop (``lossy``) needs its own protocol, as ``slurm.submit`` has for
``sbatch``. Implementations: ``LocalTransport`` here, ``hpcpipe.ssh.SSHTransport`` over paramiko.
"""
from __future__ import annotations

import abc
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError
from .files import atomic_write


class HostUnreachable(BackendError):
    """No connection could be made (network, DNS, refused, handshake) after retries."""


class ConnectionLost(BackendError):
    """The connection dropped during an operation.

    ``sent`` is True when the remote command may have started (its effect is unknown).
    """

    def __init__(self, message: str, sent: bool = False):
        super().__init__(message)
        self.sent = sent


@dataclass
class Result:
    """What a command returned (the part of ``subprocess.CompletedProcess`` backends use)."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> "Result":
        """Raise ``BackendError`` with the command's own message if it failed."""
        if self.returncode != 0:
            msg = (self.stderr or self.stdout).strip() or f"exit code {self.returncode}"
            raise BackendError(f"{self.argv[0]} failed: {msg}")
        return self


class Transport(abc.ABC):
    """Runs commands and writes files on the side where the commands' tools are."""

    #: shown in messages and tables ("local", "ssh://user@host")
    name: str = ""
    #: True when a command's outcome can be lost with the connection after it was sent (a
    #: network transport): a caller whose command must not run twice needs its own way to
    #: find out what happened (``slurm.submit.submit_once``)
    lossy: bool = False

    @abc.abstractmethod
    def run(self, argv: list[str], input: str | None = None, timeout: float = 120.0, *,
            repeatable: bool = False) -> Result:
        """Run ``argv`` (no shell) and return its result; does not raise on non-zero exit.

        ``repeatable``: the caller's word that running the command twice does no harm (a
        query; a cancellation). When the connection drops after the command was sent, a
        repeatable command is sent again on a new connection; any other raises
        ``ConnectionLost`` with ``sent=True``, since it may have run.
        """

    @abc.abstractmethod
    def write_file(self, path: str, content: str, mode: int = 0o644) -> None:
        """Write ``content`` to ``path`` atomically (parents created) on the far side."""

    @abc.abstractmethod
    def read_file(self, path: str) -> str | None:
        """Contents of ``path`` on the far side, or None when it does not exist."""

    @abc.abstractmethod
    def makedirs(self, path: str) -> None:
        """Create a directory and its parents on the far side."""

    @abc.abstractmethod
    def list_dir(self, path: str) -> list[str]:
        """The names in a directory on the far side ([] when it does not exist): one call
        instead of a read per file that may not be there."""

    def close(self) -> None:
        """Release the connection, if any."""

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def timed_out(what: str, timeout: float, stderr: bytes | str | None) -> BackendError:
    """The error of a command that did not end within ``timeout``, with the last thing it said:
    sbatch against a controller at its ``MaxJobCount`` (or too busy) retries for good, saying
    only ``Slurm temporarily unable to accept job, sleeping and retrying``, and that line is
    what tells the user why."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    said = (stderr or "").strip().splitlines()
    return BackendError(f"{what} did not answer within {timeout:.0f} s" + (f" (it said: {said[-1].strip()})"
                                                                          if said else ""))


class LocalTransport(Transport):
    """The tools on this machine (for SLURM: a login node): plain subprocesses. Nothing is
    lost between us and a subprocess, so ``repeatable`` changes nothing here."""

    name = "local"

    def run(self, argv: list[str], input: str | None = None, timeout: float = 120.0, *,
            repeatable: bool = False) -> Result:
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise BackendError(f"{argv[0]}: command not found (is it installed here?)") from None
        except subprocess.TimeoutExpired as exc:
            raise timed_out(argv[0], timeout, exc.stderr) from None
        return Result(list(argv), proc.returncode, proc.stdout, proc.stderr)

    def write_file(self, path: str, content: str, mode: int = 0o644) -> None:
        atomic_write(path, content, mode=mode)

    def read_file(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return None

    def makedirs(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def list_dir(self, path: str) -> list[str]:
        try:
            return os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
