"""Packed execution, the submitting side: many tasks in a few SLURM allocations.

One sbatch per *pack* instead of one job (or array element) per task: a pack is an allocation
sized by its work (or by the user's flags) whose batch step is hpcpipe's own engine
(``hpcpipe.engines.pack``), which starts each task as a SLURM job step (``srun``) in graph order,
as many at once as the allocation holds. Each task keeps its own log, result file, time-out and
report; the login node folds and sweeps them exactly like array elements.

Why job steps driven by hpcpipe's engine, not disBatch: disBatch runs a flat task file with
barriers, so a session's graph (and a failed task blocking only its own session's children)
would have to be flattened into barriers, and time-outs, GPU/RAM accounting and reports would
live in a second tool. The local engine already schedules a graph by CPU/RAM/GPU, priority and
time-out; inside an allocation it only needs ``srun --exact`` to put each task on the
allocation's nodes with its own CPUs, memory and GPUs (and SLURM's accounting per step).

Lanes: a rule (``split``) may send tasks to different packs of the same run, e.g. GPU tasks
into a GPU allocation and the rest into a CPU one (``gpu``), tasks with ``time_out_secs``
above a bound apart (``long:SECS``), or named task types apart (``tasks:A,B``). A task whose
parent is in another lane goes to a later *stage* of its lane: a pack of stage s waits
(``afterany``) for the packs holding its tasks' parents, and its engine reads how each parent
ended from its result file (not done: the child is Held). No allocation ever sits idle waiting
for another one to start (on a busy or small cluster that would deadlock: the waiting
allocation can hold the very resources the other needs). Parents still queued from an earlier
run are waited for the same way (``afterany`` on their jobs).

The pack file ``<run>/packs/<name>.json`` lists the pack's tasks (session index, parents inside
and outside the pack) and the exact environment (setup, wrapper) of each task type.
"""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import BadInput
from ..pipeline import time_out_secs
from ..plan import Plan
from .limits import ClusterLimits
from .profiles import Environment, Profile
from .render import mem_mb

#: what ``run.json`` says about a packed run (the sweep treats its unstarted tasks as Waiting)
RUN_KEY = "packs"
SPLITS = ("none", "gpu", "long:SECS", "tasks:NAME,NAME")


@dataclass
class PackShape:
    """What the user asked of each allocation; None = sized by the work."""

    nodes: int | None = None
    cpus: int | None = None      # per node
    gpus: int | None = None      # per node
    ram: float | None = None     # GB per node
    time_secs: int | None = None
    allocations: int = 1         # packs per lane (sessions spread over them)
    split: str = "none"

    def __post_init__(self) -> None:
        for key in ("nodes", "cpus", "time_secs"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise BadInput(f"pack {key} must be a positive integer, not {value!r}")
        if self.gpus is not None and (not isinstance(self.gpus, int) or self.gpus < 0):
            raise BadInput(f"pack gpus must be a non-negative integer, not {self.gpus!r}")
        if self.ram is not None and not self.ram > 0:
            raise BadInput(f"pack ram must be a positive number of GB, not {self.ram!r}")
        if not isinstance(self.allocations, int) or self.allocations < 1:
            raise BadInput(f"pack allocations must be a positive integer, not {self.allocations!r}")
        lane_rule(self.split)  # refused now, before anything is recorded

    def lane(self, task: dict) -> str:
        kind, arg = lane_rule(self.split)
        if kind == "gpu":
            return "gpu" if int(task.get("gpu") or 0) else "cpu"
        if kind == "long":
            return "long" if (time_out_secs(task) or 0) > arg else "short"
        if kind == "tasks":
            return "apart" if task["name"] in arg else "main"
        return "main"


def lane_rule(split: str) -> tuple[str, object]:
    """``none`` | ``gpu`` | ``long:SECS`` | ``tasks:A,B`` -> (kind, argument)."""
    kind, _, arg = (split or "none").partition(":")
    if kind in ("none", "gpu") and not arg:
        return kind, None
    if kind == "long" and arg.isdigit() and int(arg) > 0:
        return kind, int(arg)
    if kind == "tasks" and arg:
        return kind, {a.strip() for a in arg.split(",") if a.strip()}
    raise BadInput(f"pack split {split!r} is not one of {', '.join(SPLITS)}")


@dataclass
class Pack:
    """One allocation's work, as written to its pack file."""

    name: str
    lane: str
    items: list[dict]
    tasks: list[dict]
    sessions: list[int]
    stage: int = 0
    #: packs of this run it waits for (``afterany``), and live jobs of earlier runs
    after: set = field(default_factory=set)
    after_jobs: set = field(default_factory=set)

    def text(self, env: dict[str, dict], python: str) -> str:
        return json.dumps({"pack": self.name, "lane": self.lane, "python": python, "env": env,
                           "items": self.items})


def build_packs(plans: list[Plan], shape: PackShape, run_dir: str) -> list[Pack]:
    """Split the plans' tasks into packs: by lane, then sessions spread over ``allocations``.

    Session ``i`` of the plans is entry ``i`` of ``sessions/c0.json``. Parents planned in
    another pack, and live jobs of earlier runs, are *outside* parents: the engine waits for
    their result files.
    """
    where: dict[str, str] = {}
    lane_of: dict[str, str] = {}
    stage_of: dict[str, int] = {}
    packs: dict[str, Pack] = {}
    for i, plan in enumerate(plans):
        for item in plan.items:  # parents come first
            lane = lane_of[item.id] = shape.lane(item.task)
            stage = stage_of[item.id] = max(
                [stage_of[p] + (lane_of[p] != lane) for p in item.parents_in_plan], default=0)
            name = f"{lane}{i % shape.allocations}" + (f"s{stage}" if stage else "")
            pack = packs.setdefault(name, Pack(name, lane, [], [], [], stage))
            where[item.id] = name
            outside = [{"id": p, "run_dir": run_dir, "pack": where[p]}
                       for p in item.parents_in_plan if where[p] != name]
            outside += [{"id": j.task_id, "run_dir": j.run_dir, "pack": None} for j in item.parents_live]
            pack.after.update(o["pack"] for o in outside if o["pack"])
            pack.after_jobs.update(j.backend_id for j in item.parents_live if j.job_id.isdigit())
            pack.items.append({"id": item.id, "name": item.task["name"], "index": i,
                               "parents": [p for p in item.parents_in_plan if where[p] == name],
                               "outside": outside})
            pack.tasks.append(item.task)
            if not pack.sessions or pack.sessions[-1] != i:
                pack.sessions.append(i)
    return sorted(packs.values(), key=lambda pk: pk.stage)  # a pack after those it waits for


def _node(limits: ClusterLimits | None, partition: str | None) -> tuple[int | None, int | None, int | None, int]:
    """(CPUs, memory MB, GPUs, node count) of the partition's largest node, from the cluster
    (None: not known, the cluster could not be asked)."""
    part = limits.partitions.get(partition or limits.default_partition or "") if limits else None
    if limits is None or part is None:
        return None, None, None, 1
    nodes = [limits.nodes[n] for n in part.nodes if n in limits.nodes]
    cpus = max((n.cpus for n in nodes), default=None)
    if part.max_cpus_per_node is not None:
        cpus = min(cpus or part.max_cpus_per_node, part.max_cpus_per_node)
    mem = max((n.real_memory_mb for n in nodes), default=None)
    if part.max_mem_per_node_mb is not None:
        mem = min(mem or part.max_mem_per_node_mb, part.max_mem_per_node_mb)
    return cpus, mem, max((n.gpus for n in nodes), default=0), max(1, len(nodes))


def size(tasks: list[dict], shape: PackShape, limits: ClusterLimits | None,
         partition: str | None, max_time_min: int | None = None) -> dict:
    """The allocation for ``tasks``: per-node cpus, ram (GB), gpus, nodes and time (s).

    Unset by the user: CPUs for as many tasks as could run at once (capped by the largest
    node), memory for that many tasks at their largest RAM per CPU, the GPUs the GPU tasks ask
    (capped by the node's), one node, and time for all the work spread over the CPUs (by
    ``time_out_secs``, an upper bound: give ``--pack-time`` when you know better), at least the
    longest task, capped by the partition's MaxTime.
    """
    node_cpus, node_mem, node_gpus, node_count = _node(limits, partition)
    cpu = [int(t.get("cpu") or 1) for t in tasks]
    ram = [float(t.get("ram") or 0) for t in tasks]
    secs = [time_out_secs(t) or 3600 for t in tasks]
    nodes = shape.nodes or 1
    if node_count and shape.nodes and shape.nodes > node_count:
        raise BadInput(f"pack nodes {shape.nodes} is more than the partition's {node_count} node(s)")
    cpus = shape.cpus or max(max(cpu), min(node_cpus or sum(cpu), math.ceil(sum(cpu) / nodes)))
    per_cpu = max(r / c for r, c in zip(ram, cpu))
    gb = shape.ram or max(max(ram), cpus * per_cpu) or None
    if gb is not None and shape.ram is None and node_mem is not None:
        gb = min(gb, node_mem / 1024)
    gpu_need = sum(int(t.get("gpu") or 0) for t in tasks)
    gpus = shape.gpus if shape.gpus is not None else min(gpu_need, gpu_need if node_gpus is None else node_gpus)
    work = sum(c * s for c, s in zip(cpu, secs)) / (cpus * nodes)
    seconds = shape.time_secs or int(max(max(secs), work)) + 60
    if shape.time_secs is None and max_time_min is not None:
        seconds = min(seconds, max_time_min * 60)
    return {"cpu": cpus, "ram": gb, "gpu": gpus, "nodes": nodes, "time_out_secs": seconds}


def environments(profile: Profile, names: Iterable[str]) -> dict[str, dict]:
    """Each task type's step environment: its wrapper, and setup lines of its own (the profile's
    setup already ran in the batch script, before the engine started)."""
    out = {}
    for name in sorted(set(names)):
        env = profile.environment(name)
        own = profile.task_env.get(name, {})
        out[name] = {"wrapper": list(env.wrapper), "setup": list(own.get("setup", []))}
    return out


def step_argv(item: dict, env: dict, python: str, run_dir: str, log_path: str, need: dict,
              binds: str, srun: bool, gpus_allocated: bool, mem_given: bool) -> list[str]:
    """One task's job step: ``srun`` (inside an allocation) + its setup + wrapper + the job side.

    ``need``: the CPUs, GB and GPUs the engine counts for the task. Without an allocation
    (tests, or a workstation) the job side runs directly, with the same environment.
    """
    job = [python, "-m", "hpcpipe.jobside", "--run-dir", run_dir, "--chunk", "c0", "--index",
           str(item["index"]), "--task-name", item["name"]]
    cmd = Environment(wrapper=tuple(env.get("wrapper", ()))).wrapped(job, binds)
    if env.get("setup"):
        cmd = ["bash", "-c", "\n".join(env["setup"]) + '\nexec "$@"', "hpcpipe-step"] + cmd
    if not srun:
        return cmd
    step = ["srun", "--nodes=1", "--ntasks=1", f"--cpus-per-task={int(need['cpu'])}", "--exact",
            "--kill-on-bad-exit=1", "--quiet", f"--job-name={step_name(item)}", f"--output={log_path}",
            "--open-mode=append"]
    if mem_given:
        step.append(f"--mem={max(1, mem_mb(need['ram']))}M")
    if gpus_allocated:
        # a step that names no GRES gets *all* the job's GRES (srun(1), --gres): every CPU step
        # would hold every GPU of the allocation, and the steps would run one at a time
        step.append(f"--gres=gpu:{int(need['gpu'])}" if need.get("gpu") else "--gres=none")
    return step + cmd


def step_name(item: dict) -> str:
    """A task's job step name, ``<task>.<session index>`` like its log file: unique in the
    allocation, so ``sacct`` rows (and ``hpcpipe report``) tell each task's step apart."""
    return f"{item['name']}.{item['index']}"


def step_names(read: Callable[[str], str | None], run_dir: str) -> dict[str, str]:
    """``{task id: step name}`` for the tasks of a packed run (``{}`` for any other run), from
    its pack files; ``read`` reads a file where the run folder is (None: no such file)."""
    run = json.loads(read(f"{run_dir}/run.json") or "{}")
    names: dict[str, str] = {}
    for pack in run.get(RUN_KEY) or []:
        for item in json.loads(read(f"{run_dir}/packs/{pack}.json") or "{}").get("items", []):
            names[item["id"]] = step_name(item)
    return names


def binds_for(session_paths: Iterable[str], run_dir: str) -> list[str]:
    """Folders a container must see: each session's root (the folder above ``subject/date/NNN``)
    and the run folder (the scratch folder is added by the job script at run time)."""
    roots = {str(Path(p).parents[2]) for p in session_paths}
    return sorted(roots) + [run_dir]


def job_path(run_dir: str, pack: str) -> str:
    """Where a pack's engine writes its SLURM job id when it starts (how a hand-submitted
    script is found: ``SlurmBackend.refresh`` adopts it)."""
    return f"{run_dir}/packs/{pack}.job"


def withdrawn_path(run_dir: str, pack: str) -> str:
    """Where ``hpcpipe cancel`` lists the tasks of an emitted pack it withdrew before the script
    ran (``{"tasks": [ids], "at": ...}``): the engine does not run them, and refuses to run at
    all when every task of its pack is listed."""
    return f"{run_dir}/packs/{pack}.withdrawn"


def withdrawn(read: Callable[[str], str | None], run_dir: str, pack: str) -> set[str]:
    """The task ids ``hpcpipe cancel`` withdrew from an emitted pack (``read``: None for no file)."""
    return set(json.loads(read(withdrawn_path(run_dir, pack)) or "{}").get("tasks", []))


def hand_command(script: str) -> str:
    """The one line a human types to submit an emitted script."""
    return f"sbatch {shlex.quote(script)}"
