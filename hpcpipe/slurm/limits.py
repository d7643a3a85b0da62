"""What the cluster allows, read from the cluster, and a check before submitting.

Many sites (and the test cluster) run with ``EnforcePartLimits=NO``: sbatch then accepts a
job above a partition's limits and the job pends forever (Reason=MaxMemPerLimit...). So the
check is ours, before submission, naming the resource, the value asked and the limit.

Read once per submission with four commands through the transport:
``scontrol show config``, ``scontrol show partition --oneliner``,
``scontrol show node --oneliner`` and ``sacctmgr -nP show assoc`` (optional: empty or
failing means no per-user limit). ``scontrol show license`` is a fifth, for the IO budget.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendError, BadInput
from ..transport import LocalTransport, Transport
from .render import JobSpec, Resources, mem_mb, time_minutes

UNLIMITED_WORDS = {"UNLIMITED", "INFINITE", "NONE", "N/A", "(null)", ""}
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:.\[\]]*)=")


# ------------------------------------------------------------------ parsers (pure)
def parse_oneliner(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value with spaces`` -> dict.

    Values may hold spaces (``OS=Linux 6.1 #1 SMP``) and ``=`` (``TRES=cpu=8,mem=8000M``), so a
    new key starts only at whitespace followed by ``Name=``.
    """
    out: dict[str, str] = {}
    matches = list(_KEY.finditer(line))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config`` (``Name = value`` lines) -> dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if " = " in line:
            key, _, value = line.partition(" = ")
            out[key.strip()] = value.strip()
    return out


def parse_time_minutes(value: str) -> int | None:
    """SLURM time (``30``, ``30:00``, ``1:00:00``, ``2-12``, ``1-00:00:00``, UNLIMITED) -> minutes."""
    value = value.strip()
    if value.upper() in UNLIMITED_WORDS:
        return None
    days = 0
    if "-" in value:
        d, value = value.split("-", 1)
        days = int(d)
        parts = [int(p) for p in value.split(":")]  # D-H, D-H:M, D-H:M:S
        parts += [0] * (3 - len(parts))
        h, m, s = parts
    else:
        parts = [int(p) for p in value.split(":")]
        if len(parts) == 1:  # minutes
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:  # M:S
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts[:3]
    return days * 1440 + h * 60 + m + (1 if s else 0)


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if value.upper() in UNLIMITED_WORDS:
        return None
    m = re.match(r"^(\d+)", value)
    return int(m.group(1)) if m else None


def parse_gres_gpus(gres: str) -> int:
    """GPUs in a node's ``Gres`` (``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:a:2,gpu:b:2``)."""
    total = 0
    for item in re.split(r",(?![^()]*\))", gres or ""):
        item = re.sub(r"\(.*?\)", "", item).strip()
        if not item.startswith("gpu"):
            continue
        parts = item.split(":")
        count = parts[-1] if len(parts) > 1 else "1"
        total += int(count) if count.isdigit() else 1
    return total


@dataclass
class NodeInfo:
    """One node as ``scontrol show node`` reports it."""

    name: str
    cpus: int
    real_memory_mb: int
    gpus: int
    partitions: list[str]
    state: str = ""


@dataclass
class PartitionLimits:
    """One partition's limits; None means unlimited."""

    name: str
    max_time_min: int | None = None
    max_mem_per_node_mb: int | None = None
    max_mem_per_cpu_mb: int | None = None
    max_cpus_per_node: int | None = None
    total_cpus: int | None = None
    nodes: list[str] = field(default_factory=list)
    default: bool = False
    state: str = "UP"


def parse_partitions(text: str) -> dict[str, PartitionLimits]:
    """``scontrol show partition --oneliner`` -> {name: PartitionLimits}."""
    parts: dict[str, PartitionLimits] = {}
    for line in text.splitlines():
        kv = parse_oneliner(line)
        if "PartitionName" not in kv:
            continue
        name = kv["PartitionName"]
        parts[name] = PartitionLimits(
            name=name,
            max_time_min=parse_time_minutes(kv.get("MaxTime", "UNLIMITED")),
            max_mem_per_node_mb=_int_or_none(kv.get("MaxMemPerNode")),
            max_mem_per_cpu_mb=_int_or_none(kv.get("MaxMemPerCPU")),
            max_cpus_per_node=_int_or_none(kv.get("MaxCPUsPerNode")),
            total_cpus=_int_or_none(kv.get("TotalCPUs")),
            nodes=[],
            default=kv.get("Default", "NO").upper() == "YES",
            state=kv.get("State", "UP"),
        )
    return parts


def parse_nodes(text: str) -> dict[str, NodeInfo]:
    """``scontrol show node --oneliner`` -> {name: NodeInfo}."""
    nodes: dict[str, NodeInfo] = {}
    for line in text.splitlines():
        kv = parse_oneliner(line)
        if "NodeName" not in kv:
            continue
        name = kv["NodeName"]
        nodes[name] = NodeInfo(
            name=name,
            cpus=_int_or_none(kv.get("CPUTot")) or _int_or_none(kv.get("CPUEfctv")) or 0,
            real_memory_mb=_int_or_none(kv.get("RealMemory")) or 0,
            gpus=parse_gres_gpus(kv.get("Gres", "")),
            partitions=[p for p in kv.get("Partitions", "").split(",") if p],
            state=kv.get("State", ""),
        )
    return nodes


def parse_assoc_limits(text: str) -> tuple[int | None, int | None]:
    """``sacctmgr -nP show assoc format=MaxSubmitJobs,MaxJobs`` -> the tightest of each (None: unlimited)."""
    submit: list[int] = []
    running: list[int] = []
    for line in text.splitlines():
        if "|" not in line:
            continue
        a, b = (line.split("|") + [""])[:2]
        if a.strip().isdigit():
            submit.append(int(a))
        if b.strip().isdigit():
            running.append(int(b))
    return (min(submit) if submit else None, min(running) if running else None)


def parse_licenses(text: str) -> dict[str, int]:
    """``scontrol show license --oneliner`` -> {name: total}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        kv = parse_oneliner(line)
        if "LicenseName" in kv:
            out[kv["LicenseName"]] = _int_or_none(kv.get("Total")) or 0
    return out


# ------------------------------------------------------------------ the limits
@dataclass
class ClusterLimits:
    """The limits that decide whether (and how big) a submission can be."""

    #: array indices must be < this (SLURM default 1001)
    max_array_size: int = 1001
    max_job_count: int = 10000
    #: per-user jobs in the queue (pending + running); None when unlimited/unknown
    max_submit_jobs: int | None = None
    max_jobs: int | None = None
    partitions: dict[str, PartitionLimits] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    licenses: dict[str, int] = field(default_factory=dict)
    enforce_part_limits: str = "NO"
    #: how many SLURM commands reading these took
    queries: int = 0

    @classmethod
    def read(cls, transport: Transport, user: str | None = None) -> "ClusterLimits":
        """Ask the cluster (4-5 commands). ``user`` defaults to the transport's login user."""
        def run(argv: list[str], required: bool = True) -> str | None:
            res = transport.run(argv, repeatable=True)  # every ask only reads
            if res.returncode != 0:
                if required:
                    res.check()
                return None
            return res.stdout

        asks = [(["scontrol", "show", "config"], True), (["scontrol", "show", "partition", "--oneliner"], True),
                (["scontrol", "show", "node", "--oneliner"], True),
                (["scontrol", "show", "license", "--oneliner"], False)] + ([(["id", "-un"], False)] if user is None else [])
        if isinstance(transport, LocalTransport):  # independent commands: at once (a remote one: in turn)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(asks)) as pool:
                answers = list(pool.map(lambda ask: run(*ask), asks))
        else:
            answers = [run(*ask) for ask in asks]
        conf = parse_config(answers[0] or "")
        parts = parse_partitions(answers[1] or "")
        nodes = parse_nodes(answers[2] or "")
        for node in nodes.values():
            for p in node.partitions:
                if p in parts:
                    parts[p].nodes.append(node.name)
        licenses = parse_licenses(answers[3] or "")
        if user is None:
            user = (answers[4] or "").strip() or None
        submit = running = None
        queries = len(asks) + bool(user)
        if user:
            text = run(["sacctmgr", "-nP", "show", "assoc", f"user={user}", "format=MaxSubmitJobs,MaxJobs"],
                       required=False)
            submit, running = parse_assoc_limits(text or "")
        return cls(
            max_array_size=_int_or_none(conf.get("MaxArraySize")) or 1001,
            max_job_count=_int_or_none(conf.get("MaxJobCount")) or 10000,
            max_submit_jobs=submit,
            max_jobs=running,
            partitions=parts,
            nodes=nodes,
            licenses=licenses,
            enforce_part_limits=conf.get("EnforcePartLimits", "NO"),
            queries=queries,
        )

    @property
    def default_partition(self) -> str | None:
        """The partition jobs without ``--partition`` go to."""
        for p in self.partitions.values():
            if p.default:
                return p.name
        return None

    def caps(self, partition: str | None) -> tuple[float | None, float | None]:
        """``(max ram GB, max time s)`` a job on ``partition`` (None: the default) may ask for:
        MaxMemPerNode or the largest node's memory, whichever is lower, and MaxTime."""
        name = partition or self.default_partition
        part = self.partitions.get(name) if name else None
        if part is None:
            return None, None
        node_mem = max((self.nodes[n].real_memory_mb for n in part.nodes if n in self.nodes), default=None)
        mem = [m for m in (part.max_mem_per_node_mb, node_mem) if m is not None]
        return (min(mem) / 1024 if mem else None), (part.max_time_min * 60 if part.max_time_min is not None else None)

    def max_array_elements(self) -> int:
        """Largest array (element count) one sbatch may carry: MaxArraySize and MaxSubmitJobs."""
        caps = [self.max_array_size, self.max_job_count]
        if self.max_submit_jobs is not None:
            caps.append(self.max_submit_jobs)
        return max(1, min(caps))

    def check(self, what: JobSpec | Resources | dict[str, Any], partition: str | None = None,
              io_license: str | None = None) -> None:
        """Raise BadInput if ``what`` cannot run on ``partition`` (None: the default partition).

        The message names the resource, the value asked and the limit, e.g.
        ``ram 3 GB (3072 MB) is above partition small's MaxMemPerNode 2000 MB``.
        """
        spec = what if isinstance(what, JobSpec) else None
        if isinstance(what, JobSpec):
            res = what.resources
            partition = partition or what.partition
        elif isinstance(what, Resources):
            res = what
        else:
            res = Resources.from_dict(what)
        assert isinstance(res, Resources)
        name = partition or self.default_partition
        if name is None:
            raise BadInput("no partition given and the cluster has no default partition")
        if name not in self.partitions:
            raise BadInput(f"unknown partition {name!r}; partitions: {', '.join(sorted(self.partitions))}")
        part = self.partitions[name]
        where = f"partition {name}"
        if part.state.upper() not in ("UP",):
            raise BadInput(f"{where} is {part.state}: jobs would not start")
        nodes = [self.nodes[n] for n in part.nodes if n in self.nodes]
        node_cpus = max((n.cpus for n in nodes), default=None)
        node_mem = max((n.real_memory_mb for n in nodes), default=None)
        node_gpus = max((n.gpus for n in nodes), default=0)

        # cpu
        if part.max_cpus_per_node is not None and res.cpu > part.max_cpus_per_node:
            raise BadInput(f"cpu {res.cpu} is above {where}'s MaxCPUsPerNode {part.max_cpus_per_node}")
        if node_cpus is not None and res.cpu > node_cpus:
            raise BadInput(f"cpu {res.cpu} is above the {node_cpus} CPUs of {where}'s largest node")
        # ram
        if res.ram is not None:
            mb = mem_mb(res.ram)
            asked = f"ram {res.ram:g} GB ({mb} MB)"
            if part.max_mem_per_node_mb is not None and mb > part.max_mem_per_node_mb:
                raise BadInput(f"{asked} is above {where}'s MaxMemPerNode {part.max_mem_per_node_mb} MB")
            if part.max_mem_per_cpu_mb is not None and mb > part.max_mem_per_cpu_mb * res.cpu:
                need = -(-mb // part.max_mem_per_cpu_mb)
                raise BadInput(f"{asked} is above {where}'s MaxMemPerCPU {part.max_mem_per_cpu_mb} MB "
                               f"x {res.cpu} cpu; ask for cpu >= {need}")
            if node_mem is not None and mb > node_mem:
                raise BadInput(f"{asked} is above the {node_mem} MB RealMemory of {where}'s largest node")
        # gpu
        if res.gpu and res.gpu > node_gpus:
            raise BadInput(f"gpu {res.gpu} is more than {where}'s nodes have ({node_gpus} GPUs per node)")
        # time
        if res.time_out_secs is not None and part.max_time_min is not None:
            minutes = time_minutes(res.time_out_secs)
            if minutes > part.max_time_min:
                raise BadInput(f"time_out_secs {res.time_out_secs:g} s ({minutes} min) is above {where}'s "
                               f"MaxTime {part.max_time_min} min")
        # IO budget
        if io_license and res.io_charge:
            total = self.licenses.get(io_license)
            if total is None:
                raise BadInput(f"io_charge {res.io_charge}: the cluster has no license {io_license!r} "
                               f"(licenses: {', '.join(sorted(self.licenses)) or 'none'})")
            if res.io_charge > total:
                raise BadInput(f"io_charge {res.io_charge} is above the cluster's {io_license} license total {total}")
        # arrays
        if spec is not None and spec.array:
            top = max(spec.array)
            if top >= self.max_array_size:
                raise BadInput(f"array index {top} is not below the cluster's MaxArraySize {self.max_array_size}")
            if self.max_submit_jobs is not None and len(spec.array) > self.max_submit_jobs:
                raise BadInput(f"array of {len(spec.array)} elements is above your MaxSubmitJobs "
                               f"{self.max_submit_jobs}")


def read_limits(transport: Transport, user: str | None = None) -> ClusterLimits:
    """``ClusterLimits.read`` as a function, wrapping transport failures as BackendError."""
    try:
        return ClusterLimits.read(transport, user=user)
    except BackendError:
        raise
    except (ValueError, KeyError) as exc:  # unexpected output format
        raise BackendError(f"could not parse the cluster's limits: {exc}") from None
