"""The SLURM backend: plans become sbatch submissions; SLURM holds the graph from then on.

No controller process stays alive: parents are expressed as dependency flags, so the user can
log out after submitting. Two shapes:

* ``submit``: one job per task, ``--dependency=afterok:<parent ids>`` with
  ``--kill-on-invalid-dep=yes`` (a session or a few);
* ``backfill``: one job array per task type per chunk of sessions. Session i of a chunk keeps
  index i in every array of that chunk; indices are sparse (a task already Complete has no
  element) and a child array waits with ``aftercorr`` on the parent arrays that hold its
  sessions' parents, so element i waits only for its own session. Elements whose parents are
  all done go into an array with no dependency: SLURM makes an index that the parent array
  lacks wait for the *whole* parent array (see docs/SLURM.md).

Every job of a run carries the run id as its job name and ``hpcpipe:<call>`` as its comment, so
one ``squeue --me --name=<runs>`` finds every job of those runs, whichever process submitted
them. Which call is which is planned by ``layout`` (a pure function); what each job must know
sits in the run folder (``jobside.runfolder``), and every call is recorded in the ledger as an
intent (``SUBMITTING``), all before the first sbatch. ``refresh`` turns intents into jobs (adopted
from squeue by run name and comment) or ``UNSUBMITTED`` (SLURM never got them) when no
submission holds the lock, so a submitter killed at any point leaves nothing queued twice.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from typing import Callable, Iterable

from .. import jobstate, recorder
from ..backends import RefreshReport, SubmitReport
from ..errors import BackendError, BadInput
from ..jobside import reasons, runfolder
from ..jobside.outcome import lost, pending, swept, warn_signal
from ..ledger import JobRecord, Ledger
from ..pipeline import job_size, time_out_secs
from ..plan import Plan, StampedPlan
from ..settings import Settings, current
from ..status import STARTED, WAITING
from ..transport import LocalTransport, Transport
from . import layout as layouts
from .cancel import cancel
from .limits import ClusterLimits
from .pack import (
    RUN_KEY,
    Pack,
    PackShape,
    binds_for,
    build_packs,
    environments,
    hand_command,
    job_path,
    step_argv,
    withdrawn,
    withdrawn_path,
)
from .pack import size as pack_size
from .profiles import Profile, load_profile
from .render import JobSpec, Resources, job_script
from .status import JobState, JobWatcher
from .submit import format_command, sbatch_argv, submit

_logger = logging.getLogger(__name__)
BACKEND = "slurm"
#: what a task records when a refresh closes or re-reads its job, from its record (``id`` and
#: ``status`` only: one read for all) and its result file's text: ``(status, log line)``, or None
Outcome = Callable[[dict, "str | None"], "tuple[str, str] | None"]


@dataclasses.dataclass
class _Record:
    """A task record a refresh may make: ``outcome`` of the task's record and ``text`` (its
    result file), written only while the task is Started or Waiting when ``only_live``."""
    job: JobRecord
    outcome: Outcome
    text: str | None = None
    only_live: bool = False


#: the record fields a job's resources come from
_RESOURCE_FIELDS = ("cpu", "gpu", "ram", "time_out_secs", "priority", "io_charge", "job_size", "executable")


def _resources(task: dict) -> Resources:
    return Resources(cpu=int(task.get("cpu") or 1), gpu=int(task.get("gpu") or 0),
                     ram=task.get("ram") or None, time_out_secs=time_out_secs(task) or None,
                     priority=task.get("priority"), io_charge=int(task.get("io_charge") or 0),
                     job_size=job_size(task))


class _DryIds:
    """Placeholder job ids for a dry run (printed with their meaning)."""

    def __init__(self) -> None:
        self.next = 900000001
        self.names: dict[str, str] = {}

    def new(self, label: str) -> str:
        jid = str(self.next)
        self.next += 1
        self.names[jid] = label
        return jid


def _fresh(job: JobRecord, done: tuple[int, bool] | None) -> tuple[int, bool] | None:
    """A fold's answer ``(ops applied, final)`` for ``job``, its final dropped when it brings no
    op to a job reopened after its final report (folded ops kept, ``folded`` 0: SLURM requeued
    it). That final is the earlier attempt's, read before the next attempt wrote; taken as the
    job's, it closed the job with the new attempt's report never folded (seen in CI: a requeued
    task Waiting for good while its job had COMPLETED)."""
    if done is not None and done[1] and job.folded_ops and not job.folded and done[0] == job.folded_ops:
        return done[0], False
    return done


def _element(st: JobState, job: JobRecord) -> JobState:
    """``st`` as the state of ``job`` alone: where SLURM's row stands for a range of pending
    elements (``123_[0-9999]``), the task's log line names its own element (``123_17``)."""
    if st.indices is None:
        return st
    return dataclasses.replace(st, job_id=job.backend_id, array_index=job.array_index, indices=None)


def _elapsed(since: str) -> float:
    return (_dt.datetime.now() - _dt.datetime.fromisoformat(since)).total_seconds()


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


class SlurmBackend:
    """sbatch through a transport (this machine, or a login node over SSH)."""

    name = BACKEND
    #: what it does with a plan ("nothing to submit")
    verb = "submit"

    def __init__(self, store, ledger: Ledger, transport: Transport | None = None,
                 profile: Profile | str | None = None, run_root: str | None = None,
                 python: str | None = None, map_path: Callable[[str], str] | None = None,
                 remote: str | None = None, settings: Settings | None = None) -> None:
        #: read here once (default ``settings.current()``); what jobs need goes into ``run.json``
        self.settings = settings = settings or current()
        self.store = store
        self.ledger = ledger
        self.transport = transport or LocalTransport()
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile, settings=settings)
        #: run folders must be on a file system the compute nodes see
        self.run_root = run_root or str(settings.path(settings.slurm.run_root, "runs"))
        #: the Python that runs the job side on the cluster
        self.python = python or settings.job_python
        #: workstation path -> cluster path (identity unless submitting over SSH)
        self.map_path = map_path or (lambda p: p)
        #: the --remote target this backend submits through (recorded with every job)
        self.remote = remote
        #: seconds a job may stay unknown to SLURM (or NODE_FAIL/PREEMPTED, not requeued) before it is lost
        self.lost_after = settings.slurm.lost_after_secs
        self._limits: ClusterLimits | None = None
        self._limits_ahead: Future | None = None
        self._watcher: JobWatcher | None = None
        self._binds: list[str] = []

    # ------------------------------------------------------------------ helpers
    @property
    def limits(self) -> ClusterLimits:
        """The cluster's limits, read once per backend (5 commands); the answer of
        ``read_limits_ahead`` when one was started (what it raised, raised here)."""
        if self._limits is None:
            ahead, self._limits_ahead = self._limits_ahead, None
            self._limits = ahead.result() if ahead is not None else ClusterLimits.read(self.transport)
        return self._limits

    def read_limits_ahead(self) -> None:
        """Start reading the limits on a thread: a backfill checks and reads its session paths
        meanwhile, instead of waiting for ``sacctmgr`` (0.2 s on the test cluster) afterwards.
        Nothing is decided on them before ``limits`` is asked for, so every check still comes
        before the first write. The thread only reads (daemon: a refused command does not wait
        for it)."""
        if self._limits is not None or self._limits_ahead is not None:
            return
        future: Future = Future()

        def read() -> None:
            try:
                future.set_result(ClusterLimits.read(self.transport))
            except BaseException as exc:  # handed to whoever asks for ``limits``
                future.set_exception(exc)

        self._limits_ahead = future
        threading.Thread(target=read, name="hpcpipe-limits", daemon=True).start()

    def partition_of(self, task: dict) -> str | None:
        """The partition a task's job goes to (its job_size, GPU, the profile, else the
        cluster's default); None when that needs the cluster and it cannot be asked."""
        from .render import resolve_partition

        spec = JobSpec(name="partition", command=["true"], resources=_resources(task))
        name = resolve_partition(spec, self.profile)
        if name:
            return name
        try:
            return self.limits.default_partition
        except BackendError:
            return None

    def _spec(self, run_id: str, run_dir: str, task: dict, command: list[str], log_name: str,
              dependencies=(), aftercorr=(), array=None, throttle=None, comment=None) -> JobSpec:
        return JobSpec(name=run_id, command=command, resources=_resources(task),
                       output=f"{run_dir}/logs/{log_name}", dependencies=list(dependencies),
                       workdir=run_dir,  # jobs start where the submitting directory cannot shadow packages
                       aftercorr=list(aftercorr), array=array, array_throttle=throttle,
                       env={"HPCPIPE_RUN_ID": run_id}, task_env=task["name"], binds=self._binds,
                       comment=comment,
                       signal=warn_signal(time_out_secs(task), self.settings.slurm.signal_secs))

    def _set_binds(self, plans: list[Plan], run_dir: str) -> None:
        """The folders a wrapper must bind for this submission (none without a wrapper)."""
        wraps = self.profile.wrapper or any(e.get("wrapper") for e in self.profile.task_env.values())
        self._binds = binds_for([self.map_path(str(p.session_path)) for p in plans if p.items], run_dir) \
            if wraps else []

    def _command(self, run_dir: str, chunk: str, task_name: str, index: int | None) -> list[str]:
        cmd = [self.python, "-m", "hpcpipe.jobside", "--run-dir", run_dir, "--chunk", chunk,
               "--task-name", task_name]
        return cmd + (["--array"] if index is None else ["--index", str(index)])

    def check(self, tasks: Iterable[dict], dry_run: bool = False) -> None:
        """Refuse, before anything is recorded, a task its partition cannot run (one check per
        distinct set of resources), and a cluster that does not answer, even with nothing to
        check. A dry run only warns when the cluster cannot be asked."""
        if not dry_run:
            _ = self.limits  # raises BackendError (one line) when the cluster cannot be asked
        distinct = {tuple(map(t.get, _RESOURCE_FIELDS)): t for t in tasks}
        self._check_or_warn([self._spec("check", "/check", t, ["true"], "x") for t in distinct.values()], dry_run)

    def _check_or_warn(self, specs: list[JobSpec], dry_run: bool) -> None:
        from .render import resolve_partition

        try:
            for spec in specs:
                self.limits.check(spec, resolve_partition(spec, self.profile), self.profile.io_license or None)
        except BackendError as exc:
            if not dry_run:
                raise
            _logger.warning("dry run: cluster limits not checked (%s)", exc)

    def _write_run(self, run_id: str, run_dir: str, chunks: dict[str, dict[int, Plan]],
                   extra: dict | None = None) -> None:
        self.transport.makedirs(f"{run_dir}/logs")
        self.transport.makedirs(f"{run_dir}/results")
        if getattr(self.store, "kind", "") == "alyx" and self.remote is None:  # jobs share this home
            from ..alyx.params import cache_for_jobs

            cache_for_jobs(self.settings)
        self.transport.write_file(f"{run_dir}/run.json",
                                  runfolder.run_json(run_id, getattr(self.store, "kind", "sqlite"),
                                                     self.profile.location, extra=extra,
                                                     settings=self.settings.for_job(self.remote is None)))
        for chunk, entries in chunks.items():
            self.transport.write_file(f"{run_dir}/sessions/{chunk}.json", runfolder.sessions_json(
                {i: self._entry(p) for i, p in entries.items()}))

    def _entry(self, plan: Plan) -> dict:
        if isinstance(plan, StampedPlan) and not plan.built and plan.origin is not None:
            # its records were never made: the chunk file reads them from the store's answer
            return runfolder.stamped_entry(plan.made, plan.index, self.map_path(str(plan.session_path)))
        # parents live in earlier runs: the job reads their outcome from their own result files
        elsewhere = {j.task_id: self.map_path(j.run_dir) if j.remote is None else j.run_dir
                     for item in plan.items for j in item.parents_live if j.run_dir}
        entry = runfolder.session_entry(plan.session, self.map_path(str(plan.session_path)), plan.deck,
                                        elsewhere=elsewhere)
        if plan.origin is not None:  # the chunk file then works out its task types once per template
            entry["origin"] = plan.origin
        return entry

    # ------------------------------------------------------------------ submitting
    def submit(self, plans: list[Plan], run_id: str, dry_run: bool = False,
               recorded: Callable[[SubmitReport], None] | None = None) -> SubmitReport:
        """One sbatch per task, afterok on parents submitted in this run or still live.
        Returns once they are queued (``recorded`` is for backends that run in the foreground)."""
        t0 = time.perf_counter()
        plans = [p for p in plans if p.items]
        self.check([item.task for p in plans for item in p.items], dry_run)
        self._set_binds(plans, f"{self.run_root}/{run_id}")
        report = self._submit_layout(run_id, layouts.per_task(plans), None, dry_run)
        report.seconds = time.perf_counter() - t0
        return report

    def backfill(self, plans: list[Plan], run_id: str, throttle: int | None = None, dry_run: bool = False,
                 progress: Callable[[int, int], None] | None = None, deferred: bool = False) -> SubmitReport:
        """One array per task type per chunk; aftercorr between arrays of a chunk (and onto the
        arrays of earlier runs that hold live parents).

        ``deferred``: the plans' new records carry provisional ids, made after queueing
        (``hpcpipe.recorder``); the run folder gets the ``records/`` folder their ids go to."""
        t0 = time.perf_counter()
        # sessions with nothing to run still have records to make (Held, or not asked for)
        unqueued = [p for p in plans if deferred and not p.items and
                    any(recorder.is_provisional(t["id"]) for t in p.deck)]
        plans = [p for p in plans if p]
        self._set_binds(plans, f"{self.run_root}/{run_id}")
        try:
            limits = self.limits
            size = max(1, min(limits.max_array_size, limits.max_job_count))
            budget = self._submit_budget(limits)
        except BackendError as exc:
            if not dry_run:
                raise
            _logger.warning("dry run: cluster limits not read (%s); chunks of 1000", exc)
            size, budget = 1000, None
        # every script is checked before the first sbatch (once per distinct set of resources;
        # plans stamped from one template once for all of them)
        sources = {id(p.origin) if p.origin is not None else id(p): (p.origin or p) for p in plans}
        self.check([item.task for plan in sources.values() for item in plan.items], dry_run)
        report = self._submit_layout(run_id, layouts.arrays(plans, size, budget), throttle, dry_run, progress,
                                     records=deferred, unqueued=unqueued)
        report.seconds = time.perf_counter() - t0
        return report

    def _submit_budget(self, limits: ClusterLimits) -> int | None:
        """How many more jobs (array elements count one each) the user may queue now."""
        if limits.max_submit_jobs is None:
            return None
        res = self.transport.run(["squeue", "--noheader", "--array", "--me", "--format=%i"], repeatable=True)
        queued = len(res.stdout.splitlines()) if res.returncode == 0 else 0
        return max(0, limits.max_submit_jobs - queued)

    def _submit_layout(self, run_id: str, layout: layouts.Layout, throttle: int | None, dry_run: bool,
                       progress: Callable[[int, int], None] | None = None, records: bool = False,
                       unqueued: list[Plan] = ()) -> SubmitReport:
        """Run folder, then every call recorded as an intent, then the sbatch calls in order.

        ``records``: the run folder gets ``records/`` (deferred Alyx records) and, for sessions
        with nothing to queue, an ``unqueued`` chunk no job reads: the recorder's to-do list."""
        run_dir = f"{self.run_root}/{run_id}"
        report = SubmitReport(run_id, run_dir, chunks=len(layout.chunks) if any(c.array for c in layout.calls) else 0,
                              not_submitted=layout.not_submitted)
        if records:
            self.transport.makedirs(f"{run_dir}/{recorder.RECORDS}")
        self._write_run(run_id, run_dir, dict(layout.chunks, **({"unqueued": dict(enumerate(unqueued))}
                                                                if unqueued else {})))
        if not dry_run:
            self._record_intents(run_id, run_dir, layout)
        dry = _DryIds() if dry_run else None
        job_of: dict[str, str] = {}
        chunks_done: set[str] = set()
        for n, call in enumerate(layout.calls):
            try:
                job_of[call.script] = self._sbatch(report, run_id, run_dir, call, job_of, throttle, dry)
            except BaseException as exc:
                # calls never tried reached SLURM for sure not; the one that failed is left to the
                # next refresh, which adopts it if SLURM has it after all
                never = [c.script for c in layout.calls[n + 1:]]
                self.ledger.set_state([(task_id, run_id, jobstate.UNSUBMITTED, f"not submitted: {exc}")
                                       for c in layout.calls[n + 1:] for task_id in c.columns()[1]])
                _logger.warning("%d sbatch call(s) of run %s not made: %s", len(never), run_id, exc)
                raise
            if dry is None:
                self.ledger.submitted(run_id, call.script, job_of[call.script])
            report.elements += len(call.members)
            report.arrays += int(call.array)
            if progress and call.chunk not in chunks_done and call.array:
                chunks_done.add(call.chunk)
                progress(len(chunks_done), report.chunks)
        if dry is not None:
            report.commands.extend(f"# {jid} = {label}" for jid, label in dry.names.items())
        return report

    def _record_intents(self, run_id: str, run_dir: str, layout: layouts.Layout) -> None:
        """Every call's members as intents (``SUBMITTING``, no job id), one statement per call
        and one transaction for all: what a row holds beyond the call's common values is its
        task, session and index."""
        arrays = []
        for call in layout.calls:
            indices, task_ids, sessions = call.columns()
            arrays.append(({"task_name": call.task_name, "run_id": run_id, "backend": BACKEND, "job_id": "",
                            "run_dir": run_dir, "state": jobstate.SUBMITTING, "remote": self.remote,
                            "chunk": call.chunk, "script": call.script},
                           task_ids, sessions, indices if call.array else [None] * len(indices)))
        self.ledger.record_arrays(arrays)

    def _sbatch(self, report: SubmitReport, run_id: str, run_dir: str, call: layouts.Call,
                job_of: dict[str, str], throttle: int | None, dry: _DryIds | None) -> str:
        first_index, first = call.members[0]
        after = [job_of[c] for c in call.after_calls]
        if call.array:
            spec = self._spec(run_id, run_dir, first.task, self._command(run_dir, call.chunk, call.task_name, None),
                              f"{call.task_name}.{call.chunk}.%A_%a.out", dependencies=call.afterok_ids,
                              aftercorr=after + call.aftercorr_ids, array=call.columns()[0],
                              throttle=throttle, comment=call.comment)
            label = f"{call.task_name} array of chunk {call.chunk}"
        else:
            spec = self._spec(run_id, run_dir, first.task,
                              self._command(run_dir, call.chunk, call.task_name, first_index),
                              f"{call.task_name}.{first_index}.%j.out", dependencies=after + call.afterok_ids,
                              comment=call.comment)
            label = f"{call.task_name} of session {first_index}"
        return self._sbatch_script(report, spec, f"{run_dir}/scripts/{call.script}.sh", dry, label)

    def _sbatch_script(self, report: SubmitReport, spec: JobSpec, path: str, dry: _DryIds | None,
                       label: str) -> str:
        """Render ``spec`` to ``path`` and sbatch it (a dry run writes it and counts a made-up id)."""
        script = job_script(spec, self.profile)
        report.jobs += 1
        if dry is not None:
            self.transport.write_file(path, script, mode=0o755)
            report.commands.append(format_command(sbatch_argv(path)))
            return dry.new(label)
        t0 = time.perf_counter()
        job_id = submit(self.transport, script, path)
        report.sbatch_seconds += time.perf_counter() - t0
        return job_id

    # ------------------------------------------------------------------ packs
    def pack(self, plans: list[Plan], run_id: str, shape: PackShape | None = None, dry_run: bool = False,
             emit_dir: str | None = None) -> SubmitReport:
        """Packed execution: a few allocations, each running its tasks as job steps (``slurm.pack``).

        ``emit_dir``: hand-submit mode. The run folder and one self-contained script go there,
        nothing is submitted; the tasks' ledger rows wait (``jobstate.EMITTED``) until the script runs and
        its engine writes its job id into the run folder, which ``refresh`` adopts.
        """
        t0 = time.perf_counter()
        shape = shape or PackShape()
        run_dir = f"{emit_dir or self.run_root}/{run_id}"
        report = SubmitReport(run_id, run_dir)
        plans = [p for p in plans if p.items]
        packs = build_packs(plans, shape, run_dir)
        if emit_dir and len(packs) > 1:
            raise BadInput(f"--emit writes one script for one allocation, but this plan needs {len(packs)} "
                           "(a --pack-split rule or --pack-allocations above 1): drop them")
        env = environments(self.profile, {it["name"] for pk in packs for it in pk.items})
        self._set_binds(plans, run_dir)
        binds = self._binds
        # hand-submit mode may be prepared where the cluster cannot be asked: then sized without its caps
        lenient = dry_run or bool(emit_dir)
        specs = [self._pack_spec(run_id, run_dir, pk, shape, binds, lenient) for pk in packs]
        self._check_or_warn(specs, lenient)
        self._write_run(run_id, run_dir, {"c0": dict(enumerate(plans))},
                        extra={RUN_KEY: [pk.name for pk in packs]})
        for pk in packs:
            self.transport.write_file(f"{run_dir}/packs/{pk.name}.json", pk.text(env, self.python))
        dry = _DryIds() if dry_run and not emit_dir else None

        def rows(pk: Pack, job_id: str, state: str) -> list[dict]:
            return [{"task_id": t["id"], "session": t.get("session"), "task_name": t["name"], "run_id": run_id,
                     "backend": BACKEND, "job_id": job_id, "run_dir": run_dir, "state": state,
                     "remote": self.remote, "script": f"pack.{pk.name}"} for t in pk.tasks]

        if not dry_run and not emit_dir:  # intents first, as for every sbatch call (adopted by comment)
            self.ledger.record([r for pk in packs for r in rows(pk, "", jobstate.SUBMITTING)])
        job_of: dict[str, str] = {}
        for pk, spec in zip(packs, specs):
            spec.after_any = sorted(pk.after_jobs) + [job_of[name] for name in sorted(pk.after)]
            spec.comment = layouts.COMMENT_PREFIX + f"pack.{pk.name}"
            if emit_dir:
                path = f"{emit_dir}/{run_id}.sbatch"
                self.transport.write_file(path, job_script(spec, self.profile), mode=0o755)
                report.commands.append(hand_command(path))
                job_of[pk.name] = f"emitted:{pk.name}"
                if not dry_run:
                    self.ledger.record(rows(pk, job_of[pk.name], jobstate.EMITTED))
            else:
                job_of[pk.name] = self._sbatch_script(report, spec, f"{run_dir}/scripts/pack.{pk.name}.sh", dry,
                                                      f"pack {pk.name}")
                if dry is None:
                    self.ledger.submitted(run_id, f"pack.{pk.name}", job_of[pk.name])
            report.elements += len(pk.items)
            if dry_run:
                report.commands.extend(self._step_lines(pk, env, run_dir, binds))
        if dry is not None:
            report.commands.extend(f"# {jid} = {label}" for jid, label in dry.names.items())
        report.seconds = time.perf_counter() - t0
        return report

    def _pack_spec(self, run_id: str, run_dir: str, pk: Pack, shape: PackShape, binds: list[str],
                   lenient: bool) -> JobSpec:
        from .render import resolve_partition

        sizes = {job_size(t) for t in pk.tasks}
        probe = JobSpec(name=run_id, command=["true"], resources=Resources(
            gpu=max(int(t.get("gpu") or 0) for t in pk.tasks), job_size=sizes.pop() if len(sizes) == 1 else None))
        partition = resolve_partition(probe, self.profile)
        try:
            limits = self.limits
        except BackendError:
            if not lenient:
                raise
            limits = None
        part = limits.partitions.get(partition or limits.default_partition or "") if limits else None
        got = pack_size(pk.tasks, shape, limits, partition, part.max_time_min if part else None)
        return JobSpec(name=run_id, command=[self.python, "-m", "hpcpipe.engines.pack", "--run-dir", run_dir,
                                             "--pack", pk.name],
                       resources=Resources(cpu=got["cpu"], gpu=got["gpu"], ram=got["ram"],
                                           time_out_secs=got["time_out_secs"]),
                       output=f"{run_dir}/logs/pack.{pk.name}.%j.out", env={"HPCPIPE_RUN_ID": run_id},
                       partition=partition, nodes=got["nodes"], wrapped=False, binds=binds)

    def _step_lines(self, pk: Pack, env: dict, run_dir: str, binds: list[str]) -> list[str]:
        """For a dry run: the exact job step of the first task of each type in the pack."""
        from .submit import format_command

        seen, lines = set(), []
        for item, task in zip(pk.items, pk.tasks):
            if item["name"] in seen:
                continue
            seen.add(item["name"])
            need = {"cpu": int(task.get("cpu") or 1), "ram": float(task.get("ram") or 1), "gpu": int(task.get("gpu") or 0)}
            argv = step_argv(item, env.get(item["name"], {}), self.python, run_dir,
                             f"{run_dir}/logs/{item['name']}.{item['index']}.log", need,
                             ",".join(binds + ["$HPCPIPE_SCRATCH"]) if binds else "", True, True, True)
            lines.append(f"# step of pack {pk.name}: {format_command(argv)}")
        return lines

    # ------------------------------------------------------------------ after submission
    def watcher(self) -> JobWatcher:
        """This backend's one watcher, kept for every refresh it makes (``status --watch`` polls
        through one backend per cluster): final states are not asked again, and accounting
        that did not answer is asked again only after the watcher's back-off."""
        if self._watcher is None:
            self._watcher = JobWatcher(self.transport)
        return self._watcher

    def refresh(self) -> RefreshReport:
        """Fold job results into the store, ask SLURM about live jobs (one batched query), and
        close out jobs SLURM ended without a result: the sweep.

        Intents (recorded before sbatch) are resolved only while this process holds the ledger's
        lock: then no submission is under way on this machine, and squeue's answer is the truth.
        A query SLURM cannot answer changes nothing (the note says why).
        """
        report = RefreshReport()
        ledger, remote = self.ledger, self.remote
        self._adopt(ledger.emitted(BACKEND, remote))
        present = self._results_present(ledger.unfolded_runs(BACKEND, remote))
        self._adopt_records(ledger.provisional(BACKEND, remote, recorder.PREFIX), present)
        names = {d: [n[:-5] for n in files if n.endswith(".json")] for d, files in present.items()}
        folded_records = [j for d, tids in names.items() if tids for j in ledger.unfolded_in(BACKEND, remote, d, tids)]
        folded = self._fold(folded_records)
        report.folded = len(folded)
        intents = ledger.intents(BACKEND, remote)
        watcher = self.watcher()
        asked = watcher.queries
        watched, arrays = ledger.watched(BACKEND, remote)
        watcher.retain(job_id for job_id, _, _ in watched)  # a kept watcher: nothing the ledger has closed is asked
        for job_id, run_id, indices in watched:
            watcher.watch(job_id, indices=indices, name=run_id)
        try:
            states = watcher.poll() if watched else {}
            if intents and ledger.locked_here:
                self._resolve_intents(intents, watcher, folded, report)
        except BackendError as exc:
            report.notes.append(f"SLURM did not answer ({exc}); job states not refreshed")
            report.queries = watcher.queries - asked
            return report
        if watcher.fallback:
            report.notes.append(watcher.fallback)
        # only jobs with news are loaded whole and handled: an array SLURM shows in one state that
        # the ledger already has for all its rows is not looked at per element, and a poll of a
        # backfill's 60,000 pending elements that learns nothing compares a few tuples, writes nothing
        groups: dict[str, list] = defaultdict(list)
        for job_id, state, reason, quiet in arrays:
            groups[job_id].append((state, reason, quiet))
        folded_jobs = {j.job_id for j in folded_records}
        same = set()
        for job_id, rows in groups.items():
            one = watcher.uniform(job_id)
            if (one is None or len(rows) != 1 or not rows[0][2] or one.state in jobstate.DOUBTFUL
                    or job_id in folded_jobs):
                continue
            if rows[0][:2] == (one.state, one.reason or None):
                same.add(job_id)
            elif not one.final and pending(one, None, False, True) is None:
                # the whole array moved to one new state that needs no task record (a backfill's
                # first poll: pending with a reason now): one statement, not 10,000 records
                ledger.set_array_state(BACKEND, remote, job_id, rows[0][:2], (one.state, one.reason or None))
                same.add(job_id)
        report.checked = sum(map(watcher.size, same))
        news = []
        rest = [] if same.issuperset(job_id for job_id, _, _ in watched) else ledger.live_states(BACKEND, remote, skip=same)
        for rowid, task_id, run_id, backend_id, state, reason, doubt_since, was_folded in rest:
            st = states.get(backend_id)
            if st is None:
                continue
            report.states[task_id] = st
            report.checked += 1
            if (st.state != state or (st.reason or None) != reason or doubt_since or was_folded
                    or st.state in jobstate.DOUBTFUL or (task_id, run_id) in folded):
                news.append(rowid)
        self._handle(ledger.by_rowid(news), states, folded, watcher, report)
        report.queries = watcher.queries - asked
        return report

    def _handle(self, jobs: list[JobRecord], states: dict[str, JobState], folded: dict, watcher: JobWatcher,
                report: RefreshReport) -> None:
        """What SLURM's news means for these jobs: states written, the sweep of jobs that ended
        without a result, Waiting for a requeue, Held for a never-satisfied dependency, lost.

        The task records go in one store batch and the ledger's rows after it, each kind in one
        statement: a cancelled backfill is 60,000 jobs to close in one poll (40 s as one
        transaction per record). Should the process die between the two, the next poll closes
        the same jobs again, and finds their tasks recorded already (no second line)."""
        if not jobs:  # the usual poll: no store transaction (it would take the store's write lock)
            return
        # "unknown" only counts towards "lost" when the answer was complete (accounting asked or absent)
        complete = watcher.use_sacct is False or not watcher.fallback
        updates, doubts, reopened, lost = [], [], [], []
        closing: list[tuple[JobRecord, int, Outcome]] = []
        records: list[_Record] = []
        with self.store.batch():
            for j in jobs:
                st = states[j.backend_id]
                applied, final = folded.get((j.task_id, j.run_id), (j.folded_ops, False))
                if st.state in jobstate.DOUBTFUL:
                    since = j.doubt_since or _now()
                    if j.doubt_since is None:
                        doubts.append((j.task_id, j.run_id, since))
                    if final:  # it ended and reported; SLURM has merely forgotten it since
                        updates.append((j, jobstate.COMPLETED, "result folded; SLURM forgot the job"))
                    elif complete and _elapsed(since) >= self.lost_after:
                        report.lost += 1
                        lost.append((j, self._lost_reason(st, since)))
                        closing.append((j, applied, self._lost_outcome(j, _element(st, j), since)))
                    else:
                        updates.append((j, st.state, st.reason or None))
                        records += self._pending(j, st, applied)
                    continue
                if j.doubt_since:
                    doubts.append((j.task_id, j.run_id, None))
                # pending again after a final report: SLURM requeued it, its next attempt reports (a
                # requeued pack does not run again what had ended: engines/pack.py)
                waiting = st.state == jobstate.PENDING or st.state.startswith("REQUEUE")  # sacct: REQUEUED
                reported = waiting and bool(j.folded or final) and not self._packed(j.run_dir)
                if reported:
                    reopened.append((j.task_id, j.run_id, applied, False))
                updates.append((j, st.state, st.reason or None))
                if st.final and not final:
                    closing.append((j, applied, self._swept_outcome(j, _element(st, j))))
                elif not st.final and st.state != jobstate.RUNNING:
                    records += self._pending(j, st, applied, reported)
            closes, closed = self._close(closing)
            report.swept += self._record(records + closes)
        # only what changed is written: a refresh that learns nothing leaves the ledger as it was
        self.ledger.update(states=[(j.task_id, j.run_id, jobstate.LOST, why) for j, why in lost]
                           + [(j.task_id, j.run_id, state, reason) for j, state, reason in updates
                              if (state, reason) != (j.state, j.reason)],
                           doubts=doubts, folded=reopened + [(j.task_id, j.run_id, ops, True) for j, ops in closed])

    def _fold(self, jobs: list[JobRecord]) -> dict[tuple[str, str], tuple[int, bool]]:
        """Fold the result files of ``jobs``; ``{(task id, run id): (ops applied, final)}``."""
        out = {}
        for j in jobs:
            text = self.transport.read_file(str(runfolder.result_path(j.run_dir, j.task_id)))
            done = _fresh(j, runfolder.fold(self.store, [(j.task_id, text, j.folded_ops)]).get(j.task_id))
            if done is not None:
                out[(j.task_id, j.run_id)] = done
        self.ledger.set_folded([(t, run, *done) for (t, run), done in out.items()])
        return out

    def find_runs(self, watcher: JobWatcher, run_ids: Iterable[str]) -> list[JobState]:
        """Every job SLURM's controller has for these runs (this user's, any state), in one query."""
        return watcher.find(sorted(set(run_ids)))

    def _resolve_intents(self, intents: list[JobRecord], watcher: JobWatcher,
                         folded: dict[tuple[str, str], tuple[int, bool]], report: RefreshReport) -> None:
        """Intents of submitters that stopped: adopt what SLURM has, the rest was never submitted."""
        found: dict[tuple[str, str], str] = {}
        for st in self.find_runs(watcher, {j.run_id for j in intents}):
            if st.comment.startswith(layouts.COMMENT_PREFIX):
                found[(st.name, st.comment[len(layouts.COMMENT_PREFIX):])] = st.array_job_id
        calls = {(j.run_id, j.script) for j in intents}
        for run_id, script in sorted(calls, key=lambda c: (c[0], c[1] or "")):
            if (run_id, script) in found:
                self.ledger.submitted(run_id, script, found[(run_id, script)])
                report.adopted += 1
        gone = [j for j in intents if (j.run_id, j.script) not in found]
        updates = []
        for j in gone:
            done = folded.get((j.task_id, j.run_id))
            if done and done[1]:  # it ran and reported long ago: SLURM no longer lists it
                updates.append((j.task_id, j.run_id, jobstate.COMPLETED, "result folded; SLURM forgot the job"))
            else:
                updates.append((j.task_id, j.run_id, jobstate.UNSUBMITTED,
                                "recorded before sbatch, but SLURM never got it (the submitter stopped)"))
                report.unsubmitted += 1
        self.ledger.set_state(updates)

    def _adopt_records(self, jobs: list, present: dict[str, set[str]]) -> None:
        """Jobs of a backfill whose records are made after queueing (``hpcpipe.recorder``) take
        their store ids as soon as the recorder or the job wrote them; a job that ended with its
        reports kept under its provisional id gets its record made now, and its result file
        follows. The rows are renamed in the ledger and in ``jobs``."""
        pending = [j for j in jobs if recorder.is_provisional(j.task_id)]
        by_run: dict[str, list] = defaultdict(list)
        for j in pending:
            by_run[j.run_dir].append(j)
        renames = []
        for run_dir, rows in by_run.items():
            known = recorder.known_ids(run_dir, [j.task_id for j in rows])
            reported = [j.task_id for j in rows if j.task_id not in known and f"{j.task_id}.json" in present[run_dir]]
            if reported:
                known.update(self._record_now(run_dir, reported))
                for tid in reported:
                    if tid in known and recorder.adopt_result(run_dir, tid, known):
                        # the file moved to its store id: this poll's listing follows it, so the
                        # result is folded now, not one poll later
                        present[run_dir].discard(f"{tid}.json")
                        present[run_dir].add(f"{known[tid]}.json")
            for j in rows:
                if j.task_id in known:
                    renames.append((j.task_id, j.run_id, known[j.task_id]))
                    j.task_id = known[j.task_id]
        if renames:
            self.ledger.rename_tasks(renames)

    def _record_now(self, run_dir: str, ids: list[str]) -> dict[str, str]:
        """Make these tasks' records (and their ancestors') now, unpaced: the sweep needs them."""
        recorder.Recorder(self.store, run_dir, rate=0, settings=self.settings).run(only=set(ids))
        return recorder.known_ids(run_dir, ids)

    def _recorded(self, job) -> None:
        """A job the sweep closes must have a record to write to."""
        if recorder.is_provisional(job.task_id):
            old = job.task_id
            known = self._record_now(job.run_dir, [old])
            if old not in known:
                raise BackendError(f"task {job.task_name} of run {job.run_id} has no record on the store yet "
                                   "and none could be made now; run `hpcpipe sync` again later")
            self.ledger.rename_tasks([(old, job.run_id, known[old])])
            job.task_id = known[old]

    def _adopt(self, emitted: list) -> bool:
        """Hand-submitted scripts: a pack engine that started wrote its SLURM job id into the run
        folder (``packs/<name>.job``); its tasks' ledger rows take that id. True if any did."""
        adopted = False
        for run_id, run_dir, placeholder in sorted({(j.run_id, j.run_dir, j.job_id) for j in emitted}):
            name = placeholder.partition(":")[2]
            text = self.transport.read_file(job_path(run_dir, name))
            if text and text.strip().isdigit():
                self.ledger.adopt(run_id, placeholder, text.strip())
                adopted = True
        return adopted

    def _results_present(self, run_dirs: Iterable[str]) -> dict[str, set[str]]:
        """The result files each run folder holds now, one directory listing per run: a poll
        opens only the results that exist (a backfill's 60,000 pending tasks have none yet)."""
        return {d: set(self.transport.list_dir(f"{d}/results")) for d in run_dirs}

    def _withdraw(self, emitted: list[JobRecord]) -> dict[tuple[str, str], str]:
        """Cancel tasks of emitted scripts: listed in their pack's ``withdrawn`` file, which the
        engine reads when the script runs (it runs none of them, and refuses to run at all when
        that is every task of its pack). Then the pack's job file is read: an engine that started
        since the last refresh is a SLURM job to scancel. The list is written before the job
        file is read, and the engine writes its job file before reading the list, so that one of
        the two always sees the other. Returns ``{(run dir, placeholder): SLURM job id}`` of
        those that had started."""
        by_pack: dict[tuple[str, str], set[str]] = defaultdict(set)
        for j in emitted:
            by_pack[(j.run_dir, j.job_id)].add(j.task_id)
        started = {}
        for (run_dir, placeholder), ids in sorted(by_pack.items()):
            name = placeholder.partition(":")[2]
            ids |= withdrawn(self.transport.read_file, run_dir, name)
            self.transport.write_file(withdrawn_path(run_dir, name), json.dumps({"tasks": sorted(ids), "at": _now()}))
            job = (self.transport.read_file(job_path(run_dir, name)) or "").strip()
            if job.isdigit():
                started[(run_dir, placeholder)] = job
            else:
                _logger.warning("%s was never submitted: %d task(s) withdrawn from it; submitted now, it "
                                "does not run them", f"{run_dir}.sbatch", len(ids))
        return started

    def _packed(self, run_dir: str) -> bool:
        """Whether a run's tasks ran in packs (its ``run.json`` says so)."""
        cache = self.__dict__.setdefault("_packed_runs", {})
        if run_dir not in cache:
            data = runfolder.read_result(self.transport.read_file(f"{run_dir}/run.json")) or {}
            cache[run_dir] = bool(data.get(RUN_KEY))
        return cache[run_dir]

    def _close(self, closing: list[tuple[JobRecord, int, Outcome]]) -> tuple[list[_Record], list[tuple[JobRecord, int]]]:
        """Close jobs that ended without a final result: fold once more what each wrote meanwhile,
        else its ``outcome`` is to be recorded. Result files are listed once per run folder,
        after SLURM's answer, and only those there are read (a cancelled backfill's 60,000 have
        none). Returns the records to make and each job's ops folded (the ledger's rows)."""
        present = self._results_present({job.run_dir for job, _, _ in closing})
        records, folds = [], []
        for job, applied, outcome in closing:
            text = None
            if f"{job.task_id}.json" in present[job.run_dir]:
                text = self.transport.read_file(str(runfolder.result_path(job.run_dir, job.task_id)))
            done = _fresh(job, runfolder.fold(self.store, [(job.task_id, text, applied)]).get(job.task_id))
            folds.append((job, done[0] if done else applied))
            if not (done and done[1]):
                records.append(_Record(job, outcome, text, only_live=True))
        return records, folds

    def _record(self, records: list[_Record]) -> int:
        """Write what ``records`` find: their tasks read in one query, their log lines written in
        one bulk call. Returns how many found something to record."""
        for r in records:
            self._recorded(r.job)
        tasks = self.store.get_tasks([r.job.task_id for r in records], fields=("id", "status"))
        lines, found_any = [], 0
        for r in records:
            task = tasks[r.job.task_id]
            found = r.outcome(task, r.text)
            if found is None:
                continue
            found_any += 1
            if not r.only_live or task["status"] in (STARTED, WAITING):
                lines.append((task["id"], found[1], {"status": found[0]}))
        self.store.append_logs(lines)
        return found_any

    def _swept_outcome(self, job: JobRecord, st: JobState) -> Outcome:
        """For a job SLURM ended without a final result: why, so nothing stays Started."""
        def outcome(task: dict, text: str | None) -> tuple[str, str]:
            if self._packed(job.run_dir) and not (runfolder.read_result(text) or {}).get("ops"):
                # its allocation ended before its turn: nothing ran, nothing is wrong with the task
                return WAITING, reasons.line(reasons.CANCELLED, (
                    f"pack allocation SLURM job {st.job_id} ended {st.state} before this task ran; "
                    "Waiting for the next submission"))
            return swept(st, task["status"], text, self.transport.read_file)

        return outcome

    @staticmethod
    def _lost_reason(st: JobState, since: str) -> str:
        """The ledger's reason for a job unknown to SLURM (or NODE_FAIL/PREEMPTED and never
        requeued) for the grace period."""
        if st.state == jobstate.UNKNOWN:
            return f"unknown to squeue and sacct since {since}"
        return f"{st.state} since {since} and not requeued"

    def _lost_outcome(self, job: JobRecord, st: JobState, since: str) -> Outcome:
        """For a lost job: what its task records."""
        if st.state == jobstate.UNKNOWN:
            return lambda task, text: lost(job.backend_id, since, self.lost_after, task["status"], text)
        return lambda task, text: swept(st, task["status"], text, self.transport.read_file)

    def _pending(self, job: JobRecord, st: JobState, applied: int, reported: bool = False) -> list[_Record]:
        """A pending job whose task may need a record: requeued (Waiting) or never startable
        (Held). ``reported``: its job side had reported a final outcome before SLURM requeued it."""
        ran = bool(applied) or job.state not in (jobstate.PENDING, jobstate.SUBMITTING)
        if pending(st, None, reported, ran) is None:
            return []
        st = _element(st, job)
        return [_Record(job, lambda task, text: pending(st, task["status"], reported))]

    # ------------------------------------------------------------------ cancelling
    def cancel(self, jobs: list[JobRecord], runs: Iterable[str] = ()) -> int:
        """scancel ``jobs`` and every job SLURM has for ``runs`` (also those the ledger never
        recorded); their tasks, if Waiting or Started, become Errored. Returns jobs cancelled."""
        # intents have no SLURM job to scancel; emitted scripts are withdrawn (and may have started)
        emitted = [j for j in jobs if j.state == jobstate.EMITTED]
        started = self._withdraw(emitted)
        ids = {j.backend_id for j in jobs if not j.intent and j.state != jobstate.EMITTED} | set(started.values())
        runs = set(runs)
        unrecorded: set[str] = set()
        if runs:
            found = {st.array_job_id for st in self.find_runs(self.watcher(), runs) if not st.final}
            # jobs the ledger knows already ended (or were cancelled by a concurrent cancel whose
            # jobs squeue still shows completing) are not unrecorded ones
            known = {j.job_id for run in runs for j in self.ledger.run(run) if j.job_id}
            unrecorded = found - ids - {j.job_id for j in jobs} - known
        if ids | unrecorded:
            cancel(self.transport, sorted(ids | unrecorded))
        tasks = self.store.get_tasks([j.task_id for j in jobs], fields=("id", "status"))  # one read, one write
        lines = []
        for j in jobs:
            if tasks[j.task_id]["status"] in (WAITING, STARTED):
                job = started.get((j.run_dir, j.job_id), j.backend_id)
                note = (f"cancelled by hpcpipe cancel before its emitted script ran (nothing ran; "
                        f"{j.run_dir}.sbatch, if submitted, does not run it)") \
                    if j.state == jobstate.EMITTED and job == j.job_id else f"cancelled by hpcpipe cancel (SLURM job {job})"
                lines.append((j.task_id, note, {"status": "Errored"}))
        self.store.append_logs(lines)
        self.ledger.update(states=[(j.task_id, j.run_id, jobstate.CANCELLED, "hpcpipe cancel") for j in jobs],
                           folded=[(j.task_id, j.run_id, j.folded_ops, True) for j in jobs])
        return len(jobs) + len(unrecorded)
