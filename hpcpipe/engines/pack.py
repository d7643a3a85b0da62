"""Packed execution, the allocation side: ``python -m hpcpipe.engines.pack --run-dir R --pack P``.

The batch step of a pack (see ``hpcpipe.slurm.pack``). It is the local engine (graph order,
CPU/RAM/GPU budget, priority, time-outs) with three differences:

* its budget is the allocation (``SLURM_JOB_CPUS_PER_NODE``, ``SLURM_MEM_PER_NODE``,
  ``SLURM_GPUS_ON_NODE`` or ``CUDA_VISIBLE_DEVICES``, over ``SLURM_JOB_NUM_NODES``), and each
  task starts as a job step (``srun --exact``) with its own CPUs, memory and GPUs, which SLURM
  places on the allocation's nodes;
* it never opens the task store: what it must record itself (a task Held because its parent
  failed, timed out, or stopped with the allocation) goes into the task's result file, which
  the login node folds like any other (with Alyx, it also goes to Alyx directly);
* parents outside the pack (another lane of the run, a job of an earlier run) have ended when
  it starts (``afterany``): their result files say whether the child runs or is Held.

It writes ``packs/<P>.job`` (its SLURM job id: how a hand-submitted script is found) when it
starts.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..jobside import reasons, runfolder
from ..plan import Plan, PlanItem
from ..settings import Settings, active
from ..slurm.pack import job_path, step_argv, withdrawn
from ..status import DONE, ERRORED, HELD, STARTED, WAITING
from .local import KILL_GRACE_SECS, LocalEngine, machine_budget

_logger = logging.getLogger("hpcpipe.pack")
#: the longest the engine waits between two looks at its steps (a step's end wakes it at once)
POLL_SECS = 1.0
#: exit code of an emitted script whose every task ``hpcpipe cancel`` withdrew before it ran
REFUSED = 3


def allocation_budget(env: dict | None = None) -> dict[str, float] | None:
    """CPUs, RAM (GB) and GPUs of the SLURM allocation this runs in; None outside one."""
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID"):
        return None
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    cpus = 0
    for part in (env.get("SLURM_JOB_CPUS_PER_NODE") or env.get("SLURM_CPUS_ON_NODE") or "1").split(","):
        m = re.match(r"^(\d+)(?:\(x(\d+)\))?$", part.strip())
        if m:
            cpus += int(m.group(1)) * int(m.group(2) or 1)
    if env.get("SLURM_MEM_PER_NODE"):
        ram = int(env["SLURM_MEM_PER_NODE"]) * nodes / 1024
    elif env.get("SLURM_MEM_PER_CPU"):
        ram = int(env["SLURM_MEM_PER_CPU"]) * cpus / 1024
    else:
        ram = 0.0
    if env.get("SLURM_GPUS_ON_NODE"):
        gpus = int(env["SLURM_GPUS_ON_NODE"]) * nodes
    else:
        visible = env.get("CUDA_VISIBLE_DEVICES", "")
        gpus = len([d for d in visible.split(",") if d.strip()]) * nodes
    return {"cpu": float(cpus), "ram": ram, "gpu": float(gpus)}


class _NoLedger:
    """The engine's ledger calls, inside an allocation: job ids live on the login node."""

    def record(self, jobs) -> None:
        pass

    def set_state(self, updates) -> None:
        pass

    def set_folded(self, updates) -> None:
        pass

    def forget(self, rows) -> None:
        pass


class PackStore:
    """The few store calls the engine makes, answered from the run folder.

    Reads: a task's record from its session entry, with what its result file says. Writes: one
    operation appended to the task's result file (and delivered to Alyx first when the run
    reports upstream).
    """

    keeps_undelivered = True

    def __init__(self, run_dir: Path, tasks: dict[str, dict], upstream=None) -> None:
        self.run_dir = run_dir
        self.tasks = tasks
        self.upstream = upstream

    def get_task(self, task_id: str) -> dict:
        task = dict(self.tasks[task_id])
        res = runfolder.read_result(_read(runfolder.result_path(self.run_dir, task_id))) or {}
        for op in res.get("ops", []):
            if op["op"] == "update_task" and op["payload"].get("task_id") == task_id:
                task.update({k: v for k, v in op["payload"].items() if k != "task_id"})
        return task

    def append_log(self, task_id: str, text: str, **fields) -> dict:
        """A log line, recorded as one operation of the task's result file."""
        return self.update_task(task_id, log=(self.get_task(task_id).get("log") or "") + f"\n{text}\n", **fields)

    def update_task(self, task_id: str, **fields) -> dict:
        delivered = False
        if self.upstream is not None:
            from ..errors import Unreachable

            try:
                self.upstream.update_task(task_id, **fields)
                delivered = True
            except Unreachable:
                pass
        runfolder.append_op(self.run_dir, task_id, fields, delivered=delivered,
                            final=fields.get("status") not in (STARTED, WAITING, None))
        return self.get_task(task_id)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


@dataclass
class PackEngine(LocalEngine):
    """The local engine inside an allocation (see the module docstring)."""

    run_dir: Path = Path(".")
    pack: dict = field(default_factory=dict)
    #: start tasks as ``srun`` job steps (inside an allocation)
    srun: bool = False
    binds: str = ""
    mem_given: bool = False
    backend: str = "pack"
    #: task ids ``hpcpipe cancel`` withdrew from this (emitted) pack before it ran
    withdrawn: set = field(default_factory=set)

    def _write_run(self, plans, run_id, run_dir) -> None:
        """The run folder was written by the submitting side."""

    def needs(self, task: dict) -> dict[str, float]:
        """A task without a RAM figure gets its CPUs' share of the allocation's memory, so that
        its step cannot take the whole allocation's memory and block every other step."""
        need = super().needs(task)
        if not need["ram"] and self.budget["cpu"]:
            need["ram"] = need["cpu"] * self.budget["ram"] / self.budget["cpu"]
        return need

    def check(self, tasks: list, dry_run: bool = False) -> None:
        """A task bigger than the allocation is Errored, not fatal to the rest of the pack."""

    def _argv(self, item: PlanItem, index: int, run_dir: Path, log_path: Path) -> list[str]:
        entry = self.pack["items_by_id"][item.id]
        env = self.pack["env"].get(item.task["name"], {})
        return step_argv(entry, env, self.pack["python"], str(run_dir), str(log_path), self.needs(item.task),
                         self.binds, self.srun, self.budget["gpu"] > 0, self.mem_given)

    # ------------------------------------------------------------------ results
    def _wait(self, r) -> int | None:
        """In an allocation the child is ``srun``, whose own CPU time and RSS are not the task's:
        no local usage file then (the step's figures are in sacct, where the report reads them)."""
        if not self.srun:
            return super()._wait(r)
        return r.proc.poll()

    def _fold(self, r, run_id: str) -> str | None:
        """The task's final status from its result file (the login node folds it later)."""
        res = runfolder.read_result(_read(runfolder.result_path(self.run_dir, r.item.id))) or {}
        return res.get("status") if res.get("final") else None

    def _interrupt(self, running, run_id: str, signum: int) -> None:
        """The allocation is stopping (scancel, time limit): record each running task that has
        not reported, stop every step, and record again what a step's last write replaced.

        Recording comes first because SLURM sends SIGKILL ``KillWait`` seconds after the signal
        (30 s by default, 2 s on the test cluster): an engine that waited for its steps before
        writing could be killed with nothing written, and the sweep would take the tasks for
        never started."""
        name = signal.Signals(signum).name
        note = reasons.line(reasons.CANCELLED, f"the pack allocation (SLURM job "
                            f"{os.environ.get('SLURM_JOB_ID', '?')}) was stopped ({name}) while this task ran")

        def record_unreported() -> None:
            for tid, r in running.items():
                if self._fold(r, run_id) is None:
                    self._patch(tid, note=note, status=ERRORED, time_elapsed_secs=time.monotonic() - r.started)

        record_unreported()
        for r in running.values():
            try:
                os.killpg(r.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + KILL_GRACE_SECS
        for r in running.values():
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(r.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        record_unreported()
        running.clear()

    # ------------------------------------------------------------------ the pack file
    def plans(self, entries: dict) -> list[Plan]:
        """The pack's tasks as plans (one per session).

        Parents outside the pack have ended by now (the pack waited for their jobs with
        ``afterany``), and so have tasks a previous run of this very pack finished (a script
        submitted twice): those are not run again, and a task whose such parent is not done is
        Held, with its descendants in the pack.
        """
        by_id = {t["id"]: t for entry in entries.values() for t in entry["tasks"]}
        self.store.tasks = by_id
        self.pack["items_by_id"] = {it["id"]: it for it in self.pack["items"]}
        ended = {it["id"]: self._final_status(str(self.run_dir), it["id"]) for it in self.pack["items"]}
        ended = {tid: status for tid, status in ended.items() if status}
        plans: dict[int, Plan] = {}
        blocked: set[str] = set()
        for it in self.pack["items"]:  # parents first
            if it["id"] in ended:
                continue
            if it["id"] in self.withdrawn:  # its record says so already (hpcpipe cancel)
                blocked.add(it["id"])
                _logger.info("%s of session %d not run: withdrawn by hpcpipe cancel", it["name"], it["index"])
                continue
            why = next((f"parent {by_id[p]['name']} " + (
                        "was cancelled by hpcpipe cancel" if p in self.withdrawn else
                        "ended " + ended[p] if p in ended else "cannot run")
                        for p in it["parents"] if p in blocked or ended.get(p, "Complete") not in DONE), None)
            for o in it["outside"]:
                status = why is None and self._final_status(o["run_dir"], o["id"])
                if why is None and status not in DONE:
                    name = by_id.get(o["id"], {}).get("name", o["id"])
                    why = f"parent {name} " + (f"ended {status}" if status else "ended without a result (its job ended)")
            if why is not None:
                blocked.add(it["id"])
                _logger.info("%s of session %d held: %s", it["name"], it["index"], why)
                self._patch(it["id"], status=HELD, note=f"held in pack {self.pack['pack']}: {why}")
                continue
            entry = entries[str(it["index"])]
            plan = plans.setdefault(it["index"], Plan(entry["eid"], Path(entry["path"]), deck=entry["tasks"]))
            plan.items.append(PlanItem(dict(by_id[it["id"]], status=WAITING),
                                       [p for p in it["parents"] if p not in ended]))
        return list(plans.values())

    @staticmethod
    def _final_status(run_dir: str, task_id: str) -> str | None:
        res = runfolder.read_result(_read(runfolder.result_path(run_dir, task_id))) or {}
        return res.get("status") if res.get("final") else None

    def run_pack(self, run_id: str, entries: dict) -> dict[str, str]:
        """Run the pack's tasks; ``{task id: final status}``."""
        plans = self.plans(entries)
        self._index = {it.id: self.pack["items_by_id"][it.id]["index"] for p in plans for it in p.items}
        with _woken_by_signals() as self._wake:
            return self.run(plans, run_id, self.run_dir)

    def _pause(self) -> None:
        """Until a step ends (SIGCHLD) or a signal comes, at most ``poll_secs``: a lane is given
        its next task as soon as its step ends, not at the next poll (measured: a step's end
        to the engine's reap was ~0.5 s of a ~2.5 s lane cycle, up to ``poll_secs`` of it spent
        sleeping)."""
        wake = getattr(self, "_wake", None)
        if wake is None:
            return super()._pause()
        if select.select([wake], [], [], self.poll_secs)[0]:
            try:
                while os.read(wake, 512):
                    pass
            except BlockingIOError:
                pass

    def _launch(self, item, index, need, run_id, run_dir):
        """Logs and job-side arguments by the task's session index in ``sessions/c0.json``."""
        return super()._launch(item, self._index[item.id], need, run_id, run_dir)


@contextlib.contextmanager
def _woken_by_signals():
    """A pipe that gets a byte whenever this process is signalled (a child ended: SIGCHLD, or
    SIGTERM/SIGINT), for ``select``; None when signals cannot be set here (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    old_handler = signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the byte is written
    try:
        yield r
    finally:
        signal.signal(signal.SIGCHLD, old_handler)
        signal.set_wakeup_fd(old_fd)
        os.close(r)
        os.close(w)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpcpipe.engines.pack", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--pack", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir = Path(args.run_dir)
    packs = run_dir / "packs"
    run = json.loads((run_dir / "run.json").read_text())
    pack = json.loads((packs / f"{args.pack}.json").read_text())
    entries = runfolder.load_session_entries(run_dir, "c0")
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id:  # written before the withdrawn list is read (see SlurmBackend._withdraw)
        Path(job_path(str(run_dir), args.pack)).write_text(job_id)
    gone = withdrawn(lambda f: _read(Path(f)), str(run_dir), args.pack)
    if gone and {it["id"] for it in pack["items"]} <= gone:
        why = (f"pack {args.pack} of run {run['run_id']} was cancelled by `hpcpipe cancel` before this script "
               f"ran: nothing runs (its tasks are recorded Errored; `hpcpipe rerun --session PATH` runs "
               "a session's again)")
        _logger.error("%s", why)
        print(f"hpcpipe: {why}", file=sys.stderr)
        return REFUSED
    settings = Settings.from_run(run)  # the submitting side's, not this node's configuration
    budget = allocation_budget()
    srun = budget is not None
    upstream = None
    if run.get("upstream"):
        from ..store import open_store

        upstream = open_store(settings=settings)
    # $HPCPIPE_BINDS is set by the job script itself: it ends with the scratch folder, which
    # only the node's shell knows ($SLURM_JOB_ID), so it cannot be written into run.json
    engine = PackEngine(store=PackStore(run_dir, {}, upstream), ledger=_NoLedger(),  # type: ignore[arg-type]
                        budget=budget or machine_budget(settings), settings=settings, run_dir=run_dir, pack=pack,
                        srun=srun, binds=os.environ.get("HPCPIPE_BINDS", ""), mem_given=bool(budget and budget["ram"]),
                        poll_secs=POLL_SECS, withdrawn=gone)
    _logger.info("pack %s of run %s: %d task(s), budget %s, %s", args.pack, run["run_id"], len(pack["items"]),
                 engine.budget, "job steps (srun)" if srun else "local processes")
    try:
        with active(settings):  # the outbox and the store's down mark follow them too
            final = engine.run_pack(run["run_id"], entries)
    except KeyboardInterrupt as exc:
        _logger.warning("pack %s stopped: %s", args.pack, exc)
        return 143
    counts: dict[str, int] = {}
    for status in final.values():
        counts[status] = counts.get(status, 0) + 1
    # what the engine itself cost (its polling) and what its srun clients cost: a pack's overhead
    own, steps = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    _logger.info("pack %s done: %s; CPU s: engine %.2f, its %s %.2f", args.pack, counts,
                 own.ru_utime + own.ru_stime, "srun clients" if srun else "task processes",
                 steps.ru_utime + steps.ru_stime)
    return 0  # the pack ran to its end; each task's own outcome is in its record


if __name__ == "__main__":
    sys.exit(main())
