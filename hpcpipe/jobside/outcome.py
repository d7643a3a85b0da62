"""The login node's side of a job that could not report: what the sweep records, and the
``--signal`` a job script asks for. Used by ``SlurmBackend.refresh``; standard library only.
"""
from __future__ import annotations

from typing import Callable

from . import reasons
from .runfolder import read_result

#: pending reasons SLURM gives a job it has requeued (it waits for its new begin time)
REQUEUE_REASONS = ("BeginTime", "JobHeldAdmin", "JobHeldUser", "Requeued")


def warn_signal(time_out_secs: float | None, lead_secs: int = 60) -> str | None:
    """``--signal`` for a job: SIGUSR2 to the batch shell ``lead_secs`` before its time limit.

    SLURM may send it up to a minute early, so it is asked only when the limit is at least five
    times the lead (a 1-minute job would otherwise be stopped at once); shorter jobs rely on the
    SIGTERM SLURM sends at the limit, ``KillWait`` (30 s by default) before SIGKILL.
    """
    if not lead_secs or lead_secs <= 0 or not time_out_secs:
        return None
    limit = max(1, -(-int(time_out_secs) // 60)) * 60  # --time is whole minutes, rounded up
    if limit < 5 * lead_secs:
        return None
    return f"B:USR2@{int(lead_secs)}"


def _tail(text: str | None, size: int = 16384) -> str:
    return (text or "")[-size:]


def swept(state, task_status: str, result_text: str | None,
          read_file: Callable[[str], str | None]) -> tuple[str, str]:
    """``(status, log line)`` for a task whose job SLURM ended without a final result.

    ``state`` is the job's ``JobState``. A job cancelled before it ran, or whose dependency can
    never be met, leaves its task Held (it will run when its parents are done); any other end is
    Errored, with the SLURM state and exit code, classified (memory, time, cancel, kill...)
    with the help of the job's output file, whose path the job side saved in its result.
    """
    result = read_result(result_text) or {}
    ran = bool(result.get("ops"))
    if (state.state == "CANCELLED" and task_status == "Waiting" and not ran) or \
            (state.reason and "Depend" in state.reason):
        why = state.reason or "its dependency can never be satisfied"
        return "Held", reasons.line("CANCELLED", f"SLURM job {state.job_id} {state.state} before it ran ({why}); "
                                                  "Held until its parents are done")
    output = (result.get("job") or {}).get("output")
    tail = _tail(read_file(output)) if output else ""
    kind = reasons.kind_of_state(state.state, state.exit_code, state.signal, tail)
    code = f"{state.exit_code if state.exit_code is not None else '?'}:{state.signal or 0}"
    text = (f"SLURM job {state.job_id} ended {state.state} (exit code {code}) without reporting: "
            f"it {reasons.DESCRIPTIONS[kind]}")
    if kind == reasons.KILLED and state.signal == 9:
        text += " (SIGKILL from outside the job side; no memory kill in its output)"
    lines = [ln for ln in tail.splitlines() if ln.strip()][-8:]
    if lines:  # what slurmstepd and the task printed last (the job could not upload its log)
        text += f"\nlast lines of {output}:\n" + "\n".join(lines)
    return "Errored", reasons.line(kind, text)


def pending(state, task_status: str | None, reported: bool = False, ran: bool = True) -> tuple[str, str] | None:
    """What to record for a job SLURM shows pending: ``(status, log line)``, or None.

    * pending again after a requeue while its task is Started (the job side was killed before
      it could say so): Waiting;
    * pending again after its job side had reported a final outcome (``reported``: the job was
      requeued after that, by a node failure or ``scontrol requeue``): Waiting, whatever the
      outcome was, since the task runs again;
    * pending with ``DependencyNeverSatisfied`` (a parent failed; no ``--kill-on-invalid-dep``):
      Held, not left Waiting forever.

    ``task_status=None`` asks whether the state could need a record at all (no store read);
    ``ran=False`` (the job was never seen running and nothing it wrote was folded) answers that
    its task cannot be Started, so a held backfill of 60,000 elements needs no store read.
    """
    if state.state.startswith("REQUEUE") or (state.state == "PENDING" and (reported or state.reason in REQUEUE_REASONS)):
        if (task_status is None and (ran or reported)) or task_status == "Started" or (reported and task_status != "Waiting"):
            return "Waiting", reasons.line(reasons.REQUEUED, f"SLURM requeued job {state.job_id} "
                                           f"({state.state}, {state.reason or 'no reason'}); back to Waiting "
                                           "until it runs again")
    elif state.state in (reasons.NODE_FAIL, reasons.PREEMPTED):
        if (task_status is None and ran) or task_status == "Started":
            return "Waiting", reasons.line(reasons.REQUEUED, f"SLURM job {state.job_id} ended {state.state}; "
                                           "back to Waiting: SLURM requeues it (not counted as a failure)")
    elif state.state == "PENDING" and state.reason == "DependencyNeverSatisfied":
        if task_status in (None, "Waiting"):
            return "Held", reasons.line(reasons.CANCELLED, f"SLURM job {state.job_id} can never start "
                                        "(DependencyNeverSatisfied: a parent failed); Held until its parents are done")
    return None


def lost(job_id: str, since: str, grace: float, task_status: str, result_text: str | None) -> tuple[str, str] | None:
    """What to record for a job SLURM has forgotten (unknown for ``grace`` seconds since ``since``).

    A task the job had started (its result file holds operations, or the store says Started) is
    Errored with the reason; a task nothing ran for stays as it is (Waiting): it can be
    submitted again now that the job is declared lost. None: nothing to record.
    """
    ran = bool((read_result(result_text) or {}).get("ops"))
    if task_status not in ("Started", "Waiting") or (task_status == "Waiting" and not ran):
        return None
    return "Errored", reasons.line(reasons.LOST, f"SLURM job {job_id} {reasons.DESCRIPTIONS[reasons.LOST]} "
                                   f"since {since} (grace period {grace:.0f} s): declared lost; the cluster "
                                   "was probably restarted with its state wiped")
