"""How SLURM commands reach the cluster: a local subprocess, or an SSH connection.

Every SLURM module (submit, status, cancel, limits) takes a ``Transport`` and passes it an
argv list, never a shell string, so remote submission is the same backend over another
transport. Implementations: ``LocalTransport`` here, ``hpcpipe.ssh.SSHTransport`` over paramiko.
"""
from __future__ import annotations

import abc
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendError
from ..files import atomic_write


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
    """Runs commands and writes files where the SLURM client tools are."""

    #: shown in messages and tables ("local", "ssh://user@host")
    name: str = ""

    @abc.abstractmethod
    def run(self, argv: list[str], input: str | None = None, timeout: float = 120.0) -> Result:
        """Run ``argv`` (no shell) and return its result; does not raise on non-zero exit."""

    @abc.abstractmethod
    def write_file(self, path: str, content: str, mode: int = 0o644) -> None:
        """Write ``content`` to ``path`` atomically (parents created) on the cluster side."""

    @abc.abstractmethod
    def read_file(self, path: str) -> str | None:
        """Contents of ``path`` on the cluster side, or None when it does not exist."""

    @abc.abstractmethod
    def makedirs(self, path: str) -> None:
        """Create a directory and its parents on the cluster side."""

    @abc.abstractmethod
    def list_dir(self, path: str) -> list[str]:
        """The names in a directory on the cluster side ([] when it does not exist): one call
        instead of a read per file that may not be there."""

    def close(self) -> None:
        """Release the connection, if any."""

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalTransport(Transport):
    """The SLURM tools on this machine (a login node): plain subprocesses."""

    name = "local"

    def run(self, argv: list[str], input: str | None = None, timeout: float = 120.0) -> Result:
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise BackendError(f"{argv[0]}: command not found (is SLURM installed here?)") from None
        except subprocess.TimeoutExpired:
            raise BackendError(f"{argv[0]} did not answer within {timeout:.0f} s") from None
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
