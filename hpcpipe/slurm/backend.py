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

Every job of a run carries the run id as its job name, so one ``sacct --name`` (or one query
by ids) covers the run. What each job must know sits in the run folder (``jobside.runfolder``),
written before the first sbatch.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .. import config, recorder
from ..errors import BackendError, BadInput
from ..jobside import reasons, runfolder
from ..jobside.outcome import pending, swept, warn_signal
from ..ledger import Ledger
from ..pipeline import job_size, time_out_secs
from ..plan import Plan, PlanItem
from ..status import STARTED, WAITING
from .limits import ClusterLimits
from .pack import EMITTED, RUN_KEY, Pack, PackShape, binds_for, build_packs, environments, hand_command, step_argv
from .pack import size as pack_size
from .profiles import Profile, load_profile
from .render import JobSpec, Resources, job_script
from .status import JobWatcher
from .submit import format_command, sbatch_argv, submit
from .transport import LocalTransport, Transport

_logger = logging.getLogger(__name__)
BACKEND = "slurm"


@dataclass
class SubmitReport:
    """What a submission did (printed as the end-of-run summary)."""

    run_id: str
    run_dir: str
    jobs: int = 0          # sbatch calls
    arrays: int = 0
    elements: int = 0      # tasks submitted (array elements or single jobs)
    chunks: int = 0
    seconds: float = 0.0
    sbatch_seconds: float = 0.0
    commands: list[str] = field(default_factory=list)
    not_submitted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        client = self.seconds - self.sbatch_seconds
        text = (f"run {self.run_id}: {self.elements} task(s) in {self.jobs} sbatch call(s)"
                + (f", {self.arrays} array(s) over {self.chunks} chunk(s)" if self.arrays else "")
                + f" in {self.seconds:.2f} s (sbatch {self.sbatch_seconds:.2f} s, client {client:.2f} s)")
        if self.not_submitted:
            text += f"\n{len(self.not_submitted)} session(s) not submitted: {self.not_submitted[0]}..."
        return text


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


class SlurmBackend:
    """sbatch through a transport (this machine, or a login node over SSH)."""

    name = BACKEND

    def __init__(self, store, ledger: Ledger, transport: Transport | None = None,
                 profile: Profile | str | None = None, run_root: str | None = None,
                 python: str | None = None, map_path: Callable[[str], str] | None = None,
                 remote: str | None = None) -> None:
        self.store = store
        self.ledger = ledger
        self.transport = transport or LocalTransport()
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        #: run folders must be on a file system the compute nodes see
        self.run_root = run_root or config.get("slurm", "run_root", str(config.home() / "runs"))
        #: the Python that runs the job side on the cluster
        self.python = python or config.get("slurm", "python", sys.executable)
        #: workstation path -> cluster path (identity unless submitting over SSH)
        self.map_path = map_path or (lambda p: p)
        #: the --remote target this backend submits through (recorded with every job)
        self.remote = remote
        self._limits: ClusterLimits | None = None
        self._binds: list[str] = []

    # ------------------------------------------------------------------ helpers
    @property
    def limits(self) -> ClusterLimits:
        """The cluster's limits, read once per backend (5 commands)."""
        if self._limits is None:
            self._limits = ClusterLimits.read(self.transport)
        return self._limits

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
              dependencies=(), aftercorr=(), array=None, throttle=None) -> JobSpec:
        return JobSpec(name=run_id, command=command, resources=_resources(task),
                       output=f"{run_dir}/logs/{log_name}", dependencies=list(dependencies),
                       workdir=run_dir,  # jobs start where the submitting directory cannot shadow packages
                       aftercorr=list(aftercorr), array=array, array_throttle=throttle,
                       env={"HPCPIPE_RUN_ID": run_id}, task_env=task["name"], binds=self._binds,
                       signal=warn_signal(time_out_secs(task), config.get("slurm", "signal_secs", 60)))

    def _set_binds(self, plans: list[Plan], run_dir: str) -> None:
        """The folders a wrapper must bind for this submission (none without a wrapper)."""
        wraps = self.profile.wrapper or any(e.get("wrapper") for e in self.profile.task_env.values())
        self._binds = binds_for([self.map_path(str(p.session_path)) for p in plans if p.items], run_dir) \
            if wraps else []

    def _command(self, run_dir: str, chunk: str, task_name: str, index: int | None) -> list[str]:
        cmd = [self.python, "-m", "hpcpipe.jobside", "--run-dir", run_dir, "--chunk", chunk,
               "--task-name", task_name]
        return cmd + (["--array"] if index is None else ["--index", str(index)])

    def check_limits(self, specs: Iterable[JobSpec]) -> None:
        """Refuse, before the first sbatch, a job its partition cannot run."""
        from .render import resolve_partition

        for spec in specs:
            self.limits.check(spec, resolve_partition(spec, self.profile), self.profile.io_license or None)

    def _write_run(self, run_id: str, run_dir: str, chunks: dict[str, dict[int, dict]],
                   extra: dict | None = None) -> None:
        self.transport.makedirs(f"{run_dir}/logs")
        self.transport.makedirs(f"{run_dir}/results")
        self.transport.write_file(f"{run_dir}/run.json",
                                  runfolder.run_json(run_id, getattr(self.store, "kind", "sqlite"),
                                                     self.profile.location, extra=extra))
        for chunk, entries in chunks.items():
            self.transport.write_file(f"{run_dir}/sessions/{chunk}.json", runfolder.sessions_json(entries))

    def _entry(self, plan: Plan) -> dict:
        entry = runfolder.session_entry(plan.session, self.map_path(str(plan.session_path)), plan.deck)
        if plan.origin is not None:  # the chunk file then works out its task types once per template
            entry["origin"] = plan.origin
        return entry

    def _sbatch(self, report: SubmitReport, spec: JobSpec, script_name: str, dry: _DryIds | None,
                label: str) -> str:
        script = job_script(spec, self.profile)
        path = f"{report.run_dir}/scripts/{script_name}.sh"
        report.jobs += 1
        if dry is not None:
            self.transport.write_file(path, script, mode=0o755)
            report.commands.append(format_command(sbatch_argv(path)))
            return dry.new(label)
        t0 = time.perf_counter()
        job_id = submit(self.transport, script, path)
        report.sbatch_seconds += time.perf_counter() - t0
        return job_id

    # ------------------------------------------------------------------ one job per task
    def submit(self, plans: list[Plan], run_id: str, dry_run: bool = False) -> SubmitReport:
        """One sbatch per task, afterok on parents submitted in this run or still live."""
        t0 = time.perf_counter()
        run_dir = f"{self.run_root}/{run_id}"
        report = SubmitReport(run_id, run_dir)
        plans = [p for p in plans if p.items]
        self._set_binds(plans, run_dir)
        entries = {i: self._entry(p) for i, p in enumerate(plans)}
        specs: list[tuple[int, PlanItem, JobSpec]] = []
        for i, plan in enumerate(plans):
            for item in plan.items:
                cmd = self._command(run_dir, "c0", item.task["name"], i)
                specs.append((i, item, self._spec(run_id, run_dir, item.task, cmd,
                                                  f"{item.task['name']}.{i}.%j.out")))
        self._check_or_warn([s for _, _, s in specs], dry_run)
        self._write_run(run_id, run_dir, {"c0": entries})
        dry = _DryIds() if dry_run else None
        job_of: dict[str, str] = {}
        records = []
        for i, item, spec in specs:
            spec.dependencies = [job_of[p] for p in item.parents_in_plan] + [j.backend_id for j in item.parents_live]
            job_id = self._sbatch(report, spec, f"{item.task['name']}.{i}", dry,
                                  f"{item.task['name']} of session {i}")
            job_of[item.id] = job_id
            report.elements += 1
            records.append({"task_id": item.id, "session": item.task.get("session"),
                            "task_name": item.task["name"], "run_id": run_id, "backend": BACKEND,
                            "job_id": job_id, "run_dir": run_dir, "state": "PENDING",
                            "remote": self.remote})
            if dry is None:
                self.ledger.record(records[-1:])  # at once: a crash later must not forget this job
        if dry is not None:
            report.commands.extend(f"# {jid} = {label}" for jid, label in dry.names.items())
        report.seconds = time.perf_counter() - t0
        return report

    def _check_or_warn(self, specs: list[JobSpec], dry_run: bool) -> None:
        try:
            self.check_limits(specs)
        except BackendError as exc:
            if not dry_run:
                raise
            _logger.warning("dry run: cluster limits not checked (%s)", exc)

    # ------------------------------------------------------------------ arrays
    def backfill(self, plans: list[Plan], run_id: str, throttle: int | None = None, dry_run: bool = False,
                 progress: Callable[[int, int], None] | None = None, deferred: bool = False) -> SubmitReport:
        """One array per task type per chunk; aftercorr between arrays of a chunk.

        ``deferred``: the plans' new records carry provisional ids, made after queueing
        (``hpcpipe.recorder``); the run folder gets the ``records/`` folder their ids go to."""
        t0 = time.perf_counter()
        run_dir = f"{self.run_root}/{run_id}"
        report = SubmitReport(run_id, run_dir)
        # sessions with nothing to run still have records to make (Held, or not asked for)
        unqueued = [p for p in plans if deferred and not p.items and
                    any(recorder.is_provisional(t["id"]) for t in p.deck)]
        plans = [p for p in plans if p.items]
        self._set_binds(plans, run_dir)
        try:
            limits = self.limits
            size = max(1, min(limits.max_array_size, limits.max_job_count))
            budget = self._submit_budget(limits)
        except BackendError as exc:
            if not dry_run:
                raise
            _logger.warning("dry run: cluster limits not read (%s); chunks of 1000", exc)
            size, budget = 1000, None
        chunks = self._chunks(plans, size, budget, report)
        report.chunks = len(chunks)
        # every script is checked before the first sbatch (once per distinct set of resources;
        # plans stamped from one template once for all of them)
        sources = {id(p.origin) if p.origin is not None else id(p): (p.origin or p) for chunk in chunks for p in chunk}
        distinct = {tuple(map(item.task.get, _RESOURCE_FIELDS)): item.task
                    for plan in sources.values() for item in plan.items}
        self._check_or_warn([self._spec(run_id, run_dir, task, ["true"], "x") for task in distinct.values()],
                            dry_run)
        files = {f"c{k}": {i: self._entry(p) for i, p in enumerate(chunk)} for k, chunk in enumerate(chunks)}
        if deferred:
            self.transport.makedirs(f"{run_dir}/{recorder.RECORDS}")
            if unqueued:  # no job reads it: the recorder's to-do list only
                files["unqueued"] = {i: self._entry(p) for i, p in enumerate(unqueued)}
        self._write_run(run_id, run_dir, files)
        dry = _DryIds() if dry_run else None
        for k, chunk in enumerate(chunks):
            self._submit_chunk(report, run_id, run_dir, f"c{k}", chunk, throttle, dry)
            if progress:
                progress(k + 1, len(chunks))
        if dry is not None:
            report.commands.extend(f"# {jid} = {label}" for jid, label in dry.names.items())
        report.seconds = time.perf_counter() - t0
        return report

    def _submit_budget(self, limits: ClusterLimits) -> int | None:
        """How many more jobs (array elements count one each) the user may queue now."""
        if limits.max_submit_jobs is None:
            return None
        res = self.transport.run(["squeue", "--noheader", "--array", "--me", "--format=%i"])
        queued = len(res.stdout.splitlines()) if res.returncode == 0 else 0
        return max(0, limits.max_submit_jobs - queued)

    @staticmethod
    def _chunks(plans: list[Plan], size: int, budget: int | None, report: SubmitReport) -> list[list[Plan]]:
        chunks: list[list[Plan]] = []
        used = 0
        for plan in plans:
            n = len(plan.items)
            if budget is not None and used + n > budget:
                report.not_submitted.append(f"{plan.session_path} (MaxSubmitJobs reached; run backfill again later)")
                continue
            used += n
            if not chunks or len(chunks[-1]) >= size:
                chunks.append([])
            chunks[-1].append(plan)
        return chunks

    def _submit_chunk(self, report: SubmitReport, run_id: str, run_dir: str, chunk: str,
                      plans: list[Plan], throttle: int | None, dry: _DryIds | None) -> None:
        stamped: dict[int, list[int]] = {}  # sessions by the template plan they were stamped from
        general = []
        for i, plan in enumerate(plans):
            if plan.origin is not None:
                stamped.setdefault(id(plan.origin), []).append(i)
            else:
                general.append(i)
        for k, indices in enumerate(stamped.values()):
            self._submit_stamped(report, run_id, run_dir, chunk, plans, indices, throttle, dry, k)
        if general:
            self._submit_general(report, run_id, run_dir, chunk, plans, general, throttle, dry, len(stamped))

    def _submit_stamped(self, report: SubmitReport, run_id: str, run_dir: str, chunk: str, plans: list[Plan],
                        indices: list[int], throttle: int | None, dry: _DryIds | None, number: int) -> None:
        """Sessions stamped from one template plan: one array per task type holding all of them,
        each waiting (``aftercorr``) on its parent types' arrays; the work per task is its
        ledger row's three values."""
        origin = plans[indices[0]].origin
        array_of: dict[str, str] = {}  # template task id (its name) -> array job id
        for j, titem in enumerate(origin.items):
            name = titem.task["name"]
            corr = sorted({array_of[p] for p in titem.parents_in_plan})
            spec = self._spec(run_id, run_dir, titem.task, self._command(run_dir, chunk, name, None),
                              f"{name}.{chunk}.%A_%a.out", aftercorr=corr, array=indices, throttle=throttle)
            job_id = self._sbatch(report, spec, f"{name}.{chunk}.{number}", dry, f"{name} array of chunk {chunk}")
            array_of[titem.id] = job_id
            report.arrays += 1
            report.elements += len(indices)
            if dry is None:
                tasks = [plans[i].items[j].task for i in indices]
                self.ledger.record_array({"task_name": name, "run_id": run_id, "backend": BACKEND, "job_id": job_id,
                                          "run_dir": run_dir, "state": "PENDING", "remote": self.remote},
                                         [t["id"] for t in tasks], [t.get("session") for t in tasks], indices)

    def _submit_general(self, report: SubmitReport, run_id: str, run_dir: str, chunk: str, plans: list[Plan],
                        which: list[int], throttle: int | None, dry: _DryIds | None, first: int) -> None:
        # task types in dependency order (every session shares the pipeline), in one pass
        by_name: dict[str, list[tuple[int, PlanItem]]] = {}
        for i in which:
            for item in plans[i].items:
                by_name.setdefault(item.task["name"], []).append((i, item))
        array_of: dict[str, str] = {}  # task id -> array job id holding it
        records = []
        for name, elements in by_name.items():
            groups: dict[tuple, list[tuple[int, PlanItem]]] = defaultdict(list)
            for i, item in elements:
                corr = tuple(sorted({array_of[p] for p in item.parents_in_plan})) if item.parents_in_plan else ()
                live = tuple(sorted(j.backend_id for j in item.parents_live)) if item.parents_live else ()
                groups[(corr, live)].append((i, item))
            for g, ((corr, live), members) in enumerate(groups.items(), first):
                indices = [i for i, _ in members]
                spec = self._spec(run_id, run_dir, members[0][1].task, self._command(run_dir, chunk, name, None),
                                  f"{name}.{chunk}.%A_%a.out", dependencies=live, aftercorr=corr,
                                  array=indices, throttle=throttle)
                job_id = self._sbatch(report, spec, f"{name}.{chunk}.{g}", dry, f"{name} array of chunk {chunk}")
                report.arrays += 1
                report.elements += len(members)
                common = {"task_name": name, "run_id": run_id, "backend": BACKEND, "job_id": job_id,
                          "run_dir": run_dir, "state": "PENDING", "remote": self.remote}
                for i, item in members:
                    task_id = item.task["id"]
                    array_of[task_id] = job_id
                    records.append({"task_id": task_id, "session": item.task.get("session"), "array_index": i,
                                    **common})
                if dry is None:
                    self.ledger.record(records)
                    records = []

    # ------------------------------------------------------------------ packs
    def pack(self, plans: list[Plan], run_id: str, shape: PackShape | None = None, dry_run: bool = False,
             emit_dir: str | None = None) -> SubmitReport:
        """Packed execution: a few allocations, each running its tasks as job steps (``slurm.pack``).

        ``emit_dir``: hand-submit mode. The run folder and one self-contained script go there,
        nothing is submitted; the tasks' ledger rows wait (``EMITTED``) until the script runs and
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
        self._write_run(run_id, run_dir, {"c0": {i: self._entry(p) for i, p in enumerate(plans)}},
                        extra={RUN_KEY: [pk.name for pk in packs]})
        for pk in packs:
            self.transport.write_file(f"{run_dir}/packs/{pk.name}.json", pk.text(env, self.python))
        dry = _DryIds() if dry_run and not emit_dir else None
        job_of: dict[str, str] = {}
        for pk, spec in zip(packs, specs):
            spec.after_any = sorted(pk.after_jobs) + [job_of[name] for name in sorted(pk.after)]
            if emit_dir:
                path = f"{emit_dir}/{run_id}.sbatch"
                self.transport.write_file(path, job_script(spec, self.profile), mode=0o755)
                report.commands.append(hand_command(path))
                job_id, state = f"emitted:{pk.name}", EMITTED
            else:
                job_id = self._sbatch(report, spec, f"pack.{pk.name}", dry, f"pack {pk.name}")
                state = "PENDING"
            job_of[pk.name] = job_id
            report.elements += len(pk.items)
            if dry_run:
                report.commands.extend(self._step_lines(pk, env, run_dir, binds))
                continue
            self.ledger.record([{"task_id": t["id"], "session": t.get("session"), "task_name": t["name"],
                                 "run_id": run_id, "backend": BACKEND, "job_id": job_id, "run_dir": run_dir,
                                 "state": state, "remote": self.remote} for t in pk.tasks])
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
        return JobWatcher(self.transport)

    def refresh(self) -> dict:
        """Fold job results into the store, ask SLURM about live jobs (one batched query),
        and close out jobs SLURM ended without a result: the sweep.

        Returns counts, and the SLURM state of each live task id (for the status table).
        """
        mine = lambda j: j.backend == BACKEND and j.remote == self.remote  # noqa: E731
        self._adopt([j for j in self.ledger.live(BACKEND) if j.state == EMITTED and j.remote == self.remote])
        jobs = [j for j in self.ledger.unfolded() if mine(j)]
        self._adopt_records(jobs)
        texts = [(j, self.transport.read_file(str(runfolder.result_path(j.run_dir, j.task_id)))) for j in jobs]
        folded = runfolder.fold(self.store, [(j.task_id, t, j.folded_ops) for j, t in texts])
        self.ledger.set_folded([(j.task_id, j.run_id, *folded[j.task_id]) for j in jobs if j.task_id in folded])
        live = [j for j in self.ledger.live(BACKEND) if j.remote == self.remote and j.state != EMITTED]
        watcher = self.watcher()
        elements: dict[str, set[int]] = defaultdict(set)
        for j in live:  # an array is watched once, with the elements it really has
            if j.array_index is not None:
                elements[j.job_id].add(j.array_index)
            else:
                elements.setdefault(j.job_id, set())
        for job_id, indices in elements.items():
            watcher.watch(job_id, indices=indices or None)
        states = watcher.poll() if live else {}
        updates, swept = [], 0
        for j in live:
            st = states.get(j.backend_id)
            if st is None:
                continue
            updates.append((j.task_id, j.run_id, st.state, st.reason or None))
            applied, final = folded.get(j.task_id, (j.folded_ops, False))
            if st.final and not final:
                swept += self._sweep_one(j, st, applied)
            elif not st.final and st.state != "RUNNING":
                swept += self._pending(j, st)
        self.ledger.set_state(updates)
        return {"folded": len(folded), "queries": watcher.queries, "swept": swept,
                "states": {j.task_id: states[j.backend_id] for j in live if j.backend_id in states}}

    def _adopt_records(self, jobs: list) -> None:
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
            reported = [j.task_id for j in rows if j.task_id not in known
                        and runfolder.result_path(run_dir, j.task_id).exists()]
            if reported:
                known.update(self._record_now(run_dir, reported))
                for tid in reported:
                    if tid in known:
                        recorder.adopt_result(run_dir, tid, known)
            for j in rows:
                if j.task_id in known:
                    renames.append((j.task_id, j.run_id, known[j.task_id]))
                    j.task_id = known[j.task_id]
        if renames:
            self.ledger.rename_tasks(renames)

    def _record_now(self, run_dir: str, ids: list[str]) -> dict[str, str]:
        """Make these tasks' records (and their ancestors') now, unpaced: the sweep needs them."""
        recorder.Recorder(self.store, run_dir, rate=0).run(only=set(ids))
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

    def _adopt(self, emitted: list) -> None:
        """Hand-submitted scripts: a pack engine that started wrote its SLURM job id into the run
        folder (``packs/<name>.job``); its tasks' ledger rows take that id."""
        for run_id, run_dir, placeholder in sorted({(j.run_id, j.run_dir, j.job_id) for j in emitted}):
            name = placeholder.partition(":")[2]
            text = self.transport.read_file(f"{run_dir}/packs/{name}.job")
            if text and text.strip().isdigit():
                self.ledger.adopt(run_id, placeholder, text.strip())

    def _packed(self, run_dir: str) -> bool:
        """Whether a run's tasks ran in packs (its ``run.json`` says so)."""
        cache = self.__dict__.setdefault("_packed_runs", {})
        if run_dir not in cache:
            data = runfolder.read_result(self.transport.read_file(f"{run_dir}/run.json")) or {}
            cache[run_dir] = bool(data.get(RUN_KEY))
        return cache[run_dir]

    def _sweep_one(self, job, st, applied: int) -> int:
        """A job SLURM ended without a final result: record why, so nothing stays Started.

        ``applied``: operations of its result already folded in this refresh.
        """
        # the job may have written its result between the fold and the query: fold once more
        text = self.transport.read_file(str(runfolder.result_path(job.run_dir, job.task_id)))
        done = runfolder.fold(self.store, [(job.task_id, text, applied)]).get(job.task_id)
        if done and done[1]:
            self.ledger.set_folded([(job.task_id, job.run_id, done[0], True)])
            return 0
        self._recorded(job)
        task = self.store.get_task(job.task_id)
        if self._packed(job.run_dir) and not (runfolder.read_result(text) or {}).get("ops"):
            # its allocation ended before its turn: nothing ran, nothing is wrong with the task
            status, why = WAITING, reasons.line(reasons.CANCELLED, (
                f"pack allocation SLURM job {st.job_id} ended {st.state} before this task ran; "
                "Waiting for the next submission"))
        else:
            status, why = swept(st, task["status"], text, self.transport.read_file)
        if task["status"] in (STARTED, WAITING):
            self.store.update_task(job.task_id, status=status, log=(task.get("log") or "") + f"\n{why}\n")
        self.ledger.set_folded([(job.task_id, job.run_id, done[0] if done else applied, True)])
        return 1

    def _pending(self, job, st) -> int:
        """A pending job whose task needs a record: requeued (Waiting) or never startable (Held)."""
        if pending(st, None) is None:
            return 0
        self._recorded(job)
        task = self.store.get_task(job.task_id)
        found = pending(st, task["status"])
        if found is None:
            return 0
        self.store.update_task(job.task_id, status=found[0], log=(task.get("log") or "") + f"\n{found[1]}\n")
        return 1
