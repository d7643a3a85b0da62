"""Why a job ended without finishing its task: one vocabulary for the job side, the sweep and
``rerun --escalate``.

Every such reason is written as one line in the task's log, tagged ``[hpcpipe:<KIND>]`` so that
a later ``rerun --escalate`` can tell, from the log alone (the same on SQLite and Alyx), whether
the last attempt ran out of memory or out of time. Light module: standard library only.
"""
from __future__ import annotations

import re

TIMEOUT, MEMORY, CANCELLED, KILLED = "TIMEOUT", "MEMORY", "CANCELLED", "KILLED"
NODE_FAIL, PREEMPTED, REQUEUED, FAILED = "NODE_FAIL", "PREEMPTED", "REQUEUED", "FAILED"
LOST = "LOST"
KINDS = (TIMEOUT, MEMORY, CANCELLED, KILLED, NODE_FAIL, PREEMPTED, REQUEUED, FAILED, LOST)
_TAG = re.compile(r"\[hpcpipe:([A-Z_]+)\]")

#: what slurmstepd writes into the job's output file when it kills for memory
#: (OverMemoryKill sampling: "StepId=12.batch exceeded memory limit (608944128 > 104857600), being
#: killed"; cgroup: "Detected 1 oom-kill event(s)")
MEMORY_MARKS = ("exceeded memory limit", "exceeded job memory limit", "oom-kill", "out of memory",
                "out_of_memory")


def line(kind: str, text: str) -> str:
    """A reason line for a task's log: ``[hpcpipe:TIMEOUT] <text>``."""
    return f"[hpcpipe:{kind}] {text}"


def last_kind(log: str | None) -> str | None:
    """The kind of the last tagged reason in a log (None if there is none)."""
    found = _TAG.findall(log or "")
    return found[-1] if found else None


def memory_killed(output_tail: str | None) -> bool:
    """Does a job's output (its tail) say SLURM or the kernel killed it for memory?"""
    low = (output_tail or "").lower()
    return any(m in low for m in MEMORY_MARKS)


def kind_of_state(state: str, exit_code: int | None, sig: int | None, output_tail: str | None = None) -> str:
    """Classify a job SLURM ended without a report from the job side.

    On clusters without cgroups, a job over ``--mem`` ends ``FAILED`` with exit code ``0:9``
    (SIGKILL), exactly like a job whose process was killed with ``kill -9``; the job's output
    file tells them apart (slurmstepd writes "exceeded memory limit" there).
    """
    if state == "OUT_OF_MEMORY" or memory_killed(output_tail):
        return MEMORY
    if state in (TIMEOUT, "DEADLINE"):
        return TIMEOUT
    if state in (CANCELLED, NODE_FAIL, PREEMPTED):
        return state
    if state == "BOOT_FAIL":
        return NODE_FAIL
    if sig:
        return KILLED
    return FAILED


DESCRIPTIONS = {
    TIMEOUT: "ran out of time (SLURM time limit)",
    MEMORY: "was killed for exceeding its memory limit",
    CANCELLED: "was cancelled",
    KILLED: "was killed by a signal",
    NODE_FAIL: "lost its node",
    PREEMPTED: "was preempted",
    REQUEUED: "was requeued by SLURM",
    FAILED: "failed",
    LOST: "is known to SLURM no more (neither squeue nor sacct lists it)",
}


#: not a job ending but a task's own failure: its ``_run`` raised (the traceback is in its log)
PYTHON = "PYTHON"
_TAGGED = re.compile(r"\[hpcpipe:([A-Z_]+)\] ?(.*)")
_TRACEBACK = "Traceback (most recent call last)"
_EXCEPTION = re.compile(r"^(?:[\w.]+(?:Error|Exception|Interrupt|Exit|Warning))\b.*$", re.M)
#: tags recording what hpcpipe did (raised resources, applied suggestions), not why a job ended
ACTIONS = ("ESCALATE", "RESOURCES")


def last_cause(log: str | None) -> tuple[str | None, str]:
    """Why the last attempt in a log ended: ``(kind, one line)``.

    The later of the last tagged reason (``[hpcpipe:MEMORY] ...``) and the last Python traceback
    wins: ``(PYTHON, "RuntimeError: ...")`` for a task whose code raised. ``(None, "")`` when the
    log says neither.
    """
    log = log or ""
    tagged = [m for m in _TAGGED.finditer(log) if m.group(1) not in ACTIONS]
    trace = log.rfind(_TRACEBACK)
    if tagged and tagged[-1].start() > trace:
        return tagged[-1].group(1), tagged[-1].group(2).strip()
    if trace >= 0:
        found = _EXCEPTION.findall(log[trace:])
        return PYTHON, (found[-1].strip() if found else "the task raised an exception")
    return None, ""
