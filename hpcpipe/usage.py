"""What one job really used: the figures a report, right-sizing and escalation read.

One shape for both sources: ``sacct`` on SLURM (``slurm.accounting``) and the local engine's own
measurement of each task process (``os.wait4``: CPU time and peak RSS of the child, wall clock
around it), which it saves next to the run's logs as ``<run>/usage/<task id>.json``.
Standard library only: the local engine imports it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .files import atomic_write


@dataclass
class Usage:
    """Requested against measured, for one job (or one array element)."""

    #: ``123``, ``123_4`` for an array element, or a local pid
    job_id: str
    state: str = ""
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    partition: str = ""
    nodes: str = ""
    #: epoch seconds (None: not yet / unknown)
    submit: float | None = None
    start: float | None = None
    end: float | None = None
    elapsed_secs: float | None = None
    #: user + system CPU seconds of every process of the job
    total_cpu_secs: float | None = None
    #: peak resident memory, MB (1 MB = 1024 KB, as SLURM counts)
    max_rss_mb: float | None = None
    #: what the job asked for
    req_mem_mb: float | None = None
    req_cpus: int | None = None
    timelimit_secs: float | None = None
    #: "sacct" or "local"
    source: str = ""
    #: the job's stdout/stderr file, when known
    output: str = ""

    @property
    def cpu_efficiency(self) -> float | None:
        """TotalCPU / (Elapsed x requested CPUs), as seff computes it."""
        if not self.elapsed_secs or not self.req_cpus or self.total_cpu_secs is None:
            return None
        return self.total_cpu_secs / (self.elapsed_secs * self.req_cpus)

    @property
    def mem_efficiency(self) -> float | None:
        """MaxRSS / requested memory."""
        if not self.req_mem_mb or self.max_rss_mb is None:
            return None
        return self.max_rss_mb / self.req_mem_mb

    @property
    def queue_wait_secs(self) -> float | None:
        """Start - Submit."""
        if self.submit is None or self.start is None:
            return None
        return max(0.0, self.start - self.submit)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "Usage":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def usage_path(run_dir: Path | str, task_id: str) -> Path:
    return Path(run_dir) / "usage" / f"{task_id}.json"


def save_local(run_dir: Path | str, task_id: str, usage: Usage) -> None:
    """Write a local task's measurement (atomically: a report may read it meanwhile)."""
    atomic_write(usage_path(run_dir, task_id), usage.to_json())


def load_local(run_dir: Path | str | None, task_id: str) -> Usage | None:
    """A local task's measurement, or None when there is none (older run, killed engine)."""
    if not run_dir:
        return None
    try:
        return Usage.from_dict(json.loads(usage_path(run_dir, task_id).read_text()))
    except (OSError, ValueError):
        return None


def from_rusage(pid: int, status: int, ru, started: float, ended: float, submitted: float, need: dict,
                time_out_secs: float | None, output: str = "") -> Usage:
    """A ``Usage`` from what ``os.wait4`` returned for a local task process."""
    code = os.waitstatus_to_exitcode(status)
    return Usage(job_id=str(pid), state="COMPLETED" if code == 0 else "FAILED",
                 exit_code=code if code >= 0 else 0, signal=-code if code < 0 else 0,
                 submit=submitted, start=started, end=ended, elapsed_secs=ended - started,
                 total_cpu_secs=ru.ru_utime + ru.ru_stime, max_rss_mb=ru.ru_maxrss / 1024,
                 req_mem_mb=(need.get("ram") or 0) * 1024 or None, req_cpus=int(need.get("cpu") or 1),
                 timelimit_secs=time_out_secs, source="local", nodes=os.uname().nodename,
                 output=output)
