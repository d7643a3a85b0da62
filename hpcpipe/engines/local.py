"""The local engine: run planned tasks on this machine, each in its own process.

Resource-aware: as many tasks at once as the CPU, RAM and GPU budget allows (from the machine,
overridable with ``[local] cpus / ram / gpus``), highest priority first among ready tasks.
``time_out_secs`` is enforced (process group killed, task recorded Errored with the reason).
Ctrl-C or SIGTERM stops every child, leaves no orphan (children also get SIGTERM from the kernel
if this process dies, via PR_SET_PDEATHSIG) and records no task as Started.

Without a GPU on the machine, tasks that ask for one run on the CPU one at a time: they take the
GPU lock anyway (see ``Task``), so running two together would only make one wait.

An outage of the store (Alyx) costs no time: children are scheduled from the jobs' own result
files, never from the store; reports the store cannot take go to the outbox without waiting
(``store.health`` marks it down after the first failure), and queued reports are replayed in a
background thread once the mark has expired, never inside the scheduling loop; what is still
queued when the last task ends gets one more try then.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .. import usage
from ..backends import RefreshReport, SubmitReport
from ..errors import BadInput, Unreachable
from ..jobside import runfolder
from ..ledger import JobRecord, Ledger
from ..pipeline import time_out_secs
from ..plan import Plan, PlanItem
from ..settings import Settings, current
from ..status import DONE, ERRORED, HELD, WAITING
from ..store import health, outbox

_logger = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
KILL_GRACE_SECS = 5.0
#: how long ``hpcpipe cancel`` waits for a signalled engine to stop its tasks (each gets
#: ``KILL_GRACE_SECS`` after SIGTERM, all at once)
CANCEL_WAIT_SECS = KILL_GRACE_SECS + 10.0
#: how often the scheduling loop looks whether queued reports can be replayed (seconds)
REPLAY_CHECK_SECS = 2.0


def machine_budget(settings: Settings) -> dict[str, float]:
    """CPU count, RAM in GB and GPU count of this machine, each overridable in ``[local]``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = len([d for d in visible.split(",") if d.strip()]) if visible else _count_nvidia_gpus()
    own = settings.local
    budget = {"cpu": float(cpus if own.cpus is None else own.cpus), "ram": float(ram if own.ram is None else own.ram),
              "gpu": float(gpus if own.gpus is None else own.gpus)}
    for key, value in budget.items():
        if value < 0 or (key != "gpu" and value <= 0):
            raise BadInput(f"[local] {key} = {value} must be positive")
    return budget


def _count_nvidia_gpus() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the engine dies, even by SIGKILL."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def engine_pid(job: JobRecord) -> int | None:
    """The pid of the live hpcpipe engine that recorded ``job`` (``script`` = ``engine:<pid>``),
    or None: it ended, or the pid now belongs to another program."""
    pid = (job.script or "").partition("engine:")[2]
    if pid == str(os.getpid()):
        return os.getpid()
    return int(pid) if pid.isdigit() and b"hpcpipe" in _cmdline(int(pid)) else None


def _wait_ended(pids: set[int], limit: float) -> None:
    """Wait until none of ``pids`` (not our children) runs any more, at most ``limit`` seconds.
    An ended process whose parent has not reaped it yet has an empty command line: ended."""
    end = time.monotonic() + limit
    while pids and time.monotonic() < end:
        pids = {pid for pid in pids if _cmdline(pid)}
        if pids:
            time.sleep(0.05)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return b""


@dataclass
class _Running:
    item: PlanItem
    proc: subprocess.Popen
    started: float
    log_path: Path
    need: dict[str, float]
    run_dir: Path
    #: epoch seconds at launch, for the usage record
    wall_start: float = 0.0


def run_root(settings: Settings) -> Path:
    """Where local runs keep their folders (``[local] run_root``, default ``<home>/runs``)."""
    return settings.path(settings.local.run_root, "runs")


@dataclass
class LocalEngine:
    """Runs plans to completion in the foreground (the embedded default backend).

    ``budget`` (CPUs, RAM, GPUs) is read from the machine when first needed, so a refresh or a
    cancel, which need none, asks no ``nvidia-smi``. ``settings`` (default ``settings.current()``)
    give the budget's overrides, the run folders' root, and what its jobs get in ``run.json``.
    """

    store: object
    ledger: Ledger
    budget: dict[str, float] | None = None
    settings: Settings | None = None
    poll_secs: float = 0.1
    backend: str = "local"
    #: what it does with a plan ("nothing to run")
    verb = "run"
    #: it runs on this machine, never through a ``--remote`` target
    remote = None
    _replayer: threading.Thread | None = field(default=None, repr=False)
    _replay_checked: float = field(default=0.0, repr=False)

    @property
    def name(self) -> str:
        """The backend's name, as every backend has one (``ledger`` rows carry it)."""
        return self.backend

    def __post_init__(self) -> None:
        self.settings = self.settings or current()

    def _budget(self) -> dict[str, float]:
        if self.budget is None:
            self.budget = machine_budget(self.settings)
        return self.budget

    # ------------------------------------------------------------------ the Backend interface
    def submit(self, plans: list[Plan], run_id: str, dry_run: bool = False,
               recorded: Callable[[SubmitReport], None] | None = None) -> SubmitReport:
        """Run the plans here, in the foreground; the report carries each task's final status.

        The intents go into the ledger first (``reserve``, under the caller's submission lock),
        then ``recorded`` is called (the CLI releases the lock there: the tasks may run for
        hours), then the tasks run. A dry run lists what would run and changes nothing.
        """
        t0 = time.perf_counter()
        plans = [p for p in plans if p.items]
        report = SubmitReport(run_id, str(run_root(self.settings) / run_id), backend=self.name)
        if dry_run:
            for plan in plans:
                names = {i.id: i.task["name"] for i in plan.items}
                for item in plan.items:
                    deps = [names[p] for p in item.parents_in_plan]
                    t = item.task
                    report.commands.append(f"would run {t['name']} (cpu {t['cpu']}, gpu {t['gpu']}, ram {t['ram']}G)"
                                           + (f" after {', '.join(deps)}" if deps else ""))
            return report
        run_dir = Path(report.run_dir)
        self.reserve(plans, run_id, run_dir)
        if recorded is not None:
            recorded(report)
        report.final = self.run(plans, run_id, run_dir)
        report.elements = len(report.final)
        report.seconds = time.perf_counter() - t0
        return report

    def refresh(self) -> RefreshReport:
        """The local sweep: tasks whose process died without a final result are recorded
        (``sweep.sweep_local``); the process table is the scheduler here, asked per job."""
        from ..sweep import sweep_local

        return RefreshReport(swept=len(sweep_local(self.store, self.ledger)))

    def cancel(self, jobs: list[JobRecord], runs: Iterable[str] = ()) -> int:
        """SIGTERM the engines running ``jobs`` (and every job of ``runs``) on this machine.

        An engine stops as on Ctrl-C: its running tasks are stopped and go back to Waiting, the
        others are not started. A task's own process is not signalled alone: the engine would
        take its death for a failure and hold its children. Returns the jobs of those engines,
        once the engines have ended (at most ``CANCEL_WAIT_SECS``): the caller holds the
        submission lock, so a second ``hpcpipe cancel`` then finds those jobs ended, and
        signals and counts none of them again.
        """
        jobs = list(jobs)
        for run in runs:
            jobs += [j for j in self.ledger.run(run) if j.backend == self.name and j.live and j not in jobs]
        engine_of = {}  # one /proc read per engine, however many jobs it runs
        for job in jobs:
            if job.script not in engine_of:
                engine_of[job.script] = engine_pid(job)
        engines = {pid for pid in engine_of.values() if pid}
        for pid in engines:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _wait_ended(engines - {os.getpid()}, CANCEL_WAIT_SECS)
        return len([j for j in jobs if engine_of[j.script] in engines])

    def needs(self, task: dict) -> dict[str, float]:
        """What a task takes from the budget (a GPU task on a GPU-less machine: one CPU-GPU slot)."""
        return {"cpu": float(task.get("cpu") or 1), "ram": float(task.get("ram") or 0),
                "gpu": float(task.get("gpu") or 0)}

    def check(self, tasks: list[dict], dry_run: bool = False) -> None:
        """Refuse, before anything is recorded or runs, a task bigger than the whole machine."""
        for task in tasks:
            for key, value in self.needs(task).items():
                limit = self._budget()[key] if key != "gpu" or self._budget()["gpu"] > 0 else 1
                if value > limit:
                    raise BadInput(f"task {task['name']} asks {key}={value:g} but this machine's budget "
                                   f"is {limit:g} (set [local] {key + 's' if key != 'ram' else key} in the config)")

    def reserve(self, plans: list[Plan], run_id: str, run_dir: Path) -> None:
        """Record every planned task in the ledger before the first one starts (the intent,
        under the submission lock): a concurrent submit sees them live and plans them not
        again. The engine's pid names the intent, so the sweep knows when it died."""
        self.ledger.record([{"task_id": it.id, "session": it.task.get("session"), "task_name": it.task["name"],
                             "run_id": run_id, "backend": self.backend, "run_dir": str(run_dir),
                             "script": f"engine:{os.getpid()}"} for plan in plans for it in plan.items])

    def run(self, plans: list[Plan], run_id: str, run_dir: Path) -> dict[str, str]:
        """Run every plan's items; returns ``{task id: final status}``."""
        self.check([it.task for plan in plans for it in plan.items])
        self._write_run(plans, run_id, run_dir)
        self._started: set[str] = set()
        items = {it.id: it for plan in plans for it in plan.items}
        index = {it.id: i for i, plan in enumerate(plans) for it in plan.items}
        final: dict[str, str] = {}
        running: dict[str, _Running] = {}
        stop = {"signal": None}

        def on_signal(signum, _frame):
            stop["signal"] = signum

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            while items or running:
                if stop["signal"] is not None:
                    self._interrupt(running, run_id, stop["signal"])
                    raise KeyboardInterrupt(f"stopped by signal {stop['signal']}")
                self._reap(running, final, run_id)
                self._hold_blocked(items, final)
                self._start_ready(items, running, final, index, run_id, run_dir)
                self._replay_when_back()
                if running:
                    self._pause()
                elif items:  # nothing running and nothing could start: parents never finished
                    for tid in list(items):
                        self._hold(items.pop(tid).task, "its parents did not run", final)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            # intents of tasks that never started (held, interrupted) are no live job any more
            self.ledger.forget([(it.id, run_id) for it in items.values()]
                               + [(tid, run_id) for tid in final if tid not in self._started])
        self._replay_at_end()
        return final

    def _pause(self) -> None:
        """Between two looks at the running tasks."""
        time.sleep(self.poll_secs)

    # ------------------------------------------------------------------ reports
    def _store_down(self) -> bool:
        return health.is_down(outbox.store_key(self.store))

    def _replay_when_back(self) -> None:
        """Queued reports go in a background thread once the store is no longer marked down."""
        now = time.monotonic()
        if now - self._replay_checked < REPLAY_CHECK_SECS:
            return
        self._replay_checked = now
        if (self._replayer is not None and self._replayer.is_alive()) or self._store_down() \
                or not outbox.pending(self.store):
            return
        self._replayer = threading.Thread(target=self._replay, name="hpcpipe-replay", daemon=True)
        self._replayer.start()

    def _replay(self) -> None:
        try:
            outbox.sync(self.store, force=False)
        except Exception:  # noqa: BLE001 - the reports stay queued; `hpcpipe sync` says why
            _logger.exception("replaying queued reports failed")

    def _replay_at_end(self) -> None:
        """After the last task: wait for a replay under way, then give the queue one more try."""
        if self._replayer is not None:
            self._replayer.join()
            self._replayer = None
        if outbox.pending(self.store):
            self._replay()

    # ------------------------------------------------------------------ scheduling
    def _free(self, running: dict[str, _Running]) -> dict[str, float]:
        free = dict(self._budget())
        if free["gpu"] == 0:
            free["gpu"] = 1  # the CPU fallback slot for GPU tasks
        for r in running.values():
            for key, value in r.need.items():
                free[key] -= value
        return free

    def _hold_blocked(self, items: dict[str, PlanItem], final: dict[str, str]) -> None:
        changed = True
        while changed:
            changed = False
            for tid, item in list(items.items()):
                bad = [p for p in item.parents_in_plan if p in final and final[p] not in DONE]
                if bad:
                    self._hold(items.pop(tid).task, f"parent ended {final[bad[0]]}", final)
                    changed = True

    def _hold(self, task: dict, reason: str, final: dict[str, str]) -> None:
        _logger.info("%s held: %s", task["name"], reason)
        self._patch(task["id"], status=HELD)
        final[task["id"]] = HELD

    def _status(self, task_id: str) -> str | None:
        """The stored status, or None while the store cannot be reached (no request while it
        is marked down)."""
        if self._store_down():
            return None
        try:
            with health.reporting(self.store):
                return self.store.get_task(task_id)["status"]
        except Unreachable as exc:
            health.mark_down(outbox.store_key(self.store), str(exc))
            return None

    def _patch(self, task_id: str, note: str | None = None, **fields) -> None:
        """Update a task; kept in the outbox while the store cannot be reached.

        ``note`` is appended to the task's log when the log can be read.
        """
        if note is not None and self._store_down():
            _logger.warning("store unreachable: %s", note)
        elif note is not None:
            try:
                with health.reporting(self.store):
                    self.store.append_log(task_id, note, **fields)
                return
            except Unreachable as exc:
                health.mark_down(outbox.store_key(self.store), str(exc))
                _logger.warning("store unreachable: %s", note)
        outbox.deliver(self.store, "update_task", _replay=False, task_id=task_id, **fields)

    def _start_ready(self, items, running, final, index, run_id, run_dir) -> None:
        ready = [it for it in items.values()
                 if all(final.get(p) in DONE for p in it.parents_in_plan)
                 and all(self._live_parent_done(j.task_id) for j in it.parents_live)]
        ready.sort(key=lambda it: (-(it.task.get("priority") or 0), it.task.get("level") or 0))
        for item in ready:
            need = self.needs(item.task)
            free = self._free(running)
            if any(need[k] > free[k] + 1e-9 for k in need):
                continue
            items.pop(item.id)
            running[item.id] = self._launch(item, index[item.id], need, run_id, run_dir)

    def _live_parent_done(self, task_id: str) -> bool:
        return self._status(task_id) in DONE

    def _argv(self, item: PlanItem, index: int, run_dir: Path, log_path: Path) -> list[str]:
        """The task's process: the job side on its run-folder entry."""
        return [sys.executable, "-m", "hpcpipe.jobside", "--run-dir", str(run_dir), "--chunk", "c0",
                "--index", str(index), "--task-name", item.task["name"]]

    def _write_run(self, plans: list[Plan], run_id: str, run_dir: Path) -> None:
        """The run folder the job side reads (the same layout as on SLURM, see ``runfolder``).

        Jobs get their session's records from it, so a task starts even while the store (Alyx)
        cannot be reached; on this machine they write the store directly (``upstream``).
        """
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (run_dir / "sessions").mkdir(exist_ok=True)
        if getattr(self.store, "kind", "") == "alyx":  # its jobs find a configured token in the cache
            from ..alyx.params import cache_for_jobs

            cache_for_jobs(self.settings)
        (run_dir / "run.json").write_text(runfolder.run_json(run_id, getattr(self.store, "kind", ""), "server",
                                                             upstream=True, settings=self.settings.for_job()))
        entries = {i: runfolder.session_entry(p.session, str(p.session_path), p.deck) for i, p in enumerate(plans)}
        (run_dir / "sessions" / "c0.json").write_text(runfolder.sessions_json(entries))

    def _launch(self, item: PlanItem, index: int, need, run_id, run_dir: Path) -> _Running:
        task = item.task
        self._started.add(item.id)
        log_path = run_dir / "logs" / f"{task['name']}.{index}.log"
        argv = self._argv(item, index, run_dir, log_path)
        with open(log_path, "ab") as log:
            # cwd: the run folder, so no folder of the submitting directory shadows a package
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=run_dir,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        self.ledger.record([{"task_id": task["id"], "session": task.get("session"), "task_name": task["name"],
                             "run_id": run_id, "backend": self.backend, "job_id": proc.pid, "state": "RUNNING",
                             "run_dir": str(run_dir), "script": f"engine:{os.getpid()}"}])
        _logger.info("started %s (pid %d), log %s", task["name"], proc.pid, log_path)
        return _Running(item, proc, time.monotonic(), log_path, need, run_dir, time.time())

    # ------------------------------------------------------------------ completion
    def _reap(self, running: dict[str, _Running], final: dict[str, str], run_id: str) -> None:
        for tid, r in list(running.items()):
            timeout = time_out_secs(r.item.task) or 0
            code = self._wait(r)
            if code is None and timeout and time.monotonic() - r.started > timeout:
                self._kill(r)
                reason = f"killed by the local engine after time_out_secs={timeout} s"
                self._fail(r, reason, run_id, "TIMEOUT")
                final[tid] = ERRORED
                running.pop(tid)
                continue
            if code is None:
                continue
            running.pop(tid)
            status = self._fold(r, run_id)
            if status is None:
                self._fail(r, f"task process exited with code {code} without reporting", run_id, "FAILED")
                status = ERRORED
            self.ledger.set_state([(tid, run_id, "COMPLETED" if code == 0 else "FAILED", f"exit {code}")])
            final[tid] = status
            _logger.info("%s (pid %d) ended %s", r.item.task["name"], r.proc.pid, status)

    @staticmethod
    def _wait(r: _Running) -> int | None:
        """``poll()`` through ``os.wait4``, which also gives the process's CPU time and peak RSS:
        saved as the task's usage (``usage.save_local``) for ``hpcpipe report``/``resources``."""
        if r.proc.returncode is not None:
            return r.proc.returncode
        try:
            pid, status, ru = os.wait4(r.proc.pid, os.WNOHANG)
        except ChildProcessError:
            return r.proc.poll()
        if pid == 0:
            return None
        r.proc.returncode = os.waitstatus_to_exitcode(status)
        measured = usage.from_rusage(pid, status, ru, r.wall_start, time.time(), r.wall_start, r.need,
                                     time_out_secs(r.item.task) or None, str(r.log_path))
        usage.save_local(r.run_dir, r.item.id, measured)
        return r.proc.returncode

    def _fold(self, r: _Running, run_id: str) -> str | None:
        """Bring the job's result file into the store (or the outbox); its final status, if any."""
        path = runfolder.result_path(r.run_dir, r.item.id)
        text = path.read_text() if path.exists() else None
        done = runfolder.fold(self.store, [(r.item.id, text, 0)], replay=False).get(r.item.id)
        if done is None or not done[1]:
            return None
        self.ledger.set_folded([(r.item.id, run_id, done[0], True)])
        return runfolder.read_result(text).get("status")

    def _fail(self, r: _Running, reason: str, run_id: str, state: str) -> None:
        self._patch(r.item.id, note=reason, status=ERRORED, time_elapsed_secs=time.monotonic() - r.started)
        self.ledger.set_state([(r.item.id, run_id, state, reason)])

    @staticmethod
    def _kill(r: _Running) -> None:
        """SIGTERM the task's process group, then SIGKILL what is left after a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(r.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                r.proc.wait(KILL_GRACE_SECS)
                return
            except subprocess.TimeoutExpired:
                continue
        r.proc.wait()

    def _interrupt(self, running: dict[str, _Running], run_id: str, signum: int) -> None:
        """Stop every child; their tasks go back to Waiting (interrupted, not failed)."""
        for r in running.values():
            self._kill(r)
        for tid, r in running.items():
            # the job side recorded its own stop (Errored, by SIGTERM); an interruption by the
            # user is no failure of the task: it goes back to Waiting for the next submit
            if self._fold(r, run_id) not in DONE:
                self._patch(tid, note=f"interrupted by signal {signum}; back to Waiting", status=WAITING)
            self.ledger.set_state([(tid, run_id, "CANCELLED", f"interrupted by signal {signum}")])
        running.clear()
