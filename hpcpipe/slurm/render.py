"""Job scripts: a ``JobSpec`` (plain data) plus a site ``Profile`` rendered to sbatch text.

Rendering is separate from submitting so that ``--dry-run`` writes the exact scripts that a
real run would submit, and a golden-file test can pin them. Nothing here talks to SLURM.

Safety rule: every value that may come from a session path, a task name or a task argument
is ``shlex.quote``d, both in ``#SBATCH`` lines (sbatch parses them with shell-like quoting)
and in shell lines. Values must not hold newlines where a newline would end the line
(``#SBATCH`` values, environment names): those are refused, because a newline in a
directive would start a new shell line. Only the profile's ``setup`` lines and ``scratch``
are inserted verbatim: they are the site administrator's shell text, like a module file.

Resource mapping (also in docs/SLURM.md):

==============  ============================================================================
cpu             ``--cpus-per-task=N``
ram (GB)        ``--mem=NG`` for whole GB, else ``--mem=<MB>M`` rounded up (1 GB = 1024 MB)
gpu             ``--gres=gpu:N`` (profile ``gpu_flag = "gres"``) or ``--gpus=N`` (``"gpus"``)
time_out_secs   ``--time`` in whole minutes, rounded up (SLURM only knows minutes)
priority 0-100  ``--nice=(100 - priority) * nice_step`` (profile, default 10): 100 -> 0,
                0 -> 1000. Never negative, since only root may lower nice.
io_charge       ``--licenses=<io_license>:N`` when the profile names an IO license
job_size        partition from the profile's ``[job_size]`` map
==============  ============================================================================
"""
from __future__ import annotations

import math
import re
import shlex
import string
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

from ..errors import BadInput
from .profiles import BINDS, Profile, load_profile

_JOB_ID = re.compile(r"^\d+(_\d+)?$")
_ARRAY_ID = re.compile(r"^\d+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LINE_BREAKS = ("\n", "\r", "\0")
_SIGNAL = re.compile(r"^(?:[BR]{1,2}:)?(?:SIG)?[A-Z0-9]+(?:@\d+)?$")


@dataclass
class Resources:
    """What a task asks of the cluster, in ibllib's Task attribute names and units."""

    cpu: int = 1
    gpu: int = 0
    #: GB of memory per job; None leaves SLURM's default (DefMemPerCPU/DefMemPerNode)
    ram: float | None = None
    time_out_secs: int | None = None
    #: 0-100 like ibllib (higher runs first); None asks for no --nice
    priority: int | None = None
    #: share of the site's IO budget (an integer, ibllib's percentage)
    io_charge: int = 0
    job_size: str | None = None

    def __post_init__(self) -> None:
        for name in ("cpu", "gpu", "io_charge"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadInput(f"resource {name} must be a non-negative integer, not {value!r}")
        if self.cpu < 1:
            raise BadInput("resource cpu must be at least 1")
        if self.ram is not None and (isinstance(self.ram, bool) or not isinstance(self.ram, (int, float))
                                     or self.ram <= 0):
            raise BadInput(f"resource ram must be a positive number of GB, not {self.ram!r}")
        if self.time_out_secs is not None and (
            isinstance(self.time_out_secs, bool) or not isinstance(self.time_out_secs, (int, float))
            or self.time_out_secs <= 0
        ):
            raise BadInput(f"resource time_out_secs must be a positive number, not {self.time_out_secs!r}")
        if self.priority is not None and (
            isinstance(self.priority, bool) or not isinstance(self.priority, int) or not 0 <= self.priority <= 100
        ):
            raise BadInput(f"resource priority must be an integer from 0 to 100, not {self.priority!r}")
        if self.job_size is not None and not isinstance(self.job_size, str):
            raise BadInput(f"resource job_size must be a string, not {self.job_size!r}")

    @classmethod
    def names(cls) -> list[str]:
        """The valid resource names, in declaration order."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Resources":
        """Build from a task's resource dict; an unknown name fails listing the valid ones."""
        unknown = sorted(set(data) - set(cls.names()))
        if unknown:
            raise BadInput(f"unknown resource(s) {', '.join(unknown)}; valid resources are: "
                           f"{', '.join(cls.names())}")
        return cls(**dict(data))


@dataclass
class JobSpec:
    """One sbatch submission (a single job or one job array), as plain data.

    ``command`` is an argv list; it is quoted as a whole, so nothing in it is expanded by
    the shell (an array element reads ``$SLURM_ARRAY_TASK_ID`` from its environment).
    ``output``/``error`` are SLURM filename patterns (``%j``, ``%A``, ``%a`` are expanded
    by SLURM); ``error=None`` sends stderr to the output file.
    """

    name: str
    command: Sequence[str]
    resources: Resources | Mapping[str, Any] = field(default_factory=Resources)
    output: str | None = None
    error: str | None = None
    #: job ids this job needs COMPLETED with exit code 0 (``afterok``)
    dependencies: list[str] = field(default_factory=list)
    #: job ids this job waits for, however they end (``afterany``: a pack after the packs
    #: holding its tasks' parents; the engine reads how each parent ended)
    after_any: list[str] = field(default_factory=list)
    #: array job ids whose element i this job's element i waits for (``aftercorr``)
    aftercorr: list[str] = field(default_factory=list)
    #: cancel the job when a dependency can never be met (else it pends forever)
    kill_on_invalid_dep: bool = True
    #: array indices (sparse, any order); None for a single job
    array: list[int] | None = None
    #: at most this many elements run at once (``%N``)
    array_throttle: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    #: explicit partition; wins over job_size, gpu_partition and the profile's partition
    partition: str | None = None
    #: ``--signal`` value, e.g. ``B:USR2@60``: warn the batch shell before the time limit
    signal: str | None = None
    #: the task class whose environment (``[task_env]`` of the profile) the job runs in
    task_env: str | None = None
    #: run the command under the environment's wrapper (False: a pack runner, which wraps each step)
    wrapped: bool = True
    #: folders a wrapper (container) must see: exported as ``$HPCPIPE_BINDS``, with the scratch
    binds: list[str] = field(default_factory=list)
    #: nodes of one allocation (a pack); resources are then per node
    nodes: int = 1
    #: ``--comment``: which sbatch call of its run this is (``hpcpipe:<script>``), so a job
    #: found in squeue is adopted by the ledger even when its submitter died before recording it
    comment: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.resources, Mapping):
            self.resources = Resources.from_dict(self.resources)
        elif not isinstance(self.resources, Resources):
            raise BadInput(f"resources must be a dict or Resources, not {type(self.resources).__name__}")
        if not isinstance(self.name, str) or not self.name:
            raise BadInput("a job needs a non-empty name")
        _one_line("job name", self.name)
        if "," in self.name:
            raise BadInput(f"job name {self.name!r} holds a comma: SLURM name queries (--name=a,b) split on it")
        if isinstance(self.command, str) or not self.command or not all(isinstance(a, str) for a in self.command):
            raise BadInput("command must be a non-empty list of strings (an argv, not a shell line)")
        if any("\0" in a for a in self.command):
            raise BadInput("command arguments cannot hold NUL characters")
        self.command = list(self.command)
        for label in ("output", "error", "workdir", "partition"):
            value = getattr(self, label)
            if value is not None:
                if not isinstance(value, str) or not value:
                    raise BadInput(f"{label} must be a non-empty string or None")
                _one_line(label, value)
        self.dependencies = [str(d) for d in self.dependencies]
        self.after_any = [str(d) for d in self.after_any]
        for dep in self.after_any:
            if not _JOB_ID.match(dep):
                raise BadInput(f"dependency {dep!r} is not a SLURM job id (123 or 123_4)")
        self.aftercorr = [str(d) for d in self.aftercorr]
        for dep in self.dependencies:
            if not _JOB_ID.match(dep):
                raise BadInput(f"dependency {dep!r} is not a SLURM job id (123 or 123_4)")
        for dep in self.aftercorr:
            if not _ARRAY_ID.match(dep):
                raise BadInput(f"aftercorr dependency {dep!r} is not an array job id (123)")
        if self.aftercorr and self.array is None:
            raise BadInput("aftercorr dependencies need an array job (element i waits for parent element i)")
        if self.array is not None:
            if isinstance(self.array, (str, bytes)) or not self.array:
                raise BadInput("array must be a non-empty list of indices or None")
            idx = sorted(set(self.array)) if set(map(type, self.array)) <= {int} else None  # bool is not int here
            if idx is None or idx[0] < 0:
                raise BadInput("array indices must be non-negative integers")
            self.array = idx
        if self.array_throttle is not None:
            if self.array is None:
                raise BadInput("array_throttle needs an array")
            if isinstance(self.array_throttle, bool) or not isinstance(self.array_throttle, int) \
                    or self.array_throttle < 1:
                raise BadInput(f"array_throttle must be a positive integer, not {self.array_throttle!r}")
        if self.signal is not None and (not isinstance(self.signal, str) or not _SIGNAL.match(self.signal)):
            raise BadInput(f"signal {self.signal!r} is not a --signal value like B:USR2@60")
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes < 1:
            raise BadInput(f"nodes must be a positive integer, not {self.nodes!r}")
        self.binds = [str(b) for b in self.binds]
        if any(c in b for b in self.binds for c in (",", "\0")):
            raise BadInput("a bind folder cannot hold a comma (binds are comma-separated) or NUL")
        for key, value in self.env.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise BadInput(f"environment variable name {key!r} is not valid")
            if not isinstance(value, str) or "\0" in value:
                raise BadInput(f"environment variable {key} must be a string without NUL")


def _one_line(label: str, value: str) -> None:
    if any(c in value for c in _LINE_BREAKS):
        raise BadInput(f"{label} {value!r} holds a line break; it would end the #SBATCH line")


# ------------------------------------------------------------------ the mapping rules
def time_minutes(seconds: float) -> int:
    """Whole minutes for ``--time``, rounded up (``--time`` is minute-granular; min 1)."""
    return max(1, math.ceil(seconds / 60))


def format_time(minutes: int) -> str:
    """``D-HH:MM:00`` or ``HH:MM:00``: unambiguous for sbatch and readable in the script."""
    days, rest = divmod(int(minutes), 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


def nice_for(priority: int, step: int = 10) -> int:
    """``--nice`` for an ibllib priority: 100 -> 0, each point lower -> ``step`` more nice.

    Non-root users may only raise nice (lower their priority), so the most urgent tasks get 0
    and everything else is pushed back relative to them.
    """
    if not 0 <= priority <= 100:
        raise BadInput(f"priority must be from 0 to 100, not {priority}")
    return (100 - int(priority)) * int(step)


def mem_option(ram_gb: float) -> str:
    """``--mem`` value: ``4G`` for whole GB, else MB rounded up (``1.5`` -> ``1536M``)."""
    if float(ram_gb).is_integer():
        return f"{int(ram_gb)}G"
    return f"{math.ceil(ram_gb * 1024)}M"


def mem_mb(ram_gb: float) -> int:
    """The MB SLURM will count for ``mem_option(ram_gb)`` (to compare with partition limits)."""
    return math.ceil(ram_gb * 1024)


def compress_indices(indices: Iterable[int]) -> str:
    """``[0,1,2,3,9,11,12]`` -> ``0-3,9,11-12``: sparse index lists stay short on the command line."""
    idx = sorted(set(map(int, indices)))
    if not idx:
        raise BadInput("an array needs at least one index")
    parts: list[str] = []
    start = prev = idx[0]
    for i in idx[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def expand_indices(text: str) -> list[int]:
    """Inverse of ``compress_indices``; also accepts SLURM's ``1-9:2`` steps and drops ``%N``."""
    text = text.strip().strip("[]").split("%", 1)[0]
    out: list[int] = []
    for part in filter(None, text.split(",")):
        step = 1
        if ":" in part:
            part, step_s = part.split(":", 1)
            step = int(step_s)
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1, step))
        else:
            out.append(int(part))
    return out


def resolve_partition(spec: JobSpec, profile: Profile) -> str | None:
    """The partition a job goes to: explicit > job_size map > gpu_partition > profile > default.

    None means the cluster's default partition (no ``--partition`` line).
    """
    if spec.partition:
        return spec.partition
    res = spec.resources  # type: ignore[union-attr]
    assert isinstance(res, Resources)
    if res.job_size and res.job_size in profile.job_size:
        return profile.job_size[res.job_size]
    if res.gpu and profile.gpu_partition:
        return profile.gpu_partition
    return profile.partition or None


def sbatch_options(spec: JobSpec, profile: Profile) -> list[tuple[str, str | None]]:
    """The sbatch options for ``spec`` as ``(option, raw value)`` pairs, in script order.

    Values are not quoted here; ``job_script`` quotes them for the script and
    ``submit.sbatch_argv`` can pass them as argv elements.
    """
    res = spec.resources
    assert isinstance(res, Resources)
    opts: list[tuple[str, str | None]] = [("--job-name", spec.name)]
    if spec.comment:
        _one_line("job comment", spec.comment)
        opts.append(("--comment", spec.comment))
    partition = resolve_partition(spec, profile)
    if partition:
        opts.append(("--partition", partition))
    for key in ("account", "qos", "constraint"):
        if getattr(profile, key):
            opts.append((f"--{key}", getattr(profile, key)))
    if spec.output:
        opts.append(("--output", spec.output))
    if spec.error:
        opts.append(("--error", spec.error))
    if spec.workdir:
        opts.append(("--chdir", spec.workdir))
    opts.append(("--nodes", str(spec.nodes)))
    opts.append(("--ntasks", str(spec.nodes)) if spec.nodes == 1 else ("--ntasks-per-node", "1"))
    opts.append(("--cpus-per-task", str(res.cpu)))
    if res.ram is not None:
        opts.append(("--mem", mem_option(res.ram)))
    if res.gpu:
        opts.append(("--gres", f"gpu:{res.gpu}") if profile.gpu_flag == "gres" else ("--gpus", str(res.gpu)))
    if res.time_out_secs is not None:
        opts.append(("--time", format_time(time_minutes(res.time_out_secs))))
    if spec.signal:
        opts.append(("--signal", spec.signal))
    if res.priority is not None:
        opts.append(("--nice", str(nice_for(res.priority, profile.nice_step))))
    if res.io_charge and profile.io_license:
        opts.append(("--licenses", f"{profile.io_license}:{res.io_charge}"))
    if spec.array is not None:
        arr = compress_indices(spec.array)
        if spec.array_throttle:
            arr += f"%{spec.array_throttle}"
        opts.append(("--array", arr))
    deps = []
    if spec.dependencies:
        deps.append("afterok:" + ":".join(spec.dependencies))
    if spec.aftercorr:
        deps.append("aftercorr:" + ":".join(spec.aftercorr))
    if spec.after_any:
        deps.append("afterany:" + ":".join(spec.after_any))
    if deps:
        opts.append(("--dependency", ",".join(deps)))
        if spec.kill_on_invalid_dep:
            opts.append(("--kill-on-invalid-dep", "yes"))
    for extra in profile.extra_directives:
        key, sep, value = extra.partition("=")
        opts.append((key, value if sep else None))
    return opts


def _directive(opt: str, value: str | None) -> str:
    return f"#SBATCH {opt}" if value is None else f"#SBATCH {opt}={shlex.quote(value)}"


def _wrapper_word(word: str) -> str:
    """One wrapper argument for the script: quoted, ``{binds}`` read from ``$HPCPIPE_BINDS``."""
    return '"$HPCPIPE_BINDS"'.join(shlex.quote(part) if part else "" for part in word.split(BINDS)) or "''"


def job_script(spec: JobSpec, profile: Profile | str | None = None) -> str:
    """Render ``spec`` with ``profile`` (a Profile, a profile name, or None for the configured one).

    Returns the full script text; nothing is written or submitted.
    """
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    directives = "\n".join(_directive(o, v) for o, v in sbatch_options(spec, profile))
    env_lines = [
        f"export HPCPIPE_SLURM_PROFILE={shlex.quote(profile.name)}",
        f"export HPCPIPE_LOCATION={shlex.quote(profile.location)}",
        # verbatim: the profile may use $USER, $SLURM_JOB_ID ... (administrator's shell text)
        f"export HPCPIPE_SCRATCH={profile.scratch}" if profile.scratch else "",
    ]
    env_lines += [f"export {k}={shlex.quote(v)}" for k, v in spec.env.items()]
    if spec.binds:  # the scratch folder is the administrator's shell text: expanded here, at run time
        env_lines.append(f"export HPCPIPE_BINDS={shlex.quote(','.join(spec.binds))}"
                         '"${HPCPIPE_SCRATCH:+,$HPCPIPE_SCRATCH}"')
    environment = profile.environment(spec.task_env)
    wrapper = environment.wrapper if spec.wrapped else ()
    values = {
        "directives": directives,
        "profile": profile.name,
        "environment": "\n".join(line for line in env_lines if line),
        "setup": "\n".join(environment.setup) if environment.setup else "# (none)",
        "command": " ".join([_wrapper_word(w) for w in wrapper] + [shlex.join(spec.command)]),
        "job_name": shlex.quote(spec.name),
    }
    template = string.Template(profile.template_text())
    try:
        return template.substitute(values)
    except (KeyError, ValueError) as exc:
        raise BadInput(f"template {profile.template!r} of profile {profile.name}: bad placeholder {exc}; "
                       f"available: {', '.join('$' + k for k in values)}") from None
