"""Site profiles: what differs between clusters, kept out of the code as small TOML files.

A profile names the partition, account, QOS, constraint, how GPUs are asked for, the shell
lines that prepare the job's environment, the scratch folder, the data-handler location the
job side should use, an optional IO license, and a ``job_size`` -> partition map. Built-in
profiles ship in ``hpcpipe.slurm_templates/profiles``; users add folders with
``[slurm] profile_dirs = ["~/my-profiles"]`` and pick one with ``[slurm] profile = "name"``
(default ``generic``). A user folder wins over the built-in one for the same name.

Unknown keys fail with the list of valid ones: a typo such as ``acount`` silently dropping
the account would only show up as a rejected or mis-billed job, much later.

Environments: ``setup`` (shell lines: ``module load``, ``conda activate``, a venv) and
``wrapper`` (an argv the job side runs under, e.g. ``["apptainer", "exec", "--nv", "--bind",
"{binds}", "/images/ibl.sif"]``; ``{binds}`` becomes the session roots, the run folder and the
scratch folder, comma-separated) apply to every job of the profile; ``[task_env.<TaskName>]``
tables give one task class its own wrapper (the spike sorter in its own image) and setup
lines run after the profile's. Options hpcpipe
sets itself (job name, resources, output, array, dependencies...) are refused in
``extra_directives``: a second ``--mem`` would silently win over the task's own.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import BadInput
from ..settings import Settings, current

#: where the job side reads its data from (the data handlers of DOMAIN.md)
LOCATIONS = ("server", "SDSC", "AWS", "remote")
GPU_FLAGS = ("gres", "gpus")
DEFAULT_TEMPLATE = "job.sh.tmpl"
#: profile keys that ``[slurm] <key>`` in the config (or $HPCPIPE_SLURM_<KEY>) overrides,
#: so a lab keeps the site's profile and only sets its own allocation
CONFIG_OVERRIDES = ("partition", "account", "qos", "constraint")
#: sbatch options hpcpipe writes itself, long and short forms (refused in extra_directives)
RESERVED_OPTIONS = frozenset({
    "--job-name", "-J", "--output", "-o", "--error", "-e", "--array", "-a", "--dependency", "-d",
    "--kill-on-invalid-dep", "--nodes", "-N", "--ntasks", "-n", "--ntasks-per-node", "--cpus-per-task", "-c",
    "--mem", "--mem-per-cpu", "--mem-per-gpu", "--gres", "--gpus", "-G", "--time", "-t", "--signal",
    "--nice", "--licenses", "-L", "--partition", "-p", "--account", "-A", "--qos", "-q", "--constraint", "-C",
    "--chdir", "-D", "--wrap", "--parsable", "--export",
})
#: the wrapper placeholder for the folders a container must see
BINDS = "{binds}"


@dataclass(frozen=True)
class Environment:
    """What a job runs in: shell setup lines, then the job side under ``wrapper`` (argv prefix)."""

    setup: tuple[str, ...] = ()
    wrapper: tuple[str, ...] = ()

    def wrapped(self, command: list[str], binds: str) -> list[str]:
        """``command`` run under the wrapper, ``{binds}`` filled in (an argv: nothing expanded)."""
        return [w.replace(BINDS, binds) for w in self.wrapper] + list(command)


def _lines(owner: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BadInput(f"{owner}: {key} must be a list of strings")
    for line in value:
        if any(c in line for c in "\n\r\0"):
            raise BadInput(f"{owner}: a {key} entry holds a line break or NUL; give one line per entry")
    return tuple(value)


@dataclass(frozen=True)
class Profile:
    """One site's settings for job scripts (see module docstring and docs/SLURM.md)."""

    name: str = "generic"
    description: str = ""
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    gpu_flag: str = "gres"
    gpu_partition: str = ""
    setup: tuple[str, ...] = ()
    scratch: str = "${TMPDIR:-/tmp}"
    location: str = "server"
    io_license: str = ""
    nice_step: int = 10
    extra_directives: tuple[str, ...] = ()
    job_size: dict[str, str] = field(default_factory=dict)
    #: argv prefix the job side runs under (e.g. ``apptainer exec --nv --bind {binds} IMAGE``)
    wrapper: tuple[str, ...] = ()
    #: per task class: ``{TaskName: {"setup": [...], "wrapper": [...]}}`` (either key optional)
    task_env: dict[str, dict] = field(default_factory=dict)
    template: str = DEFAULT_TEMPLATE
    #: folder the profile was read from (templates are looked up there first)
    source: str = ""

    def __post_init__(self) -> None:
        if self.gpu_flag not in GPU_FLAGS:
            raise BadInput(f"profile {self.name}: gpu_flag {self.gpu_flag!r} is not one of {', '.join(GPU_FLAGS)}")
        if self.location not in LOCATIONS:
            raise BadInput(f"profile {self.name}: location {self.location!r} is not one of {', '.join(LOCATIONS)}")
        if not isinstance(self.nice_step, int) or self.nice_step < 0:
            raise BadInput(f"profile {self.name}: nice_step must be a non-negative integer")
        for key in ("setup", "extra_directives", "wrapper"):
            object.__setattr__(self, key, _lines(f"profile {self.name}", key, getattr(self, key)))
        for opt in self.extra_directives:
            if not opt.startswith("--"):
                raise BadInput(f"profile {self.name}: extra directive {opt!r} must be one '--option[=value]'")
            if opt.partition("=")[0] in RESERVED_OPTIONS:
                raise BadInput(f"profile {self.name}: extra directive {opt!r} sets an option hpcpipe writes "
                               "itself (from the task's resources, the run or the profile's own keys)")
        if not isinstance(self.task_env, dict):
            raise BadInput(f"profile {self.name}: [task_env] must map task class names to tables")
        for task, table in self.task_env.items():
            if not isinstance(table, dict) or set(table) - {"setup", "wrapper"}:
                raise BadInput(f"profile {self.name}: [task_env.{task}] may hold only setup and wrapper")
            for key, value in table.items():
                _lines(f"profile {self.name} [task_env.{task}]", key, value)
        if not isinstance(self.job_size, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.job_size.items()
        ):
            raise BadInput(f"profile {self.name}: [job_size] must map size names to partition names")
        for key in ("partition", "account", "qos", "constraint", "gpu_partition", "io_license", "scratch"):
            value = getattr(self, key)
            if not isinstance(value, str) or any(c in value for c in "\n\r\0"):
                raise BadInput(f"profile {self.name}: {key} must be a one-line string")

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "generic", source: str = "") -> "Profile":
        """Build a profile from parsed TOML; unknown keys fail listing the valid ones."""
        valid = [f.name for f in fields(cls) if f.name not in ("name", "source")]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise BadInput(
                f"profile {name}: unknown key(s) {', '.join(unknown)}; valid keys are: {', '.join(valid)}"
            )
        return cls(name=name, source=source, **data)

    def environment(self, task_name: str | None = None) -> Environment:
        """The setup lines and wrapper of a task class: the profile's setup then the class's own
        (``[task_env]``), and the class's wrapper instead of the profile's.

        Setup lines add up rather than replace, so that a job and a job step inside a pack (which
        inherits the allocation's environment) see the same thing; a class that must undo the
        profile's modules says ``module purge`` first.
        """
        own = self.task_env.get(task_name or "", {})
        return Environment(setup=self.setup + tuple(own.get("setup", ())),
                           wrapper=tuple(own.get("wrapper", self.wrapper)))

    def template_text(self) -> str:
        """The job-script template: the profile's own folder first, then the built-in one."""
        candidates = []
        if self.source:
            candidates += [Path(self.source) / self.template, Path(self.source).parent / self.template]
        candidates.append(builtin_dir() / self.template)
        for path in candidates:
            if path.is_file():
                return path.read_text()
        raise BadInput(f"profile {self.name}: template {self.template!r} not found in "
                       + ", ".join(str(p.parent) for p in candidates))


def builtin_dir() -> Path:
    """The built-in ``slurm_templates`` folder, installed or in a source checkout.

    Installed, it is the package ``hpcpipe.slurm_templates``; in a checkout that is not
    installed, the folder sits at the repository root next to ``hpcpipe/``.
    """
    try:
        from importlib.resources import files

        path = Path(str(files("hpcpipe.slurm_templates")))
        if (path / DEFAULT_TEMPLATE).is_file():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    path = Path(__file__).resolve().parents[2] / "slurm_templates"
    if (path / DEFAULT_TEMPLATE).is_file():
        return path
    raise BadInput("hpcpipe's slurm_templates folder is missing (broken installation?)")


def profile_dirs(settings: Settings) -> list[Path]:
    """Folders searched for ``<name>.toml``: the user's (config order), then the built-in one."""
    return [Path(p).expanduser() for p in settings.slurm.profile_dirs] + [builtin_dir() / "profiles"]


def list_profiles(settings: Settings | None = None) -> dict[str, Path]:
    """Every profile name that can be selected, with the file that defines it (``settings``:
    default ``settings.current()``)."""
    found: dict[str, Path] = {}
    for folder in profile_dirs(settings or current()):
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def load_profile(name: str | None = None, overrides: dict[str, Any] | None = None,
                 settings: Settings | None = None) -> Profile:
    """Read a profile by name (default ``[slurm] profile`` or ``generic``).

    ``[slurm] partition/account/qos/constraint`` in the config override the profile's values
    when set to a non-empty string; ``overrides`` (e.g. from the command line) win over both.
    ``settings``: default ``settings.current()``.
    """
    settings = settings or current()
    name = name or settings.slurm.profile
    available = list_profiles(settings)
    if name not in available:
        raise BadInput(f"unknown SLURM profile {name!r}; available: {', '.join(sorted(available)) or 'none'}")
    path = available[name]
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"profile {path} is not valid TOML: {exc}") from None
    for key in CONFIG_OVERRIDES:
        value = getattr(settings.slurm, key)
        if value:
            data[key] = value
    data.update(overrides or {})
    return Profile.from_dict(data, name=name, source=str(path.parent))


def template_fields(text: str) -> set[str]:
    """Placeholder names a template uses (to check a user's template before rendering)."""
    names = set()
    for match in string.Template.pattern.finditer(text):
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return names
