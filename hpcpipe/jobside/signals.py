"""SIGTERM and SIGUSR2 in the job side: record why the task stops before SLURM's SIGKILL.

SLURM signals a job before killing it: SIGTERM on ``scancel``, at the time limit, on preemption
and on requeue (then SIGKILL after ``KillWait``, 30 s by default), and, when the script asked
with ``#SBATCH --signal=B:USR2@<secs>``, SIGUSR2 that many seconds before the time limit. The
job script ``exec``s Python, so Python is the batch step's process and gets them.

``SignalGuard.install()`` turns the first of these signals into a ``JobSignal`` exception raised
in the main thread, which unwinds the running task (its ``finally`` blocks run, its log is kept);
``run.main`` then records the outcome and exits non-zero. Store operations are critical
sections (``guard.critical()``): a signal arriving inside one is raised when it ends, so a
result file or an Alyx PATCH is never cut in half. Later signals are ignored: the outcome is
being recorded.

What the outcome is (``classify``):

* SIGUSR2: the time limit is near: Errored, ``[hpcpipe:TIMEOUT]``;
* SIGTERM, the job being requeued (its restart count went up, or slurmstepd wrote "DUE TO JOB
  REQUEUE"): Waiting, ``[hpcpipe:REQUEUED]``; SLURM runs the job again later and the job side
  carries on in the same result file;
* SIGTERM "DUE TO NODE FAILURE" or "DUE TO PREEMPTION" when ``scontrol`` did not answer in time
  (the controller is busy then; the CI cluster under load showed it): Waiting, not final, since
  SLURM may requeue the job; if it ends the job instead, the login node records Errored from
  the job's last state. With an answer and no restart: Errored, NODE_FAIL/PREEMPTED;
* SIGTERM at the time limit ("DUE TO TIME LIMIT", or run time >= time limit): Errored, TIMEOUT;
* SIGTERM otherwise (``scancel``, preemption without requeue): Errored, CANCELLED/PREEMPTED.

The facts come from the job's own output file (slurmstepd writes its "*** JOB 12 ON node
CANCELLED AT ... DUE TO ... ***" line there before signalling) and one ``scontrol show job``
(restart count, run time and time limit), bounded to a few seconds.
"""
from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager
from typing import Iterator

from . import reasons

HANDLED = (signal.SIGTERM, signal.SIGUSR2)


class JobSignal(BaseException):
    """Raised in the main thread by the first SIGTERM/SIGUSR2; not an ``Exception``, so a task's
    ``except Exception`` does not swallow it."""

    def __init__(self, signum: int, kind: str, status: str, text: str) -> None:
        super().__init__(text)
        self.signum, self.kind, self.status, self.text = signum, kind, status, text

    @property
    def reason(self) -> str:
        return reasons.line(self.kind, self.text)


def own_output_path() -> str | None:
    """The file this process's stdout goes to (SLURM's ``--output``), if it is a regular file."""
    try:
        path = os.readlink("/proc/self/fd/1")
    except OSError:
        return None
    return path if path.startswith("/") and os.path.isfile(path) else None


def _tail(path: str | None, size: int = 16384) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def scontrol_job(job_id: str, timeout: float = 3.0) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (empty when it fails or is slow)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                             timeout=timeout).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info: dict[str, str] = {}
    for word in out.split():
        key, sep, value = word.partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def _seconds(text: str | None) -> int | None:
    """SLURM's ``[D-]HH:MM:SS`` / ``MM:SS`` as seconds; None for UNLIMITED or junk."""
    if not text or not text[0].isdigit():
        return None
    days, _, rest = text.rpartition("-")
    try:
        parts = [int(p) for p in rest.split(":")]
        total = 0
        for p in parts:  # [HH:]MM:SS
            total = total * 60 + p
        return total + (int(days) * 86400 if days else 0)
    except ValueError:
        return None


def classify(signum: int, env: dict | None = None) -> JobSignal:
    """Why this signal came, as the ``JobSignal`` to raise (see the module docstring)."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    where = f"SLURM job {job}" if job else f"process {os.getpid()}"
    if signum == signal.SIGUSR2:
        return JobSignal(signum, reasons.TIMEOUT, "Errored",
                         f"{where}: SIGUSR2 from SLURM, the time limit is near; task stopped before SIGKILL")
    name = signal.Signals(signum).name
    if not job:
        return JobSignal(signum, reasons.KILLED, "Errored", f"{where} received {name}; task stopped")
    tail = _tail(own_output_path())
    info = scontrol_job(job)
    try:
        restarted = int(info.get("Restarts", "0")) > int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restarted = False
    upper = tail.upper()
    node_failed = "DUE TO NODE FAILURE" in upper
    preempted = "DUE TO PREEMPTION" in upper or info.get("JobState") == "PREEMPTED"
    if restarted or "DUE TO JOB REQUEUE" in upper:
        return JobSignal(signum, reasons.REQUEUED, "Waiting",
                         f"{where} is being requeued by SLURM ({name}); back to Waiting, it will run again")
    if (node_failed or preempted) and not info:
        # scontrol did not answer (a busy controller, as after a node failure): whether SLURM
        # requeues is unknown here, so nothing final is claimed; the login node sees the job's
        # last state and records Errored if SLURM ended it instead (jobstate.DOUBTFUL)
        why = "its node failed" if node_failed else "it was preempted"
        return JobSignal(signum, reasons.REQUEUED, "Waiting",
                         f"{where} stopped ({name}): {why}; back to Waiting, SLURM requeues it unless it ends it")
    if node_failed:
        return JobSignal(signum, reasons.NODE_FAIL, "Errored", f"{where}: its node failed ({name}) and it was not requeued")
    if preempted:
        return JobSignal(signum, reasons.PREEMPTED, "Errored", f"{where} was preempted ({name}) and not requeued")
    run, limit = _seconds(info.get("RunTime")), _seconds(info.get("TimeLimit"))
    if "DUE TO TIME LIMIT" in upper or (run is not None and limit is not None and run >= limit):
        return JobSignal(signum, reasons.TIMEOUT, "Errored",
                         f"{where} reached its time limit ({info.get('TimeLimit', '?')}); {name} before SIGKILL")
    if reasons.memory_killed(tail):
        return JobSignal(signum, reasons.MEMORY, "Errored", f"{where} exceeded its memory limit ({name})")
    if "CANCELLED AT" in upper or info.get("JobState") in ("CANCELLED", "COMPLETING"):
        return JobSignal(signum, reasons.CANCELLED, "Errored", f"{where} was cancelled ({name}, e.g. scancel)")
    return JobSignal(signum, reasons.KILLED, "Errored", f"{where} received {name}; task stopped")


class SignalGuard:
    """Installs the handlers; defers a signal that arrives inside a critical section."""

    def __init__(self) -> None:
        self.fired: JobSignal | None = None
        self._pending: JobSignal | None = None
        self._depth = 0
        self._old: dict[int, object] = {}

    def install(self) -> "SignalGuard":
        for sig in HANDLED:
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()

    def settle(self) -> None:
        """The outcome is known (the task ended by itself): ignore signals from now on."""
        self._pending = None
        if self.fired is None:
            self.fired = JobSignal(0, reasons.FAILED, "", "settled")

    def _handler(self, signum: int, _frame) -> None:
        if self.fired is not None:
            return  # already stopping: let the first one finish its report
        try:
            self.fired = classify(signum)
        except Exception:  # noqa: BLE001 - a report without the details beats none
            self.fired = JobSignal(signum, reasons.KILLED, "Errored",
                                   f"received {signal.Signals(signum).name}; task stopped")
        if self._depth:
            self._pending = self.fired
            return
        raise self.fired

    @contextmanager
    def critical(self) -> Iterator[None]:
        """No ``JobSignal`` is raised inside; one that arrived is raised at the end."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending is not None:
            pending, self._pending = self._pending, None
            raise pending
