"""Settings: the configuration, read once at the edge and handed down.

``Settings.load()`` is the one place that reads hpcpipe's configuration (``config.get``: the
environment ``HPCPIPE_<SECTION>_<KEY>`` first, then the TOML file, then the default written
here), checks every value's type once, and returns frozen sections. ``cli.main`` loads it and
passes it to every constructor; a job never reads the configuration of the machine it runs on:
the submitting side writes what jobs need into ``run.json`` (``for_job``, never a secret) and the
job builds its settings from there (``Settings.from_run``). docs/CONFIG.md lists every setting.

Library entry points that have no caller to hand them settings (``Task.run`` called by ibllib
users, ``open_store()`` without arguments, a ``DataHandler`` built directly) take ``current()``:
the settings made active by the CLI or the job side (``active``), else a fresh ``load()``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import config
from .errors import BadInput
from .jobstate import LOST_AFTER_SECS

_SECTION_TYPES: dict[str, type] = {}


def _doc(text: str, job: bool = True, secret: bool = False) -> dict:
    """Field metadata: the one-line reason of a setting, whether jobs get it, whether secret."""
    return {"doc": text, "job": job, "secret": secret}


def _section(name: str):
    def register(cls: type) -> type:
        cls = dataclass(frozen=True)(cls)
        cls.section = name
        _SECTION_TYPES[name] = cls
        return cls
    return register


@_section("store")
class StoreSettings:
    backend: str = field(default="sqlite", metadata=_doc("which task store: sqlite (embedded) or alyx"))
    path: str | None = field(default=None, metadata=_doc("the embedded store's file (default <home>/tasks.sqlite)"))
    ledger: str | None = field(default=None, metadata=_doc(
        "the jobs table (default <home>/jobs.sqlite); login side only", job=False))
    outbox: str | None = field(default=None, metadata=_doc("where unreachable reports wait (default <home>/outbox)"))
    down_secs: float = field(default=30.0, metadata=_doc(
        "how long a store stays marked down after a failed report, so reports do not each wait"))
    lab: str | None = field(default=None, metadata=_doc("the lab the embedded store's ONE face names for subjects"))
    data_formats: list = field(default_factory=list, metadata=_doc(
        "extra file extensions the embedded store's ONE face accepts"))
    cache_dir: str | None = field(default=None, metadata=_doc("the ONE face's cache_dir (default <home>/one-cache)"))


@_section("submit")
class SubmitSettings:
    backend: str = field(default="local", metadata=_doc("the default --backend", job=False))
    lock_wait_secs: float = field(default=120.0, metadata=_doc(
        "how long a submission waits for another one's lock before giving up", job=False))
    rules: list = field(default_factory=list, metadata=_doc(
        "[[submit.rules]] glob/pipeline: which pipeline a session runs without --pipeline", job=False))
    pipeline: str | None = field(default=None, metadata=_doc("the pipeline when no rule matches", job=False))


@_section("status")
class StatusSettings:
    lock_wait_secs: float = field(default=5.0, metadata=_doc(
        "how long status/sweep/sync wait for a submission's lock before showing the store as it is", job=False))


@_section("slurm")
class SlurmSettings:
    run_root: str | None = field(default=None, metadata=_doc(
        "run folders, on a file system compute nodes see (default <home>/runs)", job=False))
    python: str | None = field(default=None, metadata=_doc(
        "the Python that runs the job side (default: the submitting one)", job=False))
    lost_after_secs: float = field(default=float(LOST_AFTER_SECS), metadata=_doc(
        "how long a job SLURM no longer knows stays UNKNOWN before it is LOST", job=False))
    signal_secs: int = field(default=60, metadata=_doc(
        "seconds before the time limit a job is warned (--signal), to record its ending", job=False))
    profile: str = field(default="generic", metadata=_doc("the site profile", job=False))
    profile_dirs: list = field(default_factory=list, metadata=_doc(
        "folders searched for profiles before the built-in ones ($HPCPIPE_SLURM_PROFILE_DIRS: os.pathsep-separated)",
        job=False))
    partition: str = field(default="", metadata=_doc("overrides the profile's partition", job=False))
    account: str = field(default="", metadata=_doc("overrides the profile's account", job=False))
    qos: str = field(default="", metadata=_doc("overrides the profile's qos", job=False))
    constraint: str = field(default="", metadata=_doc("overrides the profile's constraint", job=False))


@_section("local")
class LocalSettings:
    cpus: float | None = field(default=None, metadata=_doc(
        "the local engine's CPU budget (default: this machine's)"))
    ram: float | None = field(default=None, metadata=_doc("its RAM budget in GB (default: this machine's)"))
    gpus: float | None = field(default=None, metadata=_doc("its GPU budget (default: visible GPUs)"))
    run_root: str | None = field(default=None, metadata=_doc("local run folders (default <home>/runs)", job=False))


@_section("alyx")
class AlyxSettings:
    url: str | None = field(default=None, metadata=_doc("the Alyx server (default: ONE's)"))
    username: str | None = field(default=None, metadata=_doc("the Alyx login (default: ONE's)"))
    password: str | None = field(default=None, metadata=_doc(
        "used to get a token; jobs use the token cache instead", job=False, secret=True))
    token: str | None = field(default=None, metadata=_doc(
        "a token to use; jobs use the token cache instead", job=False, secret=True))
    repository: str | None = field(default=None, metadata=_doc("the data repository files are registered in"))
    timeout: Any = field(default=60.0, metadata=_doc("seconds per request, or [connect, read]"))
    retries: int = field(default=5, metadata=_doc("retries per call"))
    retry_budget: float = field(default=120.0, metadata=_doc("seconds a call may spend waiting to retry"))
    backoff: float = field(default=0.5, metadata=_doc("first wait before a retry (doubled each time)"))
    report_timeout: float = field(default=5.0, metadata=_doc(
        "a report's request timeout: what cannot go now waits in the outbox rather than holding a task"))
    report_retries: int = field(default=1, metadata=_doc("a report's retries"))
    report_budget: float = field(default=2.0, metadata=_doc("a report's seconds of waiting"))
    client: str = field(default="hpcpipe", metadata=_doc("hpcpipe's REST client, or one (ONE's)"))
    create_missing: bool = field(default=False, metadata=_doc(
        "create missing sessions on Alyx at submission", job=False))
    background_recorder: bool = field(default=True, metadata=_doc(
        "a backfill's records are made by a background process after queueing", job=False))
    defer_records: bool = field(default=True, metadata=_doc(
        "an Alyx backfill on SLURM queues first, records after (provisional ids)", job=False))
    record_rate: float = field(default=400.0, metadata=_doc(
        "records a minute the background recorder makes at most, under Alyx's default throttle of 550 (0: unpaced)",
        job=False))


@_section("ssh")
class SshSettings:
    known_hosts: str | None = field(default=None, metadata=_doc(
        "an extra known_hosts file for every remote", job=False))
    #: the same default as ``SSHTransport``'s (not imported: that would load paramiko)
    connect_timeout: float = field(default=10.0, metadata=_doc("seconds to connect to a remote", job=False))


@_section("resources")
class ResourcesSettings:
    file: str | None = field(default=None, metadata=_doc(
        "the suggestions file (default <home>/resources.toml)", job=False))
    apply: bool = field(default=False, metadata=_doc("apply suggestions to submissions", job=False))
    percentile: float = field(default=95.0, metadata=_doc("which percentile of measured use is sized for", job=False))
    ram_margin: float = field(default=0.2, metadata=_doc("RAM headroom over that percentile", job=False))
    time_margin: float = field(default=0.5, metadata=_doc("time headroom over that percentile", job=False))
    cpu_margin: float = field(default=0.1, metadata=_doc("CPU headroom over that percentile", job=False))
    min_runs: float = field(default=1.0, metadata=_doc("runs needed before a suggestion", job=False))
    ram_step_mb: float = field(default=256.0, metadata=_doc("RAM suggestions are rounded up to this", job=False))


@_section("escalate")
class EscalateSettings:
    ram_factor: float = field(default=2.0, metadata=_doc("rerun --escalate multiplies RAM by this", job=False))
    time_factor: float = field(default=2.0, metadata=_doc("and the time limit by this", job=False))
    max_attempts: int = field(default=3, metadata=_doc("escalations per task before giving up", job=False))


@_section("gpu")
class GpuSettings:
    lock_dir: str | None = field(default=None, metadata=_doc(
        "where the GPU lock lives (default: the temp folder of the machine that runs the task)"))


@_section("remote")
class RemoteSettings:
    cache_dir: str | None = field(default=None, metadata=_doc("the download cache (default <home>/cache)"))
    http_user: str | None = field(default=None, metadata=_doc("the data server's basic-auth user"))
    http_password: str | None = field(default=None, metadata=_doc(
        "the data server's basic-auth password (jobs: ONE's HTTP_DATA_SERVER_PWD)", job=False, secret=True))
    data_server: str | None = field(default=None, metadata=_doc("the data server's URL (default: ONE's)"))
    data_repository: str | None = field(default=None, metadata=_doc("the repository whose file records are preferred"))
    use_cache: bool = field(default=True, metadata=_doc("reuse downloads by md5"))
    retries: int = field(default=3, metadata=_doc("retries per download"))
    backoff: float = field(default=1.0, metadata=_doc("first wait before a retry"))
    timeout: float = field(default=60.0, metadata=_doc("seconds per request"))


@_section("sdsc")
class SdscSettings:
    scratch_dir: str | None = field(default=None, metadata=_doc("where sessions are linked (default <home>/sdsc_scratch)"))
    output_dir: str | None = field(default=None, metadata=_doc("where outputs are copied (default: not copied)"))


@_section("aws")
class AwsSettings:
    bucket: str | None = field(default=None, metadata=_doc("the S3 bucket of inputs"))
    output_bucket: str | None = field(default=None, metadata=_doc("the S3 bucket of outputs (default: bucket)"))
    prefix: str = field(default="", metadata=_doc("the key prefix of sessions"))
    output_prefix: str | None = field(default=None, metadata=_doc("the key prefix of outputs (default: prefix)"))
    region: str | None = field(default=None, metadata=_doc("the S3 region (default: boto3's)"))
    endpoint_url: str | None = field(default=None, metadata=_doc("an S3-compatible endpoint (default: AWS)"))
    cache_dir: str | None = field(default=None, metadata=_doc("the download cache (default <home>/cache)"))


_ANNOTATION_KIND = {"str": str, "str | None": str, "float": float, "float | None": float, "int": int,
                    "bool": bool, "list": list}


def _check(section: str, key: str, value: Any, annotation: str, source: str) -> Any:
    """``value`` as its field's type, or ``BadInput`` naming the setting (one line)."""
    if annotation == "Any":  # [alyx] timeout: seconds, or [connect, read]
        if isinstance(value, (list, tuple)) and len(value) == 2:
            value = [_check(section, key, v, "float", source) for v in value]
            return tuple(value)
        return _check(section, key, value, "float", source)
    if value is None and annotation.endswith("| None"):
        return None
    kind = _ANNOTATION_KIND[annotation]
    where = f"[{section}] {key} = {value!r} ({source})"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
            return value.lower() in ("1", "true", "yes", "on")
        raise BadInput(f"setting {where} is not a boolean")
    if kind in (int, float):
        if isinstance(value, bool):
            raise BadInput(f"setting {where} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or (kind is int and not number.is_integer()):
            raise BadInput(f"setting {where} is not {'an integer' if kind is int else 'a number'}")
        return int(number) if kind is int else number
    if kind is list:
        if isinstance(value, str):  # from the environment: os.pathsep-separated
            return [part for part in value.split(os.pathsep) if part]
        if not isinstance(value, list):
            raise BadInput(f"setting {where} is not a list")
        return list(value)
    if not isinstance(value, str):
        raise BadInput(f"setting {where} is not a string")
    return value


def _build(cls: type, values: dict[str, Any], source) -> Any:
    """A section from ``values`` (missing keys: defaults), every value checked."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _check(cls.section, f.name, values[f.name], f.type, source(f.name))
    return cls(**kwargs)


def _env_name(section: str, key: str) -> str:
    return f"HPCPIPE_{section}_{key}".upper()


@dataclass(frozen=True)
class Settings:
    """Every setting hpcpipe uses, by config section; ``home`` is where hpcpipe writes.

    ``home`` None (a job of a remote submission) means this machine's default home.
    """

    home: Path | None = None
    store: StoreSettings = field(default_factory=StoreSettings)
    submit: SubmitSettings = field(default_factory=SubmitSettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    alyx: AlyxSettings = field(default_factory=AlyxSettings)
    ssh: SshSettings = field(default_factory=SshSettings)
    resources: ResourcesSettings = field(default_factory=ResourcesSettings)
    escalate: EscalateSettings = field(default_factory=EscalateSettings)
    gpu: GpuSettings = field(default_factory=GpuSettings)
    remote: RemoteSettings = field(default_factory=RemoteSettings)
    sdsc: SdscSettings = field(default_factory=SdscSettings)
    aws: AwsSettings = field(default_factory=AwsSettings)
    #: ``[clusters.<name>]`` tables, checked by ``ssh.target`` (which knows their keys)
    clusters: dict = field(default_factory=dict)

    @classmethod
    def load(cls) -> "Settings":
        """Read the configuration (environment over file over defaults) once, every value checked."""
        sections = {}
        for name, section_cls in _SECTION_TYPES.items():
            values = {}
            for f in dataclasses.fields(section_cls):
                value = config.get(name, f.name, None)
                if value is not None:
                    values[f.name] = value

            def source(key: str, name: str = name) -> str:
                env = _env_name(name, key)
                return f"${env}" if env in os.environ else str(config.config_path())

            sections[name] = _build(section_cls, values, source)
        clusters = config.load().get("clusters", {})
        if not isinstance(clusters, dict):
            raise BadInput(f"[clusters] in {config.config_path()} must be a table of tables")
        return cls(home=config.home(), clusters=clusters, **sections)

    # ------------------------------------------------------------------ jobs
    def for_job(self, same_machine: bool = True) -> dict:
        """What ``run.json`` carries for jobs: every setting marked for jobs, never a secret.

        ``same_machine`` False (a ``--remote`` submission): the submitting side's home is no
        folder of the cluster, so jobs use their machine's default home."""
        out: dict[str, Any] = {"home": str(self.home) if same_machine and self.home else None}
        for name in _SECTION_TYPES:
            section = getattr(self, name)
            values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
                      if f.metadata["job"] and not f.metadata["secret"]}
            if values:
                out[name] = values
        return out

    @classmethod
    def from_run(cls, run: dict) -> "Settings":
        """A job's settings: the ``settings`` section the submitting side wrote into ``run.json``,
        defaults for anything it did not write. Nothing of this machine's configuration.

        A ``run.json`` without one was written by an hpcpipe from before settings reached jobs;
        its jobs read the configuration of the node they run on, and still do (said once in the
        job's log), so an upgrade does not fail the jobs it finds queued."""
        data = run.get("settings")
        if data is None:
            logging.getLogger("hpcpipe").warning(
                "run %s: run.json carries no settings (written by an hpcpipe before 0.2); this job reads "
                "this node's configuration, as jobs of that version did", run.get("run_id"))
            return cls.load()
        if not isinstance(data, dict):
            raise BadInput(f"run {run.get('run_id')!r}: run.json's settings are not a table: {data!r}")
        sections = {name: _build(section_cls, data.get(name) or {}, lambda key: "run.json")
                    for name, section_cls in _SECTION_TYPES.items()}
        home = Path(data["home"]) if data.get("home") else None
        return cls(home=home, **sections)

    # ------------------------------------------------------------------ derived paths
    def home_dir(self) -> Path:
        """``home``, created on first use (a remote job's: this machine's default home)."""
        if self.home is not None:
            self.home.mkdir(parents=True, exist_ok=True)
            return self.home
        from platformdirs import user_data_dir

        path = Path(user_data_dir("hpcpipe", appauthor=False))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, value: str | None, under_home: str) -> Path:
        """A path setting: ``value`` (``~`` expanded), else ``<home>/<under_home>``."""
        return Path(value).expanduser() if value else self.home_dir() / under_home

    @property
    def gpu_lock_dir(self) -> Path:
        return Path(self.gpu.lock_dir).expanduser() if self.gpu.lock_dir else Path(tempfile.gettempdir())

    @property
    def job_python(self) -> str:
        return self.slurm.python or sys.executable


_active: list[Settings] = []


@contextlib.contextmanager
def active(settings: Settings) -> Iterator[Settings]:
    """Make ``settings`` what ``current()`` answers while the block runs (the CLI, a job)."""
    _active.append(settings)
    try:
        yield settings
    finally:
        _active.pop()


def current() -> Settings:
    """The active settings (``active``), else freshly loaded: for library entry points that
    have no caller to pass settings (ibllib's ``Task.run``, a handler built directly)."""
    return _active[-1] if _active else Settings.load()
