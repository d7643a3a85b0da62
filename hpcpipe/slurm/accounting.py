"""What SLURM measured for finished jobs: one batched ``sacct`` query, parsed into ``Usage``.

``sacct --parsable2 --noheader --format=<USAGE_FIELDS> --jobs=<ids>``, *without* ``-X``: the
allocation row carries the state, exit code, times and what was asked (ReqMem, ReqCPUS,
Timelimit), but its MaxRSS is empty and, with ``-X``, its TotalCPU reads 0; the steps
(``.batch``, ``.extern``, ``.0``) carry those. So steps are folded into their job: MaxRSS is the
largest step's, TotalCPU the allocation's (the sum of its steps), else the steps' sum.
``--json`` is not used: on 22.05 it reports exit code 0 for a job that exited 3.

Array elements come as ``123_4`` (JobIDRaw is the element's own id); pending elements as one
row ``123_[5-9]``, expanded. Ids are asked in chunks (``max_ids``) to keep argv short.

A pack (``hpcpipe.slurm.pack``) runs each task as a job step (``123.17``) named after the task
(``DemoSync.3``): asked for them, the same query also gives each named step's own figures
(its state, exit code, start, end, elapsed, CPU time, peak RSS and CPUs; the step rows carry
no ReqMem or Timelimit, and its Submit is the allocation's), so a report shows each task's
step rather than the whole allocation.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Iterable

from ..errors import BackendError
from ..jobstate import normalise as normalise_state
from ..transport import Transport
from ..usage import Usage
from .render import expand_indices

USAGE_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Reason", "Partition", "NodeList", "Submit", "Start",
                "End", "ElapsedRaw", "TotalCPU", "MaxRSS", "ReqMem", "ReqCPUS", "TimelimitRaw", "JobName")
_PENDING_ARRAY = re.compile(r"^(\d+)_\[(.+)\]$")
_UNITS = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 ** 2, "P": 1024.0 ** 3}


# ------------------------------------------------------------------ field parsers (pure)
def parse_duration(text: str) -> float | None:
    """sacct durations: ``MM:SS.mmm``, ``HH:MM:SS``, ``D-HH:MM:SS`` -> seconds."""
    text = text.strip()
    if not text or text.upper() in ("INVALID", "UNKNOWN", "UNLIMITED", "PARTITION_LIMIT"):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [float(p) for p in text.split(":")]
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    return days * 86400 + secs


def parse_size_mb(text: str, cpus: int | None = None, nodes: int = 1) -> float | None:
    """``219852K``, ``300M``, ``1.5G``, ``0``; a trailing ``n``/``c`` (older ReqMem: per node,
    per CPU) multiplies by nodes or CPUs. Returns MB (None when empty)."""
    text = text.strip()
    if not text:
        return None
    per = ""
    if text[-1] in "nc":
        per, text = text[-1], text[:-1]
    unit = 1.0 if text[-1].isdigit() else _UNITS.get(text[-1].upper())
    number = text if text[-1].isdigit() else text[:-1]
    try:
        value = float(number) * (unit if unit is not None else 1.0)
    except ValueError:
        return None
    if per == "c" and cpus:
        value *= cpus
    elif per == "n":
        value *= nodes
    return value


def parse_time(text: str) -> float | None:
    """``2026-12-01T22:13:19`` (the cluster's local time) -> epoch seconds; Unknown/None -> None."""
    text = text.strip()
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _exit(text: str) -> tuple[int | None, int | None]:
    if ":" not in text:
        return None, None
    a, b = text.split(":", 1)
    return (int(a) if a.isdigit() else None), (int(b) if b.isdigit() else None)


# ------------------------------------------------------------------ the parser
def parse_usage(text: str, steps: dict[tuple[str, str], Usage] | None = None) -> dict[str, Usage]:
    """sacct output (steps included) -> one ``Usage`` per job or array element, by job id.

    ``steps``, when given, also receives each numbered job step's own ``Usage`` (job id
    ``123.17``) by (allocation id, step name)."""
    jobs: dict[str, Usage] = {}
    own: list[tuple[str, str, Usage]] = []
    step_rss: dict[str, float] = {}
    step_cpu: dict[str, float] = {}
    n = len(USAGE_FIELDS)
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", n - 1)
        if len(parts) < n:
            continue
        (job_id, _raw, state, exit_code, reason, partition, nodes, submit, start, end, elapsed, total_cpu,
         max_rss, req_mem, req_cpus, timelimit, job_name) = parts
        if "+" in job_id:  # heterogeneous job components: not something hpcpipe submits
            continue
        code, sig = _exit(exit_code)
        cpus = _int(req_cpus)
        limit = _int(timelimit)
        base = dict(state=normalise_state(state), exit_code=code, signal=sig,
                    reason="" if reason in ("None", "(null)") else reason,
                    partition=partition, nodes="" if nodes == "None assigned" else nodes,
                    submit=parse_time(submit), start=parse_time(start), end=parse_time(end),
                    elapsed_secs=float(elapsed) if elapsed.strip().isdigit() else None,
                    total_cpu_secs=parse_duration(total_cpu), req_mem_mb=parse_size_mb(req_mem, cpus),
                    req_cpus=cpus, timelimit_secs=limit * 60 if limit is not None else None, source="sacct")
        if "." in job_id:  # a step: its MaxRSS and CPU belong to the job
            owner, _, step = job_id.partition(".")
            rss = parse_size_mb(max_rss)
            if rss is not None:
                step_rss[owner] = max(step_rss.get(owner, 0.0), rss)
            cpu = parse_duration(total_cpu)
            if cpu is not None:
                step_cpu[owner] = step_cpu.get(owner, 0.0) + cpu
            if steps is not None and step.isdigit():
                own.append((owner, job_name, Usage(job_id=job_id, max_rss_mb=rss, **base)))
            continue
        m = _PENDING_ARRAY.match(job_id)
        ids = [f"{m.group(1)}_{i}" for i in expand_indices(m.group(2))] if m else [job_id]
        for jid in ids:
            jobs[jid] = Usage(job_id=jid, **base)
    for jid, usage in jobs.items():
        if jid in step_rss:
            usage.max_rss_mb = step_rss[jid]
        if not usage.total_cpu_secs and jid in step_cpu:
            usage.total_cpu_secs = step_cpu[jid]
        if usage.start is None or (usage.state.startswith("CANCELLED") and not usage.elapsed_secs):
            # never ran: no elapsed time to speak of (sacct may give a job cancelled while pending
            # a start equal to its end, and 0 s)
            usage.elapsed_secs = None
    for owner, name, usage in own:
        alloc = jobs.get(owner)
        if alloc is not None:  # what the step's row lacks: the allocation's submission and partition
            usage.submit, usage.partition = alloc.submit, alloc.partition
        steps[(owner, name)] = usage  # type: ignore[index]
    return jobs


def usage_argv(ids: Iterable[str]) -> list[str]:
    """The sacct command for these job ids (array ids cover every element)."""
    return ["sacct", "--parsable2", "--noheader", f"--format={','.join(USAGE_FIELDS)}",
            f"--jobs={','.join(ids)}"]


def query_usage(transport: Transport, ids: Iterable[str], max_ids: int = 5000,
                steps: dict[tuple[str, str], Usage] | None = None) -> tuple[dict[str, Usage], int]:
    """Ask sacct about ``ids`` (plain or array job ids); returns ``(usage by job id, queries)``.

    ``steps``: filled with the job steps' own figures (see ``parse_usage``), same queries.
    Raises ``BackendError`` when accounting is not available (no slurmdbd): the message says so.
    """
    wanted = sorted({str(i).split("_", 1)[0] for i in ids}, key=lambda s: (len(s), s))
    out: dict[str, Usage] = {}
    queries = 0
    for start in range(0, len(wanted), max_ids):
        chunk = wanted[start:start + max_ids]
        queries += 1
        res = transport.run(usage_argv(chunk), repeatable=True)
        if res.returncode != 0:
            message = (res.stderr or res.stdout).strip()
            raise BackendError(f"sacct failed (is SLURM accounting running?): {message or res.returncode}")
        out.update(parse_usage(res.stdout, steps))
    return out, queries
