"""Site profiles: what differs between clusters, kept out of the code as small TOML files.

A profile names the partition, account, QOS, constraint, how GPUs are asked for, the shell
lines that prepare the job's environment, the scratch folder, the data-handler location the
job side should use, an optional IO license, and a ``job_size`` -> partition map. Built-in
profiles ship in ``hpcpipe.slurm_templates/profiles``; users add folders with
``[slurm] profile_dirs = ["~/my-profiles"]`` and pick one with ``[slurm] profile = "name"``
(default ``generic``). A user folder wins over the built-in one for the same name.

Unknown keys fail with the list of valid ones: a typo such as ``acount`` silently dropping
the account would only show up as a rejected or mis-billed job, much later.
"""
from __future__ import annotations

import os
import string
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .. import config
from ..errors import BadInput

#: where the job side reads its data from (the data handlers of DOMAIN.md)
LOCATIONS = ("server", "SDSC", "AWS", "remote")
GPU_FLAGS = ("gres", "gpus")
DEFAULT_TEMPLATE = "job.sh.tmpl"
#: profile keys that ``[slurm] <key>`` in the config (or $HPCPIPE_SLURM_<KEY>) overrides,
#: so a lab keeps the site's profile and only sets its own allocation
CONFIG_OVERRIDES = ("partition", "account", "qos", "constraint")


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
        for key in ("setup", "extra_directives"):
            value = getattr(self, key)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise BadInput(f"profile {self.name}: {key} must be a list of strings")
            object.__setattr__(self, key, tuple(value))
        for line in self.setup:
            if "\n" in line or "\r" in line:
                raise BadInput(f"profile {self.name}: a setup line holds a newline; give one line per entry")
        for opt in self.extra_directives:
            if not opt.startswith("--") or any(c in opt for c in "\n\r\0"):
                raise BadInput(f"profile {self.name}: extra directive {opt!r} must be one '--option[=value]'")
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


def profile_dirs() -> list[Path]:
    """Folders searched for ``<name>.toml``: the user's (config order), then the built-in one."""
    raw = config.get("slurm", "profile_dirs", [])
    if isinstance(raw, str):  # from $HPCPIPE_SLURM_PROFILE_DIRS: os.pathsep-separated
        raw = [p for p in raw.split(os.pathsep) if p]
    if not isinstance(raw, list):
        raise BadInput("[slurm] profile_dirs must be a list of folders")
    return [Path(p).expanduser() for p in raw] + [builtin_dir() / "profiles"]


def list_profiles() -> dict[str, Path]:
    """Every profile name that can be selected, with the file that defines it."""
    found: dict[str, Path] = {}
    for folder in profile_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def load_profile(name: str | None = None, overrides: dict[str, Any] | None = None) -> Profile:
    """Read a profile by name (default ``[slurm] profile`` or ``generic``).

    ``[slurm] partition/account/qos/constraint`` in the config override the profile's values
    when set to a non-empty string; ``overrides`` (e.g. from the command line) win over both.
    """
    name = name or config.get("slurm", "profile", "generic")
    available = list_profiles()
    if name not in available:
        raise BadInput(f"unknown SLURM profile {name!r}; available: {', '.join(sorted(available)) or 'none'}")
    path = available[name]
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"profile {path} is not valid TOML: {exc}") from None
    for key in CONFIG_OVERRIDES:
        value = config.get("slurm", key, "")
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
