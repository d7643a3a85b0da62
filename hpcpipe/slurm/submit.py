"""Submitting a rendered script: write it where sbatch runs, then ``sbatch --parsable``.

The script is written through the transport (so over SSH it lands on the cluster) and kept:
it is the record of exactly what ran, next to the job's logs. ``sbatch_argv`` gives the same
command for ``--dry-run``, which prints it with ``format_command`` instead of running it.
"""
from __future__ import annotations

import re
import shlex
from typing import Sequence

from ..errors import BackendError
from .transport import Transport

_PARSABLE = re.compile(r"^(\d+)(?:;(\S+))?$")


def sbatch_argv(script_path: str, extra: Sequence[str] = ()) -> list[str]:
    """The argv that submits ``script_path`` (options are in the script's #SBATCH lines)."""
    return ["sbatch", "--parsable", *extra, script_path]


def format_command(argv: Sequence[str]) -> str:
    """A shell-pasteable line for an argv (what ``--dry-run`` prints)."""
    return shlex.join(argv)


def parse_job_id(stdout: str) -> str:
    """``123`` or ``123;cluster`` (federations/multi-cluster) -> ``"123"``.

    sbatch may print warnings before the id on stdout on some sites, so the last
    non-empty line is used.
    """
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines:
        m = _PARSABLE.match(lines[-1])
        if m:
            return m.group(1)
    raise BackendError(f"sbatch printed no job id: {stdout.strip()!r}")


def submit(transport: Transport, script_text: str, script_path: str,
           extra: Sequence[str] = (), timeout: float = 120.0) -> str:
    """Write ``script_text`` to ``script_path`` (executable) and submit it; returns the job id.

    Raises BackendError with sbatch's own message when SLURM refuses the job.
    """
    transport.write_file(script_path, script_text, mode=0o755)
    res = transport.run(sbatch_argv(script_path, extra), timeout=timeout)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip() or f"exit code {res.returncode}"
        raise BackendError(f"sbatch {script_path} failed: {msg}")
    return parse_job_id(res.stdout)
