"""Where a job stands: one vocabulary for every backend, the ledger and the status table.

SLURM's own state words are kept (``PENDING``, ``RUNNING``, ``COMPLETED``...), the local engine
uses the same ones, and hpcpipe adds some of its own:

* ``SUBMITTING``: the intent is recorded, ``sbatch`` has not answered yet (or the submitter
  died before it could record the answer). Live: the task is not planned again until the next
  refresh has asked SLURM and either adopted the job (found by its run name and comment) or
  found none (``UNSUBMITTED``).
* ``UNKNOWN``: neither ``squeue`` nor ``sacct`` lists the job right now. Live: it becomes
  ``LOST`` once it has stayed unknown for the grace period (``[slurm] lost_after_secs``).
* ``EMITTED``: a script written for a human to submit (``--emit``). Live: it is adopted when
  the script runs (``packs/<name>.job``); there is nothing to ``scancel`` before that.
* ``LOST`` and ``UNSUBMITTED``: final; the task is recorded Errored (it ran) or left Waiting
  (nothing ran), so it can be submitted again.

``NODE_FAIL`` and ``PREEMPTED`` are *doubtful*: SLURM requeues a batch job after either (when
the partition or ``JobRequeue`` says so), so they are final only once they have stayed so for the
same grace period; until then the job is live and its task is Waiting, not failed.
"""
from __future__ import annotations

SUBMITTING, PENDING, RUNNING = "SUBMITTING", "PENDING", "RUNNING"
COMPLETED, FAILED, CANCELLED, TIMEOUT = "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"
UNKNOWN, LOST, UNSUBMITTED, EMITTED = "UNKNOWN", "LOST", "UNSUBMITTED", "EMITTED"
NODE_FAIL, PREEMPTED = "NODE_FAIL", "PREEMPTED"

#: after one of these the job never runs again
FINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMEOUT, "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                   "REVOKED", LOST, UNSUBMITTED})
#: final only after the grace period: a requeue may follow (or an answer may come back)
DOUBTFUL = frozenset({UNKNOWN, NODE_FAIL, PREEMPTED})
#: the job side's exit code for "run me again" (EX_TEMPFAIL): the task went back to Waiting (a
#: SIGTERM before a requeue, a parent not done); SLURM may be requeueing such a job
REQUEUE_EXIT = 75
#: the default grace period, in seconds (``[slurm] lost_after_secs``)
LOST_AFTER_SECS = 300


def is_final(state: str) -> bool:
    """True once a job in ``state`` will never run again (doubtful states are not final)."""
    return state in FINAL


def may_be_requeued(state: str, exit_code: int | None) -> bool:
    """A final state accounting may still show for a job SLURM is requeueing: the first attempt's
    record (``FAILED`` with the job side's requeue exit, after a node failure) can be all sacct
    has for a while. The controller (squeue) says whether the job is queued again."""
    return state == FAILED and exit_code == REQUEUE_EXIT


def normalise(raw: str) -> str:
    """SLURM's spelling to ours: ``CANCELLED by 0`` -> ``CANCELLED``, ``RUNNING+`` -> ``RUNNING``."""
    word = raw.strip().split(" ", 1)[0].rstrip("+*")
    return word.upper() or UNKNOWN


def display(state: str, reason: str | None = None, exit_code: int | None = None, signal: int | None = None) -> str:
    """A job's state as status tables show it: ``PENDING (Dependency)``, ``FAILED 3:0``."""
    if state == PENDING and reason:
        return f"PENDING ({reason})"
    if exit_code or signal:
        return f"{state} {exit_code}:{signal or 0}"
    return state
